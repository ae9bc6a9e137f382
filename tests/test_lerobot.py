"""LeRobot interoperability against the real lerobot package: export, import, round trip, training.

Tiny datasets are built here, with the store's writer and with lerobot's own LeRobotDataset.create;
nothing is fetched from a hub.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

from robolearn.data.schema import CONTROL_STREAM, EpisodeInfo, KeySpec  # noqa: E402
from robolearn.data.store import DemoStore  # noqa: E402
from robolearn.interop.lerobot import (  # noqa: E402
    InteropError,
    export_lerobot,
    import_lerobot,
    lerobot_modules,
    psnr,
    scalars_as_0d,
)

try:
    LR = lerobot_modules()
except InteropError as e:  # the suite still runs where the optional extra is not installed
    pytest.skip(f"lerobot not installed: {e}", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
LENGTHS = [12, 9, 15]
FPS = 10
H, W = 24, 32


def smooth_frames(n: int, phase: float) -> np.ndarray:
    """Moving colour gradients: the kind of content a video codec is built for."""
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    t = np.arange(n, dtype=np.float32)[:, None, None]
    r = 128 + 100 * np.sin((x + 2 * t + phase) / 6)
    g = 128 + 100 * np.cos((y - t) / 5)
    b = 128 + 60 * np.sin((x + y - t) / 9 + phase)
    return np.stack(np.broadcast_arrays(r, g, b), -1).clip(0, 255).astype(np.uint8)


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "robolearn", *args], capture_output=True, text=True, timeout=300,
                          env=env, cwd=ROOT)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """Three episodes: proprio, object state, float64 sim state, a camera with depth, a wrist camera,
    reward and intervention columns (one episode unlabelled), mixed successes and tasks."""
    path = tmp_path_factory.mktemp("lr") / "src.zarr"
    rng = np.random.default_rng(0)
    with DemoStore.open(path, mode="a") as s:
        s.declare_stream(CONTROL_STREAM, {
            "action": KeySpec((7,), "float32"), "robot0_eef_pos": KeySpec((3,), "float32"),
            "robot0_gripper_qpos": KeySpec((2,), "float32"), "object": KeySpec((10,), "float32"),
            "sim_state": KeySpec((20,), "float64"),
        })
        s.declare_stream("agentview", {"agentview_image": KeySpec((H, W, 3), "uint8", "rgb"),
                                       "agentview_depth": KeySpec((H, W), "uint16", "depth", depth_scale=0.001)})
        s.declare_stream("wrist", {"wrist_image": KeySpec((H, W, 3), "uint8", "rgb")})
        for e, n in enumerate(LENGTHS):
            t = 100.0 + np.arange(n) / FPS
            with s.begin_episode() as w:
                w.extend(CONTROL_STREAM, t, t, action=rng.normal(size=(n, 7)).astype(np.float32),
                         robot0_eef_pos=rng.normal(size=(n, 3)).astype(np.float32),
                         robot0_gripper_qpos=rng.normal(size=(n, 2)).astype(np.float32),
                         object=rng.normal(size=(n, 10)).astype(np.float32), sim_state=rng.normal(size=(n, 20)))
                w.extend("agentview", t, t, agentview_image=smooth_frames(n, e),
                         agentview_depth=rng.integers(0, 4000, (n, H, W), dtype=np.uint16))
                w.extend("wrist", t, t, wrist_image=smooth_frames(n, 10 + e))
                if e != 1:
                    w.set_column("reward", rng.random(n).astype(np.float32), {"model": "test"})
                    w.set_column("intervention", (rng.random(n) > 0.5).astype(np.float32), {"by": "human"})
                w.commit(EpisodeInfo(task=["lift the cube", "lift it again"][e % 2], success=e != 1, fps=FPS,
                                     rig="sim:lift"))
    return path


@pytest.fixture(scope="module")
def exported(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "ds"
    return out, export_lerobot(store, out, repo_id="robolearn/test")


def test_export_opens_in_lerobot_with_videos_stats_tasks_fps(store, exported):
    out, rep = exported
    assert rep.episodes == 3 and rep.frames == sum(LENGTHS) and rep.fps == FPS
    ds = LR["LeRobotDataset"]("robolearn/test", root=out)
    assert ds.meta.info["codebase_version"] == "v3.0" and ds.fps == FPS
    assert (ds.num_episodes, ds.num_frames) == (3, sum(LENGTHS))
    assert sorted(ds.meta.video_keys) == ["observation.images.agentview", "observation.images.wrist"]
    assert all(list((out / "videos" / k).rglob("*.mp4")) for k in ds.meta.video_keys)
    assert set(ds.meta.tasks.index) == {"lift the cube", "lift it again"}
    for key in ("action", "observation.state", "observation.environment_state", "observation.images.wrist"):
        assert {"mean", "std", "min", "max"} <= set(ds.meta.stats[key])
    names = ds.meta.features["observation.state"]["names"]
    assert names == [f"robot0_eef_pos.{i}" for i in range(3)] + [f"robot0_gripper_qpos.{i}" for i in range(2)]
    item = ds[LENGTHS[0] + 2]  # episode 1, frame 2, through lerobot's own __getitem__ and video decoder
    assert item["episode_index"] == 1 and item["task"] == "lift it again"
    assert tuple(item["observation.images.agentview"].shape) == (3, H, W)
    assert tuple(item["observation.depth.agentview"].shape) == (H, W)
    src = DemoStore.open(store)
    np.testing.assert_array_equal(item["action"].numpy(), src.read("action", 1)[2])
    # lerobot's __getitem__ hands float64 out as float32; the parquet keeps float64 (round trip test)
    np.testing.assert_array_equal(item["observation.sim_state"].numpy(), src.read("sim_state", 1)[2].astype(np.float32))
    assert bool(item["next.success"]) is False
    # The episode's video decoded by lerobot matches the source frame within codec loss.
    frame = (item["observation.images.wrist"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert psnr(frame, src.read("wrist_image", 1)[2]) > 28
    assert all(v > 28 for v in rep.psnr.values()), rep.psnr
    # What the format cannot carry is named.
    text = rep.summary()
    assert "not carried" in text and "provenance" in text and "t_host" in text


def test_round_trip_is_exact_for_episodes_actions_lowdim_and_images_within_codec_loss(store, exported, tmp_path):
    out, rep = exported
    back_path = tmp_path / "back.zarr"
    imp = import_lerobot(out, back_path)  # in-process: a CLI run would import torch and lerobot again (~10 s)
    assert "imported 3 episodes" in imp.summary() and imp.keys["robot0_gripper_qpos"] == "observation.state[3:5]"
    a, b = DemoStore.open(store), DemoStore.open(back_path)
    assert b.n_episodes == a.n_episodes
    np.testing.assert_array_equal(b.episode_lengths(), a.episode_lengths())
    assert set(b.keys) == set(a.keys)
    assert {k: (s, spec) for k, (s, spec) in b.keys.items()} == dict(a.keys.items())
    scores = []
    for e in range(a.n_episodes):
        for key in ("action", "robot0_eef_pos", "robot0_gripper_qpos", "object", "sim_state",
                    "agentview_depth"):
            x, y = a.read_episode(e, [key])[key], b.read_episode(e, [key])[key]
            assert x.dtype == y.dtype and x.shape == y.shape
            np.testing.assert_array_equal(x, y, err_msg=f"episode {e} {key}")
        for key in ("agentview_image", "wrist_image"):
            scores.append(psnr(a.read_episode(e, [key])[key], b.read_episode(e, [key])[key]))
        for col in ("reward", "intervention"):
            np.testing.assert_array_equal(a.read_column(col, e)[0], b.read_column(col, e)[0])  # NaN == NaN here
        ia, ib = a.episode_info(e), b.episode_info(e)
        assert (ib.task, ib.success, ib.fps, ib.rig) == (ia.task, ia.success, ia.fps, ia.rig)
        np.testing.assert_allclose(b.timestamps(CONTROL_STREAM, e), np.arange(LENGTHS[e]) / FPS, atol=1e-6)
    assert min(scores) > 28, scores
    assert b.read_column("reward", 0)[1]["source"] == "lerobot"


def make_lerobot_dataset(root: Path) -> None:
    """A dataset as `lerobot-record` would write it: state, action, one camera, per-frame tasks."""
    feats = {
        "observation.state": {"dtype": "float32", "shape": (4,), "names": ["x", "y", "z", "gripper"]},
        "action": {"dtype": "float32", "shape": (4,), "names": ["dx", "dy", "dz", "grip"]},
        "observation.images.front": {"dtype": "video", "shape": (H, W, 3), "names": ["height", "width", "channels"]},
        # a camera kept as PNG images in the parquet files rather than as a video
        "observation.images.wrist": {"dtype": "image", "shape": (H, W, 3), "names": ["height", "width", "channels"]},
        "next.reward": {"dtype": "float32", "shape": (1,), "names": None},
    }
    ds = LR["LeRobotDataset"].create("someone/so100_test", fps=15, features=feats, root=root, robot_type="so100")
    rng = np.random.default_rng(1)
    for e, n in enumerate([40, 33, 45, 38]):
        state = np.cumsum(rng.normal(size=(n, 4)), 0).astype(np.float32)
        video = smooth_frames(n, e)
        for t in range(n):
            ds.add_frame({"observation.state": state[t], "action": state[min(t + 1, n - 1)] - state[t],
                          "observation.images.front": video[t], "observation.images.wrist": video[n - 1 - t],
                          "next.reward": np.array([t / n], np.float32),
                          "task": "put the block in the bowl" if e % 2 else "stack the blocks"})
        scalars_as_0d(ds)  # lerobot 0.4 + NumPy 2.4 cannot save (1,) features otherwise (see its docstring)
        ds.save_episode()
    ds.finalize()


def test_import_dataset_written_by_lerobot_then_train(tmp_path):
    from robolearn.policies.train import load_recipe, train

    src = tmp_path / "someone" / "so100_test"
    make_lerobot_dataset(src)
    rep = import_lerobot(src, tmp_path / "imported.zarr")
    assert (rep.episodes, rep.frames, rep.fps) == (4, 156, 15)
    s = DemoStore.open(tmp_path / "imported.zarr")
    assert set(s.streams) == {CONTROL_STREAM, "front", "wrist"}
    assert set(s.keys) == {"action", "state", "front_image", "wrist_image"}
    np.testing.assert_array_equal(s.read("wrist_image", 1), smooth_frames(33, 1)[::-1])  # PNG: lossless
    np.testing.assert_array_equal(s.episode_lengths(), [40, 33, 45, 38])
    assert [i.task for i in s.episodes()] == ["stack the blocks", "put the block in the bowl"] * 2
    assert s.episode_info(0).rig == "so100" and s.episode_info(0).fps == 15
    np.testing.assert_allclose(s.timestamps("front", 2), np.arange(45) / 15, atol=1e-6)
    np.testing.assert_allclose(s.read_column("reward", 3)[0], np.arange(38) / 38, rtol=1e-6)
    assert psnr(s.read("front_image", 1), smooth_frames(33, 1)) > 28

    recipe = load_recipe(ROOT / "policies" / "flow_image.yaml", [
        "data.obs_keys=[state,front_image]", "data.val_ratio=0", "train.steps=4", "train.batch_size=8",
        "train.num_workers=0", "train.warmup_steps=1", "train.ckpt_every=4", "train.val_every=100",
        "policy.unet.down_dims=[16,32]", "policy.encoder.resnet_width=8", "policy.num_inference_steps=2",
    ])
    res = train(recipe, tmp_path / "imported.zarr", tmp_path / "run", progress=False)
    assert res["steps"] == 4 and np.isfinite(res["train_loss"])
    assert (tmp_path / "run" / "checkpoints" / "last" / "model.safetensors").is_file()


def test_older_format_gets_one_line_naming_version_and_command(tmp_path):
    old = tmp_path / "lerobot" / "pusht"
    (old / "meta").mkdir(parents=True)
    (old / "meta" / "info.json").write_text(json.dumps({"codebase_version": "v2.1", "fps": 10}))
    res = run("data", "import", str(old), "--out", str(tmp_path / "x.zarr"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    line = res.stderr.strip()
    assert "\n" not in line and "v2.1" in line
    assert "convert_dataset_v21_to_v30 --repo-id=lerobot/pusht" in line and f"--root={tmp_path}" in line
    assert not (tmp_path / "x.zarr").exists()


@pytest.mark.parametrize("argv,needle", [
    (["data", "import", "nobody/not_cached", "--out", "{tmp}/a.zarr"], "robolearn does not download"),
    (["data", "import", "{tmp}", "--out", "{tmp}/a.zarr"], "not a LeRobot dataset"),
    (["data", "export", "{tmp}/missing.zarr", "--to", "lerobot", "--out", "{tmp}/o"], "no store"),
])
def test_usage_errors_are_one_line(tmp_path, argv, needle):
    res = run(*[a.format(tmp=tmp_path) for a in argv])
    assert res.returncode == 2 and needle in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_export_refuses_existing_output(store, tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("mine")
    res = run("data", "export", str(store), "--to", "lerobot", "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "already exists" in res.stderr
    assert (tmp_path / "o" / "keep.txt").read_text() == "mine"
