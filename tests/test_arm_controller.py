"""The arm controller driven across its process boundary against the MuJoCo twin of sim:lift: the
sim task's actions, its success, and every safety stop; plus configs, install hints and conversions."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from robolearn.config import load_config
from robolearn.errors import ConfigError, UserError
from robolearn.hardware.arms import ArmConfig, SafetyLimits, import_sdk, open_arm
from robolearn.hardware.arms.interp import (
    PoseTrajectory,
    quat_angle,
    quat_from_mat,
    quat_from_rotvec,
    quat_mul,
    quat_to_mat,
    quat_to_rotvec,
    slerp,
)
from robolearn.rigs import RigError

pytestmark = pytest.mark.realtime  # has the CPU alone under xdist (conftest.py)

FAST = dict(max_linear_speed=1.5, max_angular_speed=6.0)  # lets the sim task's full-scale actions through
REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- no processes


def test_interpolation_linear_position_slerp_rotation_and_replanning() -> None:
    q0 = np.array([0.0, 0.0, 0.0, 1.0])
    q1 = quat_from_rotvec(np.array([0.0, 0.0, np.pi / 2]))
    traj = PoseTrajectory(0.0, np.concatenate([[0, 0, 0], q0]))
    traj.schedule(np.concatenate([[1, 0, 0], q1]), t=1.0, now=0.0)
    mid = traj(0.5)
    assert np.allclose(mid[:3], [0.5, 0, 0])
    assert quat_angle(mid[3:], quat_from_rotvec(np.array([0, 0, np.pi / 4]))) < 1e-9
    assert np.allclose(traj(2.0)[:3], [1, 0, 0]) and np.allclose(traj(-1.0)[:3], [0, 0, 0])
    # A chunk sent one waypoint at a time keeps the earlier ones; a new plan drops what lies after it.
    traj.schedule(np.concatenate([[1, 1, 0], q1]), t=2.0, now=0.5)
    assert np.allclose(traj(1.0)[:3], [1, 0, 0]) and np.allclose(traj(1.5)[:3], [1, 0.5, 0])
    traj.schedule(np.concatenate([[0, 0, 0], q0]), t=0.75, now=0.6)
    assert traj.end_time == 0.75 and np.allclose(traj(5.0)[:3], 0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        v = rng.normal(size=3)
        v *= min(1.0, 3.0 / np.linalg.norm(v))
        q = quat_from_rotvec(v)
        assert np.allclose(quat_to_rotvec(q), v, atol=1e-9)
        assert quat_angle(quat_from_mat(quat_to_mat(q)), q) < 1e-7
        assert quat_angle(slerp(q0, q, 1.0), q) < 1e-7


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"arm\.servo_hz: must be <= 500"):
        load_config(ArmConfig, {"type": "ur", "host": "10.0.0.2", "servo_hz": 1000}, prefix="arm")
    with pytest.raises(ConfigError, match=r"arm\.task: the twin arm needs 'task'"):
        load_config(ArmConfig, {"type": "twin"}, prefix="arm")
    with pytest.raises(ConfigError, match=r"arm\.action: .*action: joints"):
        load_config(ArmConfig, {"type": "so101", "serial_port": "/dev/ttyACM0"}, prefix="arm")
    with pytest.raises(ConfigError, match=r"arm\.limits\.workspace_min: .*below workspace_max"):
        load_config(
            ArmConfig,
            {
                "type": "twin",
                "task": "lift",
                "limits": {"workspace_min": [0, 0, 1], "workspace_max": [1, 1, 0.5]},
            },
            prefix="arm",
        )
    with pytest.raises(ConfigError, match=r"arm\.host"):
        load_config(ArmConfig, {"type": "franka"}, prefix="arm")
    with pytest.raises(ConfigError, match=r"unknown key 'servo_rate'.*servo_hz"):
        load_config(ArmConfig, {"type": "twin", "task": "lift", "servo_rate": 200}, prefix="arm")
    cfg = load_config(
        ArmConfig,
        {"type": "koch", "serial_port": "/dev/ttyUSB0", "action": "joints", "limits": {"max_joint_speed": 2}},
        prefix="arm",
    )
    assert cfg.limits.max_joint_speed == 2.0 and cfg.servo_hz == 125.0


@pytest.mark.parametrize("arm_type,extra", [("ur", "ur"), ("franka", "franka"), ("xarm", "xarm")])
def test_missing_vendor_sdk_is_a_one_line_install_hint(arm_type: str, extra: str) -> None:
    try:
        import_sdk(arm_type)
    except UserError as e:
        assert f"pip install 'robolearn[{extra}]'" in str(e) and "\n" not in str(e)
    else:
        pytest.skip(f"the {arm_type} SDK is installed here")


def test_missing_sdk_surfaces_from_the_controller_process() -> None:
    try:
        import rtde_control  # noqa: F401

        pytest.skip("ur-rtde is installed here")
    except ImportError:
        pass
    with pytest.raises(UserError, match=r"pip install 'robolearn\[ur\]'"):
        open_arm(ArmConfig(type="ur", host="127.0.0.1", connect_timeout_s=30))


def test_vendor_pose_conversions() -> None:
    from robolearn.hardware.arms.ur import pose_to_ur_pose, ur_pose_to_pose
    from robolearn.hardware.arms.xarm import pose_to_xarm_pose, quat_to_rpy, rpy_to_quat, xarm_pose_to_pose

    rng = np.random.default_rng(1)
    for _ in range(20):
        pos = rng.uniform(-0.8, 0.8, 3)
        q = quat_from_rotvec(rng.uniform(-1.5, 1.5, 3))
        pose = np.concatenate([pos, q])
        back = ur_pose_to_pose(pose_to_ur_pose(pose))
        assert np.allclose(back[:3], pos) and quat_angle(back[3:], q) < 1e-9
        back = xarm_pose_to_pose(pose_to_xarm_pose(pose))
        assert np.allclose(back[:3], pos) and quat_angle(back[3:], q) < 1e-7
    # xArm's fixed-axis roll-pitch-yaw: a half turn about x is the quaternion (1, 0, 0, 0).
    assert quat_angle(rpy_to_quat(np.array([np.pi, 0, 0])), np.array([1.0, 0, 0, 0])) < 1e-9
    assert np.allclose(quat_to_rpy(quat_from_rotvec(np.array([0, 0, 0.3]))), [0, 0, 0.3])
    assert np.allclose(pose_to_xarm_pose(np.array([0.3, 0, 0.2, 0, 0, 0, 1]))[:3], [300, 0, 200])


def test_twin_world_turns_targets_into_the_tasks_own_actions() -> None:
    from robolearn.hardware.twin import TwinWorldConfig, _World

    world = _World(TwinWorldConfig(task="lift", seed=0))
    try:
        pose = world.measured_pose()
        q = world.obs["robot0_joint_pos"].astype(np.float64)
        fk = world.fk(q)  # joint targets become pose targets through the model's kinematics
        assert np.allclose(fk[:3], pose[:3], atol=1e-5) and quat_angle(fk[3:], pose[3:]) < 1e-4
        world.apply(("pose", pose))
        assert np.allclose(world.action()[:6], 0, atol=1e-3)
        turn = quat_from_rotvec(np.array([0, 0, 0.25]))
        world.apply(("pose", np.concatenate([pose[:3] + [0.025, 0, -0.1], quat_mul(turn, pose[3:])])))
        world.apply(("grip", 1.0))
        a = world.action()  # the OSC goal lands on the target: delta / 0.05 m, rotation / 0.5 rad, clipped
        assert np.allclose(a, [0.5, 0, -1.0, 0, 0, 0.5, 1.0], atol=1e-3)
    finally:
        world.state.close()
        world.env.close()


# ----------------------------------------------------------------------------- the twin, across processes


@pytest.fixture(scope="module")
def twin():
    # stale_s: a loaded 2-core CI machine can starve the world process for a while.
    arm = open_arm(
        ArmConfig(type="twin", task="lift", seed=0, watchdog_s=0.4, stale_s=3.0, limits=SafetyLimits(**FAST))
    )
    yield arm
    arm.close()


@pytest.fixture(scope="module")
def sim():
    from robolearn.sim.env import make_env

    env = make_env("lift")
    yield env
    env.close()


def _pose(arm) -> np.ndarray:
    v, _, _ = arm.state()
    return np.concatenate([v["robot0_eef_pos"], v["robot0_eef_quat"]]).astype(np.float64)


def _keep_sending(arm, pose: np.ndarray, t: float, seconds: float) -> None:
    """Re-send one waypoint every 50 ms (a client that keeps talking, so the watchdog stays quiet)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        arm.schedule_waypoint(pose, t)
        time.sleep(0.05)


def _fresh(arm, limits: SafetyLimits | None = None, seed: int = 0) -> np.ndarray:
    arm.set_limits(limits or SafetyLimits(**FAST))
    arm.reset(seed)
    time.sleep(0.15)  # let the new limits' tick pass and the world publish
    return _pose(arm)


def test_twin_is_the_sim_task(twin, sim) -> None:
    from robolearn.sim.env import LOWDIM_KEYS

    feats = twin.features
    for k in LOWDIM_KEYS:
        assert feats[k].shape == sim.observation_space.spaces[k].shape and feats[k].dtype == "float32"
    assert feats["sim_state"].dtype == "float64"
    assert twin.action_feature.shape == (7,)
    twin.reset(5)
    obs, _ = sim.reset(seed=5)
    v, t_dev, t_host = twin.state()
    # Same seed, same initial state: the twin's world is the sim task itself.
    assert np.allclose(v["object"], obs["object"], atol=1e-5)
    assert np.allclose(v["sim_state"][1:], sim.get_state()[1:], atol=1e-6)
    assert twin.success() is False
    assert t_dev <= t_host <= time.monotonic() and time.monotonic() - t_dev < 0.5
    time.sleep(0.2)
    assert twin.state()[1] > t_dev  # the world keeps stepping and stamping


def test_twin_cameras_render_from_the_published_state(twin, sim) -> None:
    from robolearn.hardware.twin import TwinRenderer
    from robolearn.sim.env import make_env

    twin.reset(2)
    renderer = TwinRenderer("lift", twin.info["twin_shm"], twin.info["twin_layout"], ("agentview",), 32)
    reference = make_env("lift", cameras=("agentview",), image_size=32)
    try:
        compared = 0
        for _ in range(20):  # the world steps every 50 ms: compare where no step fell between the reads
            images, t, seq = renderer.render()
            values, _, seq_after = renderer.reader.read()
            if seq_after == seq:
                ref = reference.render_state(values["sim_state"])["agentview_image"]
                assert np.array_equal(images["agentview_image"], ref)
                compared += 1
        assert compared > 0
        assert images["agentview_image"].shape == (32, 32, 3) and images["agentview_image"].std() > 5
        assert abs(t - twin.state()[1]) < 1.0
    finally:
        renderer.close()
        reference.close()


def test_sim_actions_drive_the_twin_and_the_expert_lifts_the_cube(twin, sim) -> None:
    from robolearn.sim.experts import make_expert
    from robolearn.sim.tasks import load_task

    up = np.array([0, 0, 1.0, 0, 0, 0, -1.0])  # +z at full scale
    obs, _ = sim.reset(seed=0)
    for _ in range(6):
        sim_obs = sim.step(up)[0]
    sim_dz = sim_obs["robot0_eef_pos"][2] - obs["robot0_eef_pos"][2]
    p0 = _fresh(twin)
    assert np.allclose(p0[:3], obs["robot0_eef_pos"], atol=1e-5)
    t_last = twin.state()[1]
    for k in range(7):  # six actions, each sent on a new world state; then the state after the sixth
        while (state := twin.state())[1] == t_last:
            time.sleep(0.002)
        t_last = state[1]
        if k < 6:
            twin.send_action(up)
    # In real time an action can still miss its step by a few milliseconds, or a step be repeated.
    assert 0.5 * sim_dz < state[0]["robot0_eef_pos"][2] - p0[2] < 1.6 * sim_dz
    # The scripted expert, closed loop on the twin's published state, through the controller at 20 Hz.
    seed = 3
    twin.reset(seed)
    sim.reset(seed=seed)
    expert = make_expert(load_task("lift").expert, np.random.default_rng(seed))
    expert.reset(sim)
    t_last = 0.0
    for _ in range(150):
        while (state := twin.state())[1] == t_last:  # act on each new state the world publishes (20 Hz)
            time.sleep(0.002)
        v, t_last, _ = state
        twin.send_action(expert.act(sim, sim.set_state(v["sim_state"])))
        if twin.success():
            break
    assert twin.success() is True


def test_workspace_box_holds_the_arm_at_its_wall(twin) -> None:
    p0 = _fresh(twin)
    box = SafetyLimits(
        workspace_min=tuple(p0[:3] - [0.3, 0.3, 0.05]), workspace_max=tuple(p0[:3] + 0.3), **FAST
    )
    p0 = _fresh(twin, box)
    before = twin.status()["box_clips"]
    below = p0.copy()
    below[2] -= 0.2
    _keep_sending(twin, below, time.monotonic() + 0.4, 1.5)
    z = _pose(twin)[2]
    assert p0[2] - 0.05 - box.workspace_margin <= z < p0[2] - 0.03  # went down to the wall, not through it
    st = twin.status()
    assert st["status"] == "running" and st["box_clips"] > before


def test_speed_limit_caps_how_fast_the_arm_is_sent(twin) -> None:
    moved = {}
    for speed in (1.5, 0.08):
        p0 = _fresh(twin, SafetyLimits(max_linear_speed=speed, max_angular_speed=6.0))
        clamps = twin.status()["speed_clamps"]
        up = p0.copy()
        up[2] += 0.12
        _keep_sending(twin, up, time.monotonic() + 0.05, 0.5)  # asks for 2.4 m/s
        moved[speed] = _pose(twin)[2] - p0[2]
        assert twin.status()["speed_clamps"] > clamps
    assert 0.005 < moved[0.08] <= 0.08 * 0.55 + 0.005
    assert moved[1.5] > moved[0.08] + 0.02


def test_step_limit_stops_the_arm_on_a_jump(twin) -> None:
    p0 = _fresh(twin)
    far = p0.copy()
    far[0] += 0.3
    twin.schedule_waypoint(far, time.monotonic())  # at once: 0.3 m in one tick
    with pytest.raises(RigError, match=r"jumps 0\.\d+ m .* in one tick \(max_step 0\.1 m"):
        for _ in range(50):
            twin.state()
            time.sleep(0.02)
    assert np.linalg.norm(_pose_or(twin, p0)[:3] - p0[:3]) < 0.02  # stopped before it went anywhere
    with pytest.raises(RigError):
        twin.send_action(np.zeros(7))
    twin.reset(0)  # clears the fault
    twin.state()


def _pose_or(arm, default: np.ndarray) -> np.ndarray:
    """The pose, even while a fault is latched (read past the fault check)."""
    try:
        return _pose(arm)
    except RigError:
        vec, _, _ = arm._shm.read()
        off, _ = arm._layout["robot0_eef_pos"]
        return np.concatenate([vec[off : off + 3], default[3:]])


def test_joint_limit_stops_the_arm(twin) -> None:
    p0 = _fresh(twin)
    q0 = twin.state()[0]["robot0_joint_pos"].astype(np.float64)
    lo, hi = (np.array(x, dtype=np.float64) for x in twin.joint_limits)
    lo[0], hi[0] = q0[0] - 0.05, q0[0] + 0.05  # the base may turn 0.05 rad either way
    _fresh(twin, SafetyLimits(joint_min=lo.tolist(), joint_max=hi.tolist(), **FAST))
    side = p0.copy()
    side[1] += 0.25
    with pytest.raises(RigError, match=r"joint 0 at -?\d\.\d+ rad is outside its limits"):
        _keep_sending(twin, side, time.monotonic() + 0.6, 2.0)
    q = _pose_or(twin, p0)
    assert abs(q[1] - p0[1]) < 0.15  # stopped on the way
    _fresh(twin)


def test_watchdog_stops_the_arm_when_commands_stop(twin) -> None:
    p0 = _fresh(twin)
    up = p0.copy()
    up[2] += 0.2
    twin.schedule_waypoint(up, time.monotonic() + 2.0)  # a slow plan, then silence
    time.sleep(1.2)
    st = twin.status()
    assert st["status"] == "holding" and st["watchdog_stops"] >= 1
    z1 = _pose(twin)[2]
    time.sleep(0.4)
    z2 = _pose(twin)[2]
    assert z1 - p0[2] < 0.1 and abs(z2 - z1) < 0.004  # stopped about 0.4 s in, and stays stopped
    twin.send_action(np.array([0, 0, 0.5, 0, 0, 0, -1.0]))  # a new command moves it again
    time.sleep(0.05)
    assert twin.status()["status"] == "running"


def test_injected_action_latency_delays_the_twins_response(twin) -> None:
    def first_motion() -> float:
        z0 = _fresh(twin)[2]
        t0 = time.monotonic()
        while time.monotonic() - t0 < 2.0:
            twin.send_action(np.array([0, 0, 1.0, 0, 0, 0, -1.0]))
            if twin.state()[0]["robot0_eef_pos"][2] - z0 > 0.003:
                return time.monotonic() - t0
            time.sleep(0.01)
        raise AssertionError("the twin did not move")

    base = first_motion()
    twin.set_action_latency(0.4)
    try:
        delayed = first_motion()
    finally:
        twin.set_action_latency(0.0)
    assert 0.25 < delayed - base < 1.0  # 0.4 s, give or take the world's 50 ms ticks and a loaded machine


def test_input_errors_are_one_line(twin) -> None:
    with pytest.raises(UserError, match=r"takes actions of shape \(7,\), got \(6,\)"):
        twin.send_action(np.zeros(6))
    with pytest.raises(UserError, match="NaN"):
        twin.send_action(np.array([0, 0, np.nan, 0, 0, 0, 0]))
    with pytest.raises(UserError, match="joint space|pose space"):
        twin.schedule_joints(np.zeros(7), time.monotonic())


def test_ctrl_c_stops_the_arm_and_the_client_says_so(twin) -> None:
    """Last of the shared twin's tests: SIGINT (Ctrl-C reaches the whole process group) ends it."""
    twin.send_action(np.array([0, 0, 0.5, 0, 0, 0, -1.0]))
    world = twin.info["world_pid"]
    os.kill(twin.pid, signal.SIGINT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (_gone(twin.pid) and _gone(world)):
        time.sleep(0.05)
    with pytest.raises(RigError, match=r"controller process exited \(exit code 0\)"):
        twin.state()  # exit code 0: it left through its stop-and-disconnect path, not killed by the signal
    assert _gone(world)


_CLIENT = """
import sys, time
import numpy as np
from robolearn.hardware.arms import ArmConfig, open_arm
from robolearn.rigs import RigError
if __name__ == "__main__":
    arm = open_arm(ArmConfig(type="twin", task="lift", seed=0, stale_s=5.0))
    print(arm.pid, arm.info["world_pid"], flush=True)
    while True:
        try:
            arm.send_action(np.array([0, 0, 0.2, 0, 0, 0, -1.0]))
        except RigError as e:
            print(e, file=sys.stderr, flush=True)
        time.sleep(0.05)
"""


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return any(line.startswith("State:") and "Z" in line for line in f)
    except FileNotFoundError:
        return True


def test_sigkill_of_the_client_stops_the_arm_and_ends_its_processes(tmp_path: Path) -> None:
    script = tmp_path / "client.py"
    script.write_text(_CLIENT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True
    )
    try:
        line = proc.stdout.readline()
        controller, world = map(int, line.split())
        time.sleep(0.5)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (_gone(controller) and _gone(world)):
            time.sleep(0.1)
        assert _gone(controller) and _gone(world)
        err = proc.stderr.read()  # EOF once every process holding the pipe has exited
        assert re.search(r"robolearn arm controller: (client gone|terminated); arm stopped", err)
        assert "robolearn twin world: closed" in err
    finally:
        if proc.poll() is None:
            proc.kill()
