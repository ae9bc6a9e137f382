"""Recording on a real-time rig, end to end: `hardware/sim_twin.yaml` (the MuJoCo twin arm in its
world and controller processes, two RealSense recordings played by camera processes) driven by a
scripted teleoperator and by the keyboard through a pseudo-terminal, into a store that is checked
frame by frame against the recordings."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import descendants, pid_running

from robolearn.data.inspect import verify
from robolearn.data.schema import EpisodeInfo
from robolearn.data.store import DemoStore
from robolearn.errors import ConfigError, UserError
from robolearn.features import Feature
from robolearn.record import RecordConfig, record
from robolearn.rigs import make_rig, rig_class
from robolearn.rigs.hardware import HardwareRig, load_rig_config
from robolearn.rigs.playback import pattern
from robolearn.teleop.replay import ReplayTeleop

pytestmark = pytest.mark.realtime  # has the CPU alone under xdist (conftest.py)

ROOT = Path(__file__).resolve().parents[1]
FRAMES = 45  # frames per playback recording (1.5 s at 30 fps; the cameras loop over them)
ACTIONS = np.array([[0, 0, -0.5, 0, 0, 0, -1]] * 12 + [[0.2, 0, 0, 0, 0, 0, 1]] * 12, np.float32)


@pytest.fixture(scope="module")
def twin_dir(tmp_path_factory):
    """A directory holding sim_twin's playback recordings (data/playback/...) and a demo to replay."""
    from helpers import twin_playback_dir

    d = tmp_path_factory.mktemp("twin")
    paths = twin_playback_dir(d, frames=FRAMES)
    assert [p.name for p in paths] == ["sim_twin_front.db3", "sim_twin_wrist.db3"]
    with DemoStore.open(d / "demo.zarr", mode="a") as s:  # the demonstration the scripted operator replays
        s.declare_stream("control", {"action": Feature((7,), "float32")})
        with s.begin_episode() as w:
            t = np.arange(len(ACTIONS)) * 0.05
            w.extend("control", t, t, action=ACTIONS)
            w.commit(EpisodeInfo(task="demo", source="teleop"))
    return d


def _episodes(out: Path) -> int:
    try:
        with DemoStore.open(out) as s:
            return s.n_episodes
    except Exception:  # noqa: BLE001 - not created yet
        return 0


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}


def _check_camera_frames(store: DemoStore, ep: int, cam: str, index: int, dropped: int) -> int:
    """Every stored frame is a frame of the recording, bit for bit, in order; gaps only where the
    episode info counts dropped frames. Returns the frames checked."""
    img, dep = store.read(f"{cam}_image", ep), store.read(f"{cam}_depth", ep)
    ks = []
    for im, d in zip(img, dep, strict=True):
        # The pattern encodes k in red (3k) and blue (7k + 50c) of pixel (0, 0): k mod 256 is unique.
        k = next(k for k in range(FRAMES) if (3 * k) % 256 == im[0, 0, 0] and (7 * k + 50 * index) % 256 == im[0, 0, 2])
        rgb, depth = pattern(index, k, *im.shape[:2])
        np.testing.assert_array_equal(im, rgb)
        np.testing.assert_array_equal(d, depth)
        ks.append(k)
    gaps = sum((b - a - 1) % FRAMES for a, b in zip(ks, ks[1:], strict=False))
    assert gaps <= dropped, (cam, ks, dropped)
    return len(ks)


def test_rig_files_load_and_errors_name_the_key(tmp_path):
    for f in sorted((ROOT / "hardware").glob("*.yaml")):
        cfg = load_rig_config(f)
        assert cfg.name == f.stem and cfg.control_hz > 0
    assert {load_rig_config(n).arm.type for n in ("ur5e_2x_d435", "franka_d435_wrist_d405", "so101_usb_cam")} == \
        {"ur", "franka", "so101"}
    assert load_rig_config("sim_twin", ["control_hz=10"]).control_hz == 10
    assert rig_class("hardware/sim_twin.yaml") is HardwareRig and HardwareRig.realtime
    base = (ROOT / "hardware" / "sim_twin.yaml").read_text()
    cases = [
        (base.replace("control_hz: 20 ", "control_hz: 200 "), r"control_hz: 200 Hz is above the arm's servo rate"),
        (base.replace("name: wrist", "name: front"), r"cameras\[1\]\.name: two cameras are named 'front'"),
        (base.replace("device: keyboard", "device: joystick"), r"teleop\.device: .*'joystick'"),
        (base.replace("device: keyboard", "device: leader"), r"teleop\.leader: device 'leader' needs"),
        (base.replace("  servo_hz: 125", "  servo_hz: 125\n  colour: red"), r"arm: unknown key 'colour'"),
        (base.replace("type: twin", "type: twin\n  host: 1"), r"arm\.host: expected"),
    ]
    for i, (text, match) in enumerate(cases):
        p = tmp_path / f"bad{i}.yaml"
        p.write_text(text)
        with pytest.raises(ConfigError, match=rf"bad{i}\.yaml: {match}"):
            load_rig_config(p)
    from robolearn.rigs.launch import load_launch

    for f in sorted((ROOT / "launch").glob("*.yaml")):
        launch = load_launch(f)
        load_rig_config(launch.rig, launch.set)
    assert load_launch(ROOT / "launch" / "sim_twin_record.yaml").record.teleop == "keyboard"
    bad = tmp_path / "launch.yaml"
    bad.write_text("rig: hardware/sim_twin.yaml\nrecord: {episodes: 2}\n")
    with pytest.raises(ConfigError, match=r"launch\.yaml: record: missing required key 'out'"):
        load_launch(bad)
    with pytest.raises(UserError, match="rig file not found"):
        make_rig("hardware/none.yaml")
    with pytest.raises(UserError, match="apply to sim:<task> rigs only"):
        make_rig("hardware/sim_twin.yaml", cameras=["x"])


def test_record_on_the_twin_end_to_end_and_sigkill(twin_dir):
    # The CLI, as a user runs it, through every real process: twin world, arm controller, two camera
    # processes, the store writer. The sim expert drives the twin (reading a mirror of the twin's
    # published MuJoCo state); only successful episodes are kept. After two, the recorder is killed with
    # SIGKILL: both stay, intact, and no device process outlives it.
    out = twin_dir / "rec.zarr"
    cmd = [sys.executable, "-m", "robolearn", "record", "--rig", "hardware/sim_twin.yaml", "--teleop", "expert",
           "--task", "lift the red cube", "--episodes", "50", "--seed", "5", "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=twin_dir, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait(lambda: proc.poll() is not None or _episodes(out) >= 2, 240,
              "two episodes")
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        procs = descendants(proc.pid)
        assert len(procs) >= 5  # 2 cameras, arm controller, twin world, store writer
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    _wait(lambda: not [p for p in procs if pid_running(p)], 30,
          "the device processes to end with the recorder")
    v = subprocess.run([sys.executable, "-m", "robolearn", "data", "verify", str(out)], env=_env(),
                       capture_output=True, text=True, timeout=120)
    assert v.returncode == 0 and "OK" in v.stdout, v.stdout + v.stderr
    with DemoStore.open(out) as s:
        assert s.n_episodes >= 2 and set(s.streams) == {"control", "front", "wrist"}
        # Depth scales as the recordings' devices report them (a D405 differs from a D435).
        assert s.streams["front"]["front_depth"].depth_scale == pytest.approx(0.001)
        assert s.streams["wrist"]["wrist_depth"].depth_scale == pytest.approx(0.0001)
        assert s.streams["front"]["front_image"].shape == (480, 640, 3)
        for ep in range(2):
            info = s.episode_info(ep)
            assert info.task == "lift the red cube" and info.source == "expert" and info.fps == 20.0
            assert info.success and info.seed is not None
            reward, prov = s.read_column("reward", ep)  # the twin's own success check, per tick
            assert reward[-1] == 1.0 and prov["source"] == "rig"
            assert set(info.dropped_frames) == {"front", "wrist"}
            assert info.notes["clocks"] == {"control": "sim", "front": "recording-global", "wrist": "recording-global"}
            # One control row per tick at the rig's rate, with the expert's action.
            t_ctrl = s.timestamps("control", ep)
            assert s.read("action", ep).shape == (info.length, 7) and info.length > 20
            # The arm state's host time: a tick may see the same state as the one before when the
            # controller published nothing in between (a loaded machine), never an older one.
            assert np.all(np.diff(t_ctrl) >= 0) and np.mean(np.diff(t_ctrl) > 0) > 0.9
            assert (t_ctrl[-1] - t_ctrl[0]) == pytest.approx((info.length - 1) / 20, rel=0.15)
            for i, cam in enumerate(("front", "wrist")):
                n = _check_camera_frames(s, ep, cam, i, info.dropped_frames[cam])
                # Every frame of the episode, not one per tick (30 fps camera, 20 Hz control).
                assert n >= info.length, (cam, n)
                t_host, t_dev = s.timestamps(cam, ep, "host"), s.timestamps(cam, ep, "device")
                assert np.all(np.diff(t_host) > 0) and np.all(np.diff(t_dev) > 0)
                # One host clock for all streams: the frames lie within the episode's control ticks.
                assert t_ctrl[0] - 0.2 < t_host[0] and t_host[-1] < t_ctrl[-1] + 1.0  # the episode ends with the last tick; a loaded machine may lag
                # Device times are the recording's: 1/30 s apart (modulo the loop's wrap).
                steps = np.diff(t_dev)
                assert np.median(steps) == pytest.approx(1 / 30, abs=2e-3)
        ep = s.read_episode(0)  # cameras aligned onto the control ticks by their host clock
        assert ep["front_image"].shape[0] == s.episode_info(0).length


class _KeyboardThread:
    def __init__(self, cfg: RecordConfig) -> None:
        self.summary = None
        self.error: BaseException | None = None
        self.t = threading.Thread(target=self._run, args=(cfg,), daemon=True)
        self.t.start()

    def _run(self, cfg):
        try:
            self.summary = record(cfg)
        except BaseException as e:  # noqa: BLE001 - re-raised by the test
            self.error = e


def _wait(cond, timeout, what):
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_keyboard_operator_starts_marks_discards_and_quits(twin_dir):
    # A human's session through a real terminal: enter starts an episode, y marks it a success and
    # keeps it, the next one is discarded with x, esc ends the session.
    master, slave = os.openpty()
    out = twin_dir / "kb.zarr"
    cfg = RecordConfig(rig="hardware/sim_twin.yaml", out=str(out), episodes=5, teleop="keyboard", status=False,
                       rig_overrides=[f"teleop.path={os.ttyname(slave)}", "control_hz=20"])
    cwd = os.getcwd()
    os.chdir(twin_dir)
    try:
        run = _KeyboardThread(cfg)
        # The keyboard teleop puts the terminal in cbreak mode once the rig is up and it is connected.
        _wait(lambda: not termios.tcgetattr(slave)[3] & termios.ICANON or not run.t.is_alive(), 120, "the rig")
        os.write(master, b"w\r")  # a motion key while waiting (drives the arm, not recorded), then start
        time.sleep(1.5)
        os.write(master, b"y")  # success: stop and keep
        _wait(lambda: _episodes(out) == 1 or not run.t.is_alive(), 60,
              "the first episode")
        os.write(master, b"\r")
        time.sleep(1.0)
        os.write(master, b"x")  # discard
        time.sleep(0.5)
        os.write(master, b"\x1b")  # quit
        run.t.join(60)
        assert not run.t.is_alive()
    finally:
        os.chdir(cwd)
        os.close(master)
        os.close(slave)
    if run.error:
        raise run.error
    s = run.summary
    assert s.error is None and s.attempts == 2 and s.committed == 1 and s.successes == 1
    with DemoStore.open(out) as st:
        assert st.n_episodes == 1 and verify(out).ok
        info = st.episode_info(0)
        assert info.success and info.source == "teleop" and info.notes["teleop"] == "keyboard"
        assert 10 < info.length < 200  # ~1.5 s at 20 Hz
        interv, _ = st.read_column("intervention", 0)
        assert interv.all()  # a human drove every tick
        assert len(st.timestamps("front", 0)) > info.length  # 30 fps camera, 20 Hz control


class KillCamera(ReplayTeleop):
    """Replays the demo; in the second episode it kills the front camera's process (an unplugged camera)."""

    def __init__(self) -> None:
        super().__init__("demo.zarr")

    def connect(self, rig) -> None:
        super().connect(rig)
        self.rig = rig

    def act(self, observation):
        if self._ep == 1 and self._step == 5:
            os.kill(self.rig.cameras["front"].pid, signal.SIGKILL)
        return super().act(observation)


def test_a_dead_camera_ends_the_run_keeping_committed_episodes(twin_dir):
    out = twin_dir / "dead.zarr"
    cwd = os.getcwd()
    os.chdir(twin_dir)
    try:
        s = record(RecordConfig(rig="hardware/sim_twin.yaml", out=str(out), episodes=3, keep_failures=True,
                                teleop="test_hardware_rig:KillCamera", status=False))
    finally:
        os.chdir(cwd)
    assert s.committed == 1 and s.error is not None
    assert "camera front" in s.error and "exited" in s.error
    with DemoStore.open(out) as st:
        assert st.n_episodes == 1 and verify(out).ok
        np.testing.assert_array_equal(st.read("action", 0), ACTIONS)


def test_run_episode_on_the_hardware_rig_keeps_every_frame(twin_dir):
    # The one rollout loop on a real-time rig without the recorder: paced at control_hz, every camera
    # frame since reset (new_samples -> frames_since), not one per tick.
    from robolearn.rollout import run_episode

    cwd = os.getcwd()
    os.chdir(twin_dir)
    try:
        with make_rig("hardware/sim_twin.yaml", overrides=["control_hz=10"]) as rig:
            assert rig.features["front"]["front_depth"].depth_scale == pytest.approx(0.001)
            assert rig.action_feature.shape == (7,) and rig.control_hz == 10
            teleop = ReplayTeleop(str(twin_dir / "demo.zarr"))
            teleop.connect(rig)
            ep = run_episode(rig, teleop, seed=3, max_steps=12)
            notes = rig.episode_notes()
    finally:
        os.chdir(cwd)
    assert ep.steps == 12 and rig.last_seed == 3
    periods = np.diff(ep.tick_times)
    assert np.median(periods) == pytest.approx(0.1, abs=0.02)  # paced on the wall clock
    for i, cam in enumerate(("front", "wrist")):
        rows = ep.streams[cam]
        n = len(rows["t_host"])
        assert n >= 25  # ~33 frames in 1.1 s at 30 fps
        ks = [next(k for k in range(FRAMES) if (3 * k) % 256 == im[0, 0, 0]) for im in rows[f"{cam}_image"]]
        gaps = sum((b - a - 1) % FRAMES for a, b in zip(ks, ks[1:], strict=False))
        assert gaps <= notes["dropped_frames"][cam]
        np.testing.assert_array_equal(rows[f"{cam}_depth"][-1], pattern(i, ks[-1], 480, 640)[1])


def test_hardware_up_reports_every_stream(twin_dir):
    r = subprocess.run([sys.executable, "-m", "robolearn", "hardware", "up", "--rig", "hardware/sim_twin.yaml",
                        "--seconds", "2"], cwd=twin_dir, env=_env(), capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    import json

    rep = json.loads(r.stdout.strip().splitlines()[-1])
    assert rep["rig"] == "sim_twin" and rep["arm_reads"] >= 1
    for cam in ("front", "wrist"):
        assert rep["streams"][cam]["frames"] >= 30  # ~60 at 30 fps in 2 s
    assert "fps" in r.stderr and "arm" in r.stderr
