import numpy as np
import pytest
import torch

from robolearn.data.normalizer import KeyStats, Normalizer, store_stats
from robolearn.data.store import DemoStore


@pytest.mark.parametrize("mode", ["minmax", "gaussian", "quantile", "identity"])
def test_round_trip_numpy_and_torch(mode):
    rng = np.random.default_rng(0)
    x = rng.normal(3, 5, (500, 4)).astype(np.float32)
    x[:, 2] = 1.5  # constant dimension
    n = Normalizer({"a": KeyStats.compute(x)}, mode)
    y = n.normalize("a", x)
    assert np.all(np.isfinite(y)) and np.all(y[:, 2] == 0 if mode != "identity" else True)
    np.testing.assert_allclose(n.unnormalize("a", y), x, rtol=1e-5, atol=1e-4)
    yt = n.normalize("a", torch.from_numpy(x))
    np.testing.assert_allclose(yt.numpy(), y, rtol=1e-6, atol=1e-6)
    if mode == "minmax":
        assert y.min() >= -1 - 1e-6 and y.max() <= 1 + 1e-6
    if mode == "gaussian":
        np.testing.assert_allclose(y[:, [0, 1, 3]].mean(0), 0, atol=1e-4)
    back = Normalizer.from_json(n.to_json())
    np.testing.assert_array_equal(back.normalize("a", x), y)


def test_unknown_mode_and_key():
    st = KeyStats.compute(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="unknown normalisation mode"):
        Normalizer({"a": st}, "bogus")
    with pytest.raises(KeyError, match="no normalisation statistics"):
        Normalizer({"a": st}).normalize("b", np.zeros(2))


def test_stats_are_computed_once_and_saved_in_the_store(synth_store, monkeypatch):
    path, eps = synth_store
    store = DemoStore.open(path)
    stats = store_stats(store, ["action", "state"])
    allact = np.concatenate([e["action"] for e in eps])
    np.testing.assert_allclose(stats["action"].mean, allact.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats["action"].q99, np.quantile(allact, 0.99, axis=0), rtol=1e-5)
    assert (path / "stats" / "zarr.json").exists()

    def boom(*a, **k):
        raise AssertionError("recomputed")

    monkeypatch.setattr(KeyStats, "compute", boom)
    again = store_stats(DemoStore.open(path), ["action"])
    np.testing.assert_array_equal(again["action"].max, stats["action"].max)
    with pytest.raises(ValueError, match="image key"):
        monkeypatch.undo()
        store_stats(store, ["cam_image"])
