"""The Rig / Teleoperator seams and the recorder on top of them, with the real robosuite rig."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from robolearn.data.inspect import verify
from robolearn.data.store import DemoStore
from robolearn.errors import UserError
from robolearn.features import CONTROL_STREAM
from robolearn.record import RecordConfig, record
from robolearn.rigs import make_rig
from robolearn.rollout import run_episode
from robolearn.teleop import make_teleop

LIFT = Path(__file__).resolve().parents[1] / "sim" / "tasks" / "lift.yaml"


def test_sim_rig_observes_what_it_declares():
    with make_rig("sim:lift", cameras=["agentview"], image_size=24, depth=True) as rig:
        assert rig.control_hz == 20.0 and rig.max_steps == 200 and rig.clocks == {"control": "sim", "agentview": "sim"}
        assert rig.action_feature.shape == (7,) and rig.task_text == "lift the red cube"
        obs = rig.reset(seed=3)
        assert set(obs) == set(rig.features) == {"control", "agentview"}
        for stream, keys in rig.features.items():
            assert set(obs[stream].values) == set(keys)
            for key, feat in keys.items():
                v = np.asarray(obs[stream].values[key])
                assert v.shape == feat.shape and v.dtype == np.dtype(feat.dtype), (key, v.shape, v.dtype, feat)
        assert rig.features["agentview"]["agentview_depth"].depth_scale == 0.001
        assert obs["control"].t_device == obs["control"].t_host == 0.0
        res = rig.send_action(np.zeros(7, np.float32))
        assert res.success is False and not res.truncated
        assert rig.observe()["agentview"].t_device == pytest.approx(0.05)


def test_deferred_cameras_equal_online_rendering():
    # The sim fast path (roll out without cameras, render kept episodes from states) must give the
    # images a policy would have seen online, bit for bit.
    cams = ["agentview", "robot0_eye_in_hand"]
    with make_rig("sim:lift", cameras=cams, image_size=24) as online, \
            make_rig("sim:lift", cameras=cams, image_size=24, defer_cameras=True) as deferred:
        assert set(deferred.features) == {"control"} and set(deferred.deferred_streams) == set(cams)
        eps = []
        for rig in (online, deferred):
            teleop = make_teleop("expert")
            teleop.connect(rig)
            eps.append(run_episode(rig, teleop, seed=11, hold_steps=2))
        a, b = eps
        assert a.success and b.success and a.steps == b.steps and a.success_at == b.success_at
        np.testing.assert_array_equal(a.control["action"], b.control["action"])
        frames = deferred.fill_deferred(b.control)
        for cam in cams:
            np.testing.assert_array_equal(a.streams[cam][f"{cam}_image"], frames[cam][f"{cam}_image"])
            np.testing.assert_array_equal(a.streams[cam]["t_device"], a.control["t_device"])


@pytest.mark.parametrize(("spec", "match"), [
    ("sim:", "names no task"),
    ("sim:nope", "unknown task 'nope'"),
    ("hardware/none.yaml", "rig file not found"),
    ("bogus", "unknown rig"),
])
def test_make_rig_refuses_bad_specs(spec, match):
    with pytest.raises(UserError, match=match):
        make_rig(spec)


def test_expert_comes_from_the_task_definition(tmp_path):
    # A user's own task file under another name gets the expert its definition names...
    mine = tmp_path / "my_pick.yaml"
    mine.write_text(LIFT.read_text().replace("name: lift", "name: my_pick"))
    s = record(RecordConfig(rig=f"sim:{mine}", out=str(tmp_path / "a.zarr"), episodes=1, workers=1))
    assert s.successes == 1
    info = DemoStore.open(tmp_path / "a.zarr").episode_info(0)
    assert info.notes["task_name"] == "my_pick" and info.source == "expert"
    # ...and a task that names none is refused with what to do.
    bare = tmp_path / "bare.yaml"
    bare.write_text("\n".join(x for x in LIFT.read_text().splitlines() if not x.startswith("expert:")))
    with pytest.raises(UserError, match="names no expert"):
        record(RecordConfig(rig=f"sim:{bare}", out=str(tmp_path / "b.zarr"), episodes=1, workers=1))


def test_operator_events_decide_what_is_kept(tmp_path):
    # helpers.OperatorScript: episode 0 discarded, episode 1 marked failed, later ones kept; ticks 2-4
    # are interventions. Loaded by name, as users name their own teleoperators.
    out = tmp_path / "ops.zarr"
    s = record(RecordConfig(rig="sim:lift", out=str(out), episodes=2, teleop="helpers:OperatorScript",
                            keep_failures=True, workers=1))
    store = DemoStore.open(out)
    infos = store.episodes()
    assert s.attempts == 4 and s.committed == 3 and s.failures_kept == 1 and s.successes == 2
    assert [i.seed for i in infos] == [1, 2, 3]  # seed 0 was discarded
    assert [i.success for i in infos] == [False, True, True] and infos[0].length == 3
    assert all(i.source == "teleop" for i in infos)
    flags, prov = store.read_column("intervention", 1)
    np.testing.assert_array_equal(np.flatnonzero(flags), [2, 3, 4])
    assert prov == {"source": "helpers:OperatorScript"}
    assert verify(out).ok


def _store_arrays(path: Path) -> tuple[list, dict]:
    store = DemoStore.open(path)
    infos = []
    for i in range(store.n_episodes):
        info = store.episode_info(i)
        info.started_at = None
        infos.append(info)
    arrays = {(k, i): store.read(k, i) for i in range(store.n_episodes) for k in store.keys}
    return infos, arrays


def test_same_store_for_one_and_two_workers(tmp_path):
    for w in (1, 2):
        record(RecordConfig(rig="sim:lift", out=str(tmp_path / f"w{w}.zarr"), episodes=3, workers=w,
                            cameras=["agentview"], image_size=16))
    (ia, a), (ib, b) = _store_arrays(tmp_path / "w1.zarr"), _store_arrays(tmp_path / "w2.zarr")
    assert ia == ib and a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=str(k))


def test_sigterm_ends_recording_and_keeps_committed_episodes(tmp_path):
    out = tmp_path / "term.zarr"
    p = subprocess.Popen([sys.executable, "-m", "robolearn", "record", "--rig", "sim:lift", "--episodes", "200",
                          "--workers", "2", "--out", str(out), "-q"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and p.poll() is None:
            if out.exists():
                try:
                    if DemoStore.open(out).n_episodes >= 2:
                        break
                except Exception:  # the store is being created right now
                    pass
            time.sleep(0.2)
        assert p.poll() is None, p.communicate()
        os.kill(p.pid, signal.SIGTERM)
        stdout, stderr = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, stderr
    assert "interrupted" in stdout and "Traceback" not in stderr
    store = DemoStore.open(out)
    assert 2 <= store.n_episodes < 200 and verify(out).ok
    assert [e.seed for e in store.episodes()] == list(range(store.n_episodes))
    assert store.ends(CONTROL_STREAM)[-1] == store.committed_rows(CONTROL_STREAM)


def test_expert_missing_its_objects_is_named(tmp_path):
    task = tmp_path / "t.yaml"
    task.write_text("name: t\nenv_name: Lift\ninstruction: lift\nhorizon: 4\nexpert: lift\n")
    for workers in (1, 2):  # also when the error happens in a worker process
        with pytest.raises(UserError, match=r"expert 'lift' reads object\(s\) \['cube'\]"):
            record(RecordConfig(rig=f"sim:{task}", out=str(tmp_path / f"s{workers}.zarr"), episodes=1,
                                workers=workers))
