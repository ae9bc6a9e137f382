import numpy as np
import pytest
import torch

from robolearn.data.align import align_to_reference
from robolearn.data.dataset import WindowDataset, make_loader
from robolearn.data.schema import SchemaError


def test_windows_match_a_manual_gather(synth_store):
    path, eps = synth_store
    ds = WindowDataset(path, ["state", "cam_image", "cam_depth"], "action", n_obs_steps=2, horizon=6,
                       n_action_steps=3, split="all")
    ends = np.cumsum([len(e["action"]) for e in eps])
    for i in [0, 1, len(ds) // 2, len(ds) - 1]:
        item = ds[i]
        rows = ds.sampler.rows(i)
        e = int(np.searchsorted(ends, rows[0], side="right"))
        local = rows - (ends[e - 1] if e else 0)
        ep = eps[e]
        np.testing.assert_array_equal(item["action"].numpy(), ep["action"][local])
        np.testing.assert_array_equal(item["obs"]["state"].numpy(), ep["state"][local[:2]])
        cam = align_to_reference(ep["t_ctrl"], ep["t_cam"])[local[:2]]
        img = torch.from_numpy(ep["image"][cam]).permute(0, 3, 1, 2)
        assert item["obs"]["cam_image"].dtype == torch.uint8
        assert torch.equal(item["obs"]["cam_image"], img)
        depth = torch.from_numpy(ep["depth"][cam].astype(np.float32))[:, None] * 0.001
        torch.testing.assert_close(item["obs"]["cam_depth"], depth)
        assert int(item["episode"]) == e


def test_in_memory_and_on_disk_agree_and_split_is_by_episode(synth_store):
    path, _ = synth_store
    kw = dict(obs_keys=["state", "cam_image"], n_obs_steps=2, horizon=4, n_action_steps=2, val_ratio=0.4, seed=1)
    disk = WindowDataset(path, split="train", **kw)
    mem = WindowDataset(path, split="train", in_memory=True, **kw)
    val = WindowDataset(path, split="val", **kw)
    idx = list(range(len(disk)))
    a, b = disk.__getitems__(idx), mem.__getitems__(idx)
    for k in a["obs"]:
        assert torch.equal(a["obs"][k], b["obs"][k])
    assert set(a["episode"].tolist()).isdisjoint(val.__getitems__(list(range(len(val))))["episode"].tolist())


def test_loader_with_workers(synth_store):
    path, _ = synth_store
    ds = WindowDataset(path, ["state", "cam_image"], n_obs_steps=2, horizon=4, n_action_steps=2, split="all")
    batches = list(make_loader(ds, batch_size=8, num_workers=2, seed=0))
    assert len(batches) == len(ds) // 8
    assert batches[0]["obs"]["cam_image"].shape == (8, 2, 3, 16, 16)
    again = list(make_loader(ds, batch_size=8, num_workers=0, seed=0))
    assert torch.equal(batches[0]["action"], again[0]["action"])  # seeded order


def test_bad_keys(synth_store):
    path, _ = synth_store
    with pytest.raises(SchemaError, match="no key 'nope'"):
        WindowDataset(path, ["nope"])
    with pytest.raises(SchemaError, match="control stream"):
        WindowDataset(path, ["state"], action_key="cam_depth")
    with pytest.raises(ValueError, match="n_action_steps"):
        WindowDataset(path, ["state"], horizon=4, n_action_steps=8)


def test_decoded_frame_cache_serves_repeat_reads(synth_store):
    path, _ = synth_store
    kw = dict(obs_keys=["cam_image", "cam_depth"], n_obs_steps=2, horizon=4, n_action_steps=2, split="all")
    cached = WindowDataset(path, frame_cache_mb=64, **kw)
    plain = WindowDataset(path, frame_cache_mb=0, **kw)
    idx = list(range(len(cached)))
    first = cached.__getitems__(idx)
    shards = [f for key in ("cam_image", "cam_depth") for f in (path / "cam" / key / "c").rglob("*") if f.is_file()]
    assert len(shards) >= 2
    for shard in shards:  # every frame is cached now: the files are not needed
        shard.unlink()
    again = cached.__getitems__(idx[::-1])
    for k in first["obs"]:
        assert torch.equal(again["obs"][k], first["obs"][k].flip(0))
    with pytest.raises(Exception, match="missing"):
        plain.__getitems__(idx)
