"""The MuJoCo twin's world: a sim task stepping in real time in its own process.

It stands where a real arm's controller box stands: the arm controller process sends it servo targets
(poses, joint positions, gripper commands) over a pipe, and it publishes the robot's and the objects'
state with its own timestamps into shared memory, where any process (the arm controller, a twin
camera) can read it. Each control tick (the sim task's rate, 20 Hz) it turns the latest target into
the task's own 7-d OSC_POSE action (the delta that puts the controller's goal exactly on the target),
so the robot moves under the very controller the task's demonstrations and policies were made with.
``action_latency_s`` holds every command back that long before it takes effect (for latency
calibration).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from robolearn.hardware.arms.interp import quat_conj, quat_mul, quat_to_rotvec
from robolearn.hardware.arms.shmstate import ShmState

# Appended after the named values: success (0/1), simulated time, steps since reset, overrun ticks.
STATUS_KEYS = ("success", "sim_time", "steps", "overruns")


@dataclass(frozen=True)
class TwinWorldConfig:
    task: str
    seed: int | None = None
    action_latency_s: float = 0.0
    # SCHED_FIFO priority of the world (0: normal scheduling). It stands in for an arm's own controller
    # box, which a busy host never starves: below the servo loop and the recorder's control loop.
    rt_priority: int = 0


def twin_layout(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, tuple[int, ...]]]:
    """Offsets of each key in the world's state vector."""
    out, off = {}, 0
    for k, shape in shapes.items():
        out[k] = (off, shape)
        off += int(np.prod(shape))
    for k in STATUS_KEYS:
        out[k] = (off, ())
        off += 1
    return out


def layout_size(layout: dict[str, tuple[int, tuple[int, ...]]]) -> int:
    return max(off + int(np.prod(shape)) for off, shape in layout.values())


def unpack(vec: np.ndarray, layout: dict[str, tuple[int, tuple[int, ...]]]) -> dict[str, np.ndarray]:
    return {k: vec[off : off + int(np.prod(shape))].reshape(shape) for k, (off, shape) in layout.items()}


class TwinStateReader:
    """Reads a running twin world's state from any process (e.g. a twin camera rendering it)."""

    def __init__(self, shm_name: str, layout: dict[str, tuple[int, tuple[int, ...]]]) -> None:
        self.layout = layout
        self._shm = ShmState(layout_size(layout), name=shm_name)

    def read(self) -> tuple[dict[str, np.ndarray], float, int]:
        """(values incl. ``sim_state``, world timestamp, sequence number)."""
        vec, t, seq = self._shm.read()
        return unpack(vec, self.layout), t, seq

    def close(self) -> None:
        self._shm.close()


class TwinRenderer:
    """Renders the twin's cameras from its published state, in any process (e.g. a camera process
    behind the camera interface): the task's own cameras, bit-identical to the simulator's images at
    that state (``SimEnv.render_state``), stamped with the world's time."""

    def __init__(
        self,
        task: str,
        shm_name: str,
        layout: dict[str, tuple[int, tuple[int, ...]]],
        cameras: tuple[str, ...],
        image_size: int = 84,
        depth: bool = False,
    ) -> None:
        from robolearn.sim.env import make_env

        self.reader = TwinStateReader(shm_name, layout)
        self.env = make_env(task, cameras=cameras, image_size=image_size, depth=depth)
        self.depth_scale = self.env.depth_scale

    def render(self) -> tuple[dict[str, np.ndarray], float, int]:
        """(``<cam>_image`` / ``<cam>_depth`` arrays, the world's timestamp, its step sequence number)."""
        values, t, seq = self.reader.read()
        return self.env.render_state(values["sim_state"]), t, seq

    def close(self) -> None:
        self.reader.close()
        self.env.close()


class _World:
    def __init__(self, cfg: TwinWorldConfig) -> None:
        import mujoco

        from robolearn.sim.env import CONTROL_FREQ, LOWDIM_KEYS, make_env

        self.mujoco = mujoco
        self.cfg = cfg
        self.env = make_env(cfg.task, seed=cfg.seed)
        self.period = 1.0 / CONTROL_FREQ
        self.keys = LOWDIM_KEYS
        self.obs, _ = self.env.reset(seed=cfg.seed)
        rs = self.env.robosuite_env
        robot = rs.robots[0]
        self.joint_qpos = np.asarray(robot._ref_joint_pos_indexes)
        self.eef_body = self.env.model.body(robot.robot_model.eef_name).id
        self.eef_site = int(robot.eef_site_id)
        jids = np.asarray(robot._ref_joint_indexes)
        self.joint_limits = (
            self.env.model.jnt_range[jids, 0].copy(),
            self.env.model.jnt_range[jids, 1].copy(),
        )
        self.scratch = mujoco.MjData(self.env.model)
        shapes = {k: tuple(self.obs[k].shape) for k in self.keys}
        shapes["sim_state"] = (len(self.env.get_state()),)
        self.layout = twin_layout(shapes)
        self.state = ShmState(layout_size(self.layout), create=True)
        self.target: np.ndarray | None = None  # pose (7) the OSC goal is put on
        self.grip = 0.0
        self.overruns = 0
        self.pending: deque[tuple[float, tuple]] = deque()
        self.publish()

    def publish(self) -> None:
        vec = np.zeros(layout_size(self.layout))
        for k in self.keys:
            off, shape = self.layout[k]
            vec[off : off + int(np.prod(shape))] = np.asarray(self.obs[k], dtype=np.float64).reshape(-1)
        off, shape = self.layout["sim_state"]
        vec[off : off + shape[0]] = self.env.get_state()
        vec[self.layout["success"][0]] = float(self.env.is_success())
        vec[self.layout["sim_time"][0]] = self.env.sim_time
        vec[self.layout["steps"][0]] = self.env.steps
        vec[self.layout["overruns"][0]] = self.overruns
        self.state.write(vec)

    def measured_pose(self) -> np.ndarray:
        return np.concatenate(
            [
                np.asarray(self.obs["robot0_eef_pos"], np.float64),
                np.asarray(self.obs["robot0_eef_quat"], np.float64),
            ]
        )

    def fk(self, q: np.ndarray) -> np.ndarray:
        """The eef pose at joints ``q`` (site position, hand-body quaternion, as the observations give them)."""
        d = self.scratch
        d.qpos[:] = self.env.data.qpos
        d.qpos[self.joint_qpos] = q
        self.mujoco.mj_kinematics(self.env.model, d)
        quat_wxyz = d.xquat[self.eef_body]
        return np.concatenate([d.site_xpos[self.eef_site], [*quat_wxyz[1:], quat_wxyz[0]]])

    def apply(self, msg: tuple) -> Any:
        kind = msg[0]
        if kind == "pose":
            self.target = np.asarray(msg[1], dtype=np.float64)
        elif kind == "joints":
            self.target = self.fk(np.asarray(msg[1], dtype=np.float64))
        elif kind == "grip":
            self.grip = float(msg[1])
        elif kind == "hold":
            self.target = self.measured_pose()
        return None

    def action(self) -> np.ndarray:
        """The task's 7-d action that sets the OSC goal on the target (zero motion without one)."""
        a = np.zeros(7)
        a[6] = self.grip
        if self.target is None:
            return a
        pose = self.measured_pose()
        a[:3] = (self.target[:3] - pose[:3]) / 0.05
        # Goal rotation = exp(0.5 a) @ current, in the world frame (robosuite's set_goal_orientation).
        dq = quat_mul(self.target[3:], quat_conj(pose[3:]))
        a[3:6] = quat_to_rotvec(dq) / 0.5
        return np.clip(a, -1.0, 1.0)

    def reset(self, seed: int | None) -> None:
        self.obs, _ = self.env.reset(seed=seed)
        self.target, self.grip = None, 0.0
        self.pending.clear()
        self.publish()

    def step(self) -> None:
        self.obs, *_ = self.env.step(self.action())
        self.publish()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run_world(cfg: TwinWorldConfig, conn: Connection) -> None:
    """The world process: step the task at its control rate until told to close or the parent goes."""
    from robolearn.hardware.arms.controller import die_with_parent

    die_with_parent()
    signal.signal(signal.SIGTERM, _interrupt)  # leave through the finally below, which frees the memory
    if cfg.rt_priority and hasattr(os, "SCHED_FIFO"):
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(cfg.rt_priority))
        except OSError:  # no permission: normal scheduling (the controller already said so)
            pass
    parent = os.getppid()
    try:
        world = _World(cfg)
    except Exception as e:  # noqa: BLE001 - reported to the parent as one line
        conn.send(("error", f"twin world for task {cfg.task!r} failed to start: {e}"))
        return
    conn.send(
        (
            "ready",
            {
                "shm": world.state.name,
                "layout": world.layout,
                "joint_limits": world.joint_limits,
                "period": world.period,
            },
        )
    )
    latency = cfg.action_latency_s
    t_next = time.monotonic()
    try:
        while True:
            t_next += world.period
            # Wait for the tick, taking commands as they come (each stamped with its send time).
            while True:
                delay = t_next - time.monotonic()
                if conn.poll(max(delay, 0.0)):
                    msg = conn.recv()
                    if msg[0] == "close":
                        return
                    if msg[0] == "latency":  # takes effect at once, for commands sent from now on
                        latency = float(msg[1])
                        continue
                    if msg[0] == "reset":
                        world.reset(msg[1])
                        conn.send(("reset", msg[1]))
                        t_next = time.monotonic() + world.period
                        continue
                    world.pending.append((msg[-1] + latency, msg[:-1]))
                    continue
                if delay <= 0:
                    break
            now = time.monotonic()
            while world.pending and world.pending[0][0] <= now:
                world.apply(world.pending.popleft()[1])
            if now - t_next > world.period:
                world.overruns += 1
                t_next = now
            world.step()
            if os.getppid() != parent:
                return
    except (EOFError, OSError, KeyboardInterrupt):
        return  # the controller is gone: nothing drives the twin any more
    finally:
        world.state.close()
        world.env.close()
        print("robolearn twin world: closed", file=sys.stderr, flush=True)
