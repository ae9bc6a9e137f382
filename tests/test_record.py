"""`robolearn record` on the simulated rig: the real robosuite env and scripted expert, no mocks."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from robolearn.data.inspect import verify
from robolearn.data.schema import SchemaError
from robolearn.data.store import DemoStore
from robolearn.record import RecordConfig, record


def test_record_with_cameras_depth_and_rerendered_images(tmp_path):
    out = tmp_path / "lift.zarr"
    s = record(RecordConfig(rig="sim:lift", out=str(out), episodes=2, cameras=["agentview", "robot0_eye_in_hand"],
                            image_size=32, depth=True, seed=5))
    assert s.successes == s.committed == 2 and not s.interrupted
    store = DemoStore.open(out)
    assert verify(out).ok
    info = store.episode_info(0)
    assert info.success and info.source == "expert" and info.rig == "sim:lift" and info.fps == 20.0
    assert info.seed == 5 and info.task == "lift the red cube"
    ep = store.read_episode(0)
    n = info.length
    assert ep["action"].shape == (n, 7) and ep["agentview_image"].shape == (n, 32, 32, 3)
    assert ep["agentview_depth"].dtype == np.uint16 and store.keys["agentview_depth"][1].depth_scale == 0.001
    # control and camera streams share the sim clock; timestamps advance at 20 Hz
    t = store.timestamps("control", 0)
    np.testing.assert_allclose(np.diff(t), 0.05, atol=1e-9)
    np.testing.assert_array_equal(t, store.timestamps("agentview", 0, "device"))
    # the stored images are exactly what the env renders from the stored MuJoCo states
    from robolearn.sim import make_env

    env = make_env("lift", cameras=["agentview", "robot0_eye_in_hand"], image_size=32, depth=True)
    try:
        for k in (0, n // 2, n - 1):
            frame = env.render_state(ep["sim_state"][k])
            np.testing.assert_array_equal(frame["agentview_image"], ep["agentview_image"][k])
            np.testing.assert_array_equal(frame["robot0_eye_in_hand_depth"], ep["robot0_eye_in_hand_depth"][k])
    finally:
        env.close()
    reward, prov = store.read_column("reward", 0)
    assert reward[-1] == 1.0 and prov["source"] == "sim"


def test_failures_dropped_by_default_and_kept_when_asked(tmp_path):
    task = tmp_path / "lift_short.yaml"
    task.write_text("name: lift\nenv_name: Lift\ninstruction: lift the red cube\nhorizon: 4\nexpert: lift\n")
    dropped = record(RecordConfig(rig=f"sim:{task}", out=str(tmp_path / "a.zarr"), episodes=1, max_attempts=3))
    assert dropped.attempts == 3 and dropped.committed == 0
    assert DemoStore.open(tmp_path / "a.zarr").n_episodes == 0
    kept = record(RecordConfig(rig=f"sim:{task}", out=str(tmp_path / "b.zarr"), episodes=1, max_attempts=3,
                               keep_failures=True))
    store = DemoStore.open(tmp_path / "b.zarr")
    assert kept.failures_kept == 3 and store.n_episodes == 3
    assert [e.success for e in store.episodes()] == [False, False, False]
    assert [e.seed for e in store.episodes()] == [0, 1, 2]
    assert all(len(store.read("action", i)) == 4 for i in range(3))


def test_appending_with_other_cameras_is_refused(tmp_path):
    out = tmp_path / "s.zarr"
    record(RecordConfig(rig="sim:lift", out=str(out), episodes=1, cameras=["agentview"], image_size=16))
    with pytest.raises(SchemaError, match="holds cameras"):
        record(RecordConfig(rig="sim:lift", out=str(out), episodes=1))
    with pytest.raises(SchemaError, match="images of 16x16"):
        record(RecordConfig(rig="sim:lift", out=str(out), episodes=1, cameras=["agentview"], image_size=32))
    res = subprocess.run([sys.executable, "-m", "robolearn", "record", "--rig", "sim:lift", "--out", str(out),
                          "--episodes", "1"], capture_output=True, text=True)
    assert res.returncode == 2 and "holds cameras" in res.stderr and "Traceback" not in res.stderr
    assert DemoStore.open(out).n_episodes == 1 and verify(out).ok


def test_appending_another_observation_layout_is_refused(tmp_path):
    # Lift's object vector has 12 numbers, can's 18: appending would corrupt the store, so the first
    # episode is refused before it is written, and the store keeps what it had.
    out = tmp_path / "s.zarr"
    record(RecordConfig(rig="sim:lift", out=str(out), episodes=1))
    with pytest.raises(SchemaError, match=r"'object' of shape \[12\].*now gives \[18\]"):
        record(RecordConfig(rig="sim:can", out=str(out), episodes=1))
    assert DemoStore.open(out).n_episodes == 1 and verify(out).ok
