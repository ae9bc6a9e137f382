"""Paths the main tests did not pin down: `train --resume` continues (not restarts), bf16 autocast
through `train()`, the JPEG codec through the store and plain Zarr, and a depth-only camera from the
store to a trained policy. All on tiny synthetic stores written with the real writer."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from robolearn.data.align import align_to_reference
from robolearn.data.dataset import WindowDataset
from robolearn.data.frames import FrameReader
from robolearn.data.schema import EpisodeInfo, KeySpec
from robolearn.data.store import DemoStore
from robolearn.policies import make_policy
from robolearn.policies.checkpoint import load_policy
from robolearn.policies.factory import shape_meta_from_dataset
from robolearn.policies.train import load_recipe, train

RECIPE = """
name: tiny
policy:
  type: flow
  unet: {down_dims: [16, 32], n_groups: 8}
  encoder: {lowdim_hidden_dims: [16], lowdim_feature_dim: 16, resnet_width: 8, crop_ratio: 0.9}
data: {obs_keys: [state], n_obs_steps: 2, horizon: 8, n_action_steps: 4, val_ratio: 0.0}
train: {steps: 4, batch_size: 8, lr: 1.0e-3, warmup_steps: 2, num_workers: 0, val_every: 1000, ckpt_every: 2,
        log_every: 1, seed: 0, mixed_precision: "no"}
"""


pytestmark = pytest.mark.usefixtures("one_thread")


def _write_store(path: Path, lengths: list[int], camera: dict | None = None, seed: int = 0) -> list[dict]:
    """Control (state 3-d, action 4-d) at 20 Hz and, optionally, one camera stream with ``camera`` keys
    (name -> (KeySpec, frame maker)) at 30 Hz."""
    rng = np.random.default_rng(seed)
    eps = []
    with DemoStore.open(path, mode="a") as store:
        store.declare_stream("control", {"action": KeySpec((4,), "float32"), "state": KeySpec((3,), "float32")})
        if camera:
            store.declare_stream("cam", {k: spec for k, (spec, _) in camera.items()})
        for i, n in enumerate(lengths):
            t = np.arange(n) / 20.0
            ep = {"t": t, "action": rng.normal(size=(n, 4)).astype(np.float32),
                  "state": rng.normal(size=(n, 3)).astype(np.float32)}
            with store.begin_episode() as w:
                w.extend("control", t, t, action=ep["action"], state=ep["state"])
                if camera:
                    ep["t_cam"] = np.arange(int(n * 1.5)) / 30.0
                    frames = {k: make(rng, len(ep["t_cam"])) for k, (_, make) in camera.items()}
                    w.extend("cam", ep["t_cam"], ep["t_cam"], **frames)
                    ep.update(frames)
                w.commit(EpisodeInfo(task="synthetic", success=True, fps=20.0, seed=i))
            eps.append(ep)
    return eps


@pytest.fixture(scope="module")
def lowdim_store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "lowdim.zarr"
    _write_store(path, [30, 25, 40])
    return path


def _recipe(tmp_path: Path, overrides: list[str]):
    p = tmp_path / "tiny.yaml"
    p.write_text(RECIPE)
    return load_recipe(p, overrides)


# ----------------------------------------------------------------------------- resume


def test_resume_continues_from_the_saved_step(lowdim_store, tmp_path):
    run = tmp_path / "run"
    first = train(_recipe(tmp_path, []), lowdim_store, run, progress=False)
    assert first["steps"] == 4
    state = torch.load(run / "trainer_state.pt", weights_only=False)
    assert state["step"] == 4 and state["scheduler"]["last_epoch"] == 4
    assert {int(s["step"]) for s in state["optimizer"]["state"].values()} == {4}
    weights_at_stop = {k: v.clone() for k, v in state["model"].items()}

    resumed = train(_recipe(tmp_path, ["train.steps=6"]), lowdim_store, run, resume=True, progress=False)
    assert resumed["steps"] == 6
    state = torch.load(run / "trainer_state.pt", weights_only=False)
    # AdamW's per-parameter step counter and the LR schedule went on from 4; a restart would say 2.
    assert state["step"] == 6 and state["scheduler"]["last_epoch"] == 6
    assert {int(s["step"]) for s in state["optimizer"]["state"].values()} == {6}
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "lr" in r]
    assert [r["step"] for r in logged] == [1, 2, 3, 4, 5, 6]  # steps 1-4 were not trained again
    # The LR after resuming is the cosine schedule's over 6 steps at steps 5 and 6, not warm-up from 0.
    for r in logged[4:]:
        progress = (r["step"] - 2) / (6 - 2)
        assert r["lr"] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * progress)), rel=1e-6)
    assert json.loads((run / "checkpoints" / "last" / "extra.json").read_text())["step"] == 6
    assert (run / "checkpoints" / "step_0000002").is_dir() and (run / "checkpoints" / "step_0000006").is_dir()
    # Training went on from the stopped weights: they moved, but by two small steps, not from a new init.
    moved = max(float((state["model"][k] - weights_at_stop[k]).abs().max()) for k in weights_at_stop
                if k.startswith("net.") and weights_at_stop[k].is_floating_point())
    assert 0 < moved < 0.05


# ----------------------------------------------------------------------------- bf16


def _dtypes_seen_in_forward(fn) -> set[torch.dtype]:
    """Output dtypes of every Linear/Conv1d forward while ``fn`` runs (a global module hook)."""
    seen: set[torch.dtype] = set()

    def hook(module, args, output):  # noqa: ANN001, ANN202
        if isinstance(module, torch.nn.Linear | torch.nn.Conv1d) and torch.is_tensor(output):
            seen.add(output.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        fn()
    finally:
        handle.remove()
    return seen


def test_bf16_autocast_through_train(lowdim_store, tmp_path):
    results = {}
    dtypes = {mp: _dtypes_seen_in_forward(lambda mp=mp: results.__setitem__(mp, train(
        _recipe(tmp_path, [f"train.mixed_precision={mp}", "train.steps=3"]), lowdim_store, tmp_path / mp,
        progress=False))) for mp in ("bf16", "no")}
    assert results["bf16"]["mixed_precision"] == "bf16" and results["no"]["mixed_precision"] == "no"
    assert torch.bfloat16 in dtypes["bf16"]  # the layers really ran in bf16 under autocast
    assert dtypes["no"] == {torch.float32}
    assert math.isfinite(results["bf16"]["train_loss"]) and results["bf16"]["steps"] == 3
    policy = load_policy(tmp_path / "bf16" / "checkpoints" / "last")
    assert all(p.dtype == torch.float32 for p in policy.state_dict().values() if p.is_floating_point())
    obs = {"state": torch.randn(5, 2, 3)}
    chunk = policy.predict_action(obs, generator=torch.Generator().manual_seed(0))
    assert chunk.shape == (5, 8, 4) and torch.isfinite(chunk).all()


# ----------------------------------------------------------------------------- JPEG


def _smooth_frames(rng: np.random.Generator, n: int, size: int = 32) -> np.ndarray:
    """Shifting colour gradients: what JPEG at quality 90 reproduces within a few levels."""
    y, x = np.mgrid[0:size, 0:size]
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        out[i, ..., 0] = 40 + x * 6 + i
        out[i, ..., 1] = 60 + y * 5
        out[i, ..., 2] = 128 + (x + y) * 2
    return out


def test_jpeg_codec_round_trip_through_store_and_plain_zarr(tmp_path):
    path = tmp_path / "jpeg.zarr"
    spec = KeySpec((32, 32, 3), "uint8", "rgb", codec="jpeg")
    eps = _write_store(path, [20, 12], camera={"cam_image": (spec, _smooth_frames)})
    store = DemoStore.open(path)
    assert store.keys["cam_image"][1].codec == "jpeg"
    meta = json.loads((path / "cam" / "cam_image" / "zarr.json").read_text())
    assert "robolearn.jpeg" in json.dumps(meta["codecs"])

    ref = np.concatenate([e["cam_image"] for e in eps])
    via_zarr = np.concatenate([store.read_episode(i, keys=["cam_image"], align=False)["cam_image"] for i in range(2)])
    via_reader = FrameReader(store.array("cam_image"), store.committed_rows("cam")).read(np.arange(len(ref)))
    np.testing.assert_array_equal(via_reader, via_zarr)  # the loader's fast path decodes like Zarr does
    err = np.abs(via_reader.astype(np.int16) - ref.astype(np.int16))
    assert not np.array_equal(via_reader, ref)  # lossy: JPEG really was used
    assert err.mean() < 2.0 and err.max() <= 16, (err.mean(), err.max())

    # A plain Zarr reader, in a process that never imports robolearn itself, finds the codec through
    # the `zarr.codecs` entry point and decodes the same pixels as robolearn's frame reader.
    np.save(tmp_path / "expected.npy", via_reader)
    script = (
        "import sys, numpy as np, zarr\n"
        "assert 'robolearn' not in sys.modules\n"
        f"a = zarr.open_array({str(path / 'cam' / 'cam_image')!r}, mode='r')\n"
        "x = a[:]\n"
        f"np.testing.assert_array_equal(x[:{len(ref)}], np.load({str(tmp_path / 'expected.npy')!r}))\n"
        "print('decoded', x.shape, sorted(m for m in sys.modules if m.startswith('robolearn.data.codecs')))\n"
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env={**os.environ})
    assert res.returncode == 0, res.stderr
    assert "robolearn.data.codecs" in res.stdout


# ----------------------------------------------------------------------------- depth only


def _depth_frames(rng: np.random.Generator, n: int, size: int = 16) -> np.ndarray:
    return rng.integers(200, 1800, (n, size, size), dtype=np.uint16)  # 0.2-1.8 m in millimetres


def test_depth_only_camera_from_store_to_policy(tmp_path):
    path = tmp_path / "depth.zarr"
    spec = KeySpec((16, 16), "uint16", "depth", depth_scale=0.001)
    eps = _write_store(path, [30, 25, 40], camera={"cam_depth": (spec, _depth_frames)})
    store = DemoStore.open(path)
    assert "cam_image" not in store.keys and store.keys["cam_depth"][1].kind == "depth"

    ds = WindowDataset(path, ["state", "cam_depth"], n_obs_steps=2, horizon=8, n_action_steps=4, split="all")
    item = ds[5]
    rows = ds.sampler.rows(5)
    cam = align_to_reference(eps[0]["t"], eps[0]["t_cam"])[rows[:2]]
    expected = torch.from_numpy(eps[0]["cam_depth"][cam].astype(np.float32))[:, None] * 0.001
    torch.testing.assert_close(item["obs"]["cam_depth"], expected)  # metres, channel axis added

    meta = shape_meta_from_dataset(ds)
    assert meta.obs["cam_depth"].kind == "depth" and meta.obs["cam_depth"].tensor_shape == (1, 16, 16)
    recipe = load_recipe(_write_recipe(tmp_path), ["data.obs_keys=[state, cam_depth]"])
    policy = make_policy(recipe.policy, meta)
    policy.set_normalizer(ds.normalizer())
    assert policy.net.obs_encoder.cameras == [(None, "cam_depth")]  # a camera of its own, one channel

    batch = ds.__getitems__(list(range(8)))
    loss = policy.compute_loss(batch)
    loss.backward()
    first_conv = next(m for m in policy.net.obs_encoder.cams.modules() if isinstance(m, torch.nn.Conv2d))
    assert torch.isfinite(loss) and first_conv.weight.shape[1] == 1 and first_conv.weight.grad.abs().sum() > 0

    policy.eval()
    noise = torch.randn(8, 8, 4, generator=torch.Generator().manual_seed(0))
    a = policy.predict_action(batch["obs"], noise=noise)
    farther = {**batch["obs"], "cam_depth": batch["obs"]["cam_depth"] + 0.5}
    assert a.shape == (8, 8, 4) and not torch.allclose(a, policy.predict_action(farther, noise=noise))

    # And through train() -> checkpoint -> load_policy.
    res = train(recipe, path, tmp_path / "run", progress=False)
    assert res["steps"] == 4 and math.isfinite(res["train_loss"])
    loaded = load_policy(tmp_path / "run" / "checkpoints" / "last")
    assert loaded.obs_keys == ["state", "cam_depth"]
    assert torch.isfinite(loaded.predict_action(batch["obs"], noise=noise)).all()


def _write_recipe(tmp_path: Path) -> Path:
    p = tmp_path / "tiny.yaml"
    p.write_text(RECIPE)
    return p
