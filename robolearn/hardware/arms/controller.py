"""The servo-rate arm controller process, and the client a rig uses to drive it.

``open_arm(cfg)`` starts the controller in its own process (spawn). At ``servo_hz`` (125-500 Hz) it
reads the arm, takes the client's commands (actions, timestamped waypoints, gripper), samples the
planned trajectory, applies the safety limits and streams the result to the driver. It publishes the
arm's state and its own status into shared memory, which the client reads without ever blocking it.

Safety, on every tick: commanded poses are clipped into the workspace box and rate-limited to the
maximum linear/angular (or joint) speed; a command asking for more than ``max_step`` in one tick, a
measured pose outside the box (plus margin), a joint outside its limits, stale arm state or a driver
error stops the arm and latches a fault, which the client raises as a one-line ``RigError``. With no
command for ``watchdog_s`` the arm stops and holds (the next command moves it again). The arm is
stopped and disconnected whenever the loop ends: ``close()``, an error, SIGINT/SIGTERM, or the client
process dying (its pipe closes; the kernel's parent-death signal backs that up).
"""

from __future__ import annotations

import atexit
import ctypes
import gc
import multiprocessing as mp
import os
import signal
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from robolearn.errors import UserError
from robolearn.features import Feature
from robolearn.hardware.arms.base import Arm, ArmConfig, ArmState, SafetyLimits, make_driver
from robolearn.hardware.arms.interp import (
    JointTrajectory,
    PoseTrajectory,
    ScalarTrajectory,
    as_pose,
    pose_distance,
    pose_step_toward,
    quat_from_rotvec,
    quat_mul,
)
from robolearn.hardware.arms.shmstate import ShmState
from robolearn.rigs.base import RigError

# Controller status codes, published with the state.
IDLE, RUNNING, HOLDING, FAULT, CLOSED = 0, 1, 2, 3, 4
STATUS_NAMES = {IDLE: "idle", RUNNING: "running", HOLDING: "holding", FAULT: "fault", CLOSED: "closed"}
# Published after the arm's values: status, success (-1 unknown), device time, host read time, ticks,
# overrun ticks, ticks clipped to the box, ticks slowed to the speed limits, watchdog stops.
STATUS_FIELDS = (
    "status",
    "success",
    "t_device",
    "t_host",
    "ticks",
    "overruns",
    "box_clips",
    "speed_clamps",
    "watchdog_stops",
)
_PERIOD_RING = 1 << 16


def die_with_parent() -> None:
    """Ask the kernel to SIGTERM this process when its parent dies (Linux), so no arm is left running."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _realtime(priority: int) -> None:
    """Run the servo loop under SCHED_FIFO where allowed; processes it starts get normal scheduling back
    (reset-on-fork) unless they ask for their own (the twin's world: see TwinWorldConfig.rt_priority)."""
    if not priority or not hasattr(os, "SCHED_FIFO"):
        return
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(priority))
    except (PermissionError, OSError):
        print(
            "robolearn arm controller: no permission for real-time scheduling (SCHED_FIFO); the servo loop "
            "runs with normal priority",
            file=sys.stderr,
            flush=True,
        )


class _Terminate(BaseException):
    """SIGTERM: leave the servo loop through its ``finally`` (which stops the arm)."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminate()


@dataclass
class _Layout:
    keys: dict[str, tuple[int, tuple[int, ...]]]
    n_values: int

    @classmethod
    def of(cls, features: dict[str, Feature]) -> _Layout:
        keys, off = {}, 0
        for k, f in features.items():
            keys[k] = (off, f.shape)
            off += int(np.prod(f.shape))
        return cls(keys, off)

    @property
    def size(self) -> int:
        return self.n_values + len(STATUS_FIELDS)

    def pack(self, values: dict[str, np.ndarray], status: list[float]) -> np.ndarray:
        vec = np.empty(self.size)
        for k, (off, shape) in self.keys.items():
            vec[off : off + int(np.prod(shape))] = np.asarray(values[k], dtype=np.float64).reshape(-1)
        vec[self.n_values :] = status
        return vec


class ServoLoop:
    """The controller's loop; runs inside the controller process around a connected driver."""

    def __init__(self, cfg: ArmConfig, driver: Arm, shm: ShmState, layout: _Layout, conn: Connection) -> None:
        self.cfg, self.driver, self.shm, self.layout, self.conn = cfg, driver, shm, layout, conn
        self.period = 1.0 / cfg.servo_hz
        self.joint_space = cfg.action == "joints"
        self.set_limits(cfg.limits)
        self.status = IDLE
        self.fault = ""
        self.counters = dict.fromkeys(("ticks", "overruns", "box_clips", "speed_clamps", "watchdog_stops"), 0)
        self.periods = np.zeros(_PERIOD_RING)
        self.work = np.zeros(_PERIOD_RING)  # per tick: wake-up to state published (s)
        self.late = np.zeros(_PERIOD_RING)  # per tick: wake-up after the tick's due time (s)
        self.last_cmd_time = 0.0
        self.traj: PoseTrajectory | JointTrajectory | None = None
        self.grip_traj: ScalarTrajectory | None = None
        self.cmd: np.ndarray | None = None  # last commanded pose/joints (after the limits)
        self.prev_raw: np.ndarray | None = None
        self.state: ArmState = driver.read()
        self.t_host = time.monotonic()

    # ---------------------------------------------------------------- helpers
    def set_limits(self, lim: SafetyLimits) -> None:
        self.lim = lim
        box = lim.workspace_min is not None
        self.box = (np.asarray(lim.workspace_min), np.asarray(lim.workspace_max)) if box else None
        if lim.joint_min is not None:
            self.jlim: tuple[np.ndarray, np.ndarray] | None = (
                np.asarray(lim.joint_min),
                np.asarray(lim.joint_max),
            )
        else:
            self.jlim = self.driver.joint_limits

    def measured(self) -> np.ndarray:
        v = self.state.values
        if self.joint_space:
            return np.asarray(v["robot0_joint_pos"], dtype=np.float64)
        return np.concatenate(
            [np.asarray(v["robot0_eef_pos"], np.float64), np.asarray(v["robot0_eef_quat"], np.float64)]
        )

    def trip(self, message: str) -> None:
        """Stop the arm and latch a fault with ``message``."""
        if self.status == FAULT:
            return
        self.status, self.fault = FAULT, message
        print(f"robolearn arm controller: {message}; arm stopped", file=sys.stderr, flush=True)
        try:
            self.driver.stop()
        except Exception as e:  # noqa: BLE001 - the fault is already the report
            print(f"robolearn arm controller: stop failed: {e}", file=sys.stderr, flush=True)

    def hold(self) -> None:
        self.driver.stop()
        self.status = HOLDING
        self.traj = None

    def _start(self, now: float) -> None:
        """Begin (or resume) moving: plans start from where the arm is."""
        if self.traj is None:
            start = self.measured()
            self.traj = (JointTrajectory if self.joint_space else PoseTrajectory)(now, start)
            self.cmd = start.copy()
            self.prev_raw = start.copy()
        self.status = RUNNING

    # ---------------------------------------------------------------- commands
    def handle(self, msg: tuple, now: float) -> bool:
        """Apply one client message; False when the client asked to close."""
        kind = msg[0]
        if kind == "close":
            return False
        if kind == "stats":
            self.conn.send(
                (
                    "stats",
                    {
                        **self.counters,
                        "periods": self.periods[: min(self.counters["ticks"], _PERIOD_RING)].copy(),
                        "work": self.work[: min(self.counters["ticks"], _PERIOD_RING)].copy(),
                        "late": self.late[: min(self.counters["ticks"], _PERIOD_RING)].copy(),
                    },
                )
            )
            return True
        if kind == "reset":
            try:
                self.driver.reset(msg[1])
                self.state = self.driver.read()
                self.status, self.fault, self.traj, self.grip_traj = IDLE, "", None, None
                self.t_host = time.monotonic()
                self.publish()  # the client reads the new episode's state as soon as reset() returns
                self.conn.send(("reset", None))
            except Exception as e:  # noqa: BLE001 - reported to the client as one line
                self.conn.send(("reset", f"{type(e).__name__}: {e}"))
            return True
        if kind == "latency":
            self.driver.set_action_latency(msg[1])  # type: ignore[attr-defined] - the twin's (client checks)
            return True
        if kind == "limits":
            self.set_limits(msg[1])
            return True
        if kind == "clear":
            if self.status == FAULT:
                self.status, self.fault, self.traj = IDLE, "", None
            return True
        if kind == "stop":
            if self.status != FAULT:
                self.hold()
            return True
        if self.status == FAULT:
            return True  # the client raises before sending; late commands are dropped
        self.last_cmd_time = now
        self._start(now)
        t = msg[2] if msg[2] is not None else now
        if kind == "action":
            self._action(np.asarray(msg[1], dtype=np.float64), t, now)
        elif kind == "waypoint":
            self.traj.schedule(as_pose(msg[1]), t, now)
        elif kind == "joints":
            self.traj.schedule(np.asarray(msg[1], dtype=np.float64), t, now)
        elif kind == "gripper":
            self._grip(float(msg[1]), t, now)
        return True

    def _grip(self, close: float, t: float, now: float) -> None:
        """The gripper is left alone until a command names it (a pose plan must not move it)."""
        if self.grip_traj is None:
            self.grip_traj = ScalarTrajectory(now, np.array([close]))
        self.grip_traj.schedule(np.array([close]), t, now)

    def _action(self, a: np.ndarray, t: float, now: float) -> None:
        cfg = self.cfg
        grip = float(np.clip(a[-1], -1.0, 1.0))
        if cfg.action == "delta_pose":
            a = np.clip(a, -1.0, 1.0)  # as the sim task clips its actions
            base = self.measured()  # relative to where the arm is, as the sim's OSC controller takes it
            target = np.concatenate(
                [
                    base[:3] + cfg.pos_scale * a[:3],
                    quat_mul(quat_from_rotvec(cfg.rot_scale * a[3:6]), base[3:]),
                ]
            )
        elif cfg.action == "abs_pose":
            target = as_pose(a[:6])
        else:
            target = a[:-1]
        self.traj.schedule(target, t, now)
        self._grip(grip, t, now)

    # ---------------------------------------------------------------- one tick
    def check_measured(self) -> None:
        v = self.state.values
        if self.jlim is not None and "robot0_joint_pos" in v:
            q = np.asarray(v["robot0_joint_pos"], dtype=np.float64)
            lo, hi = self.jlim
            bad = np.flatnonzero((q < lo) | (q > hi))
            if bad.size:
                j = int(bad[0])
                self.trip(f"joint {j} at {q[j]:.3f} rad is outside its limits [{lo[j]:.3f}, {hi[j]:.3f}]")
                return
        if self.box is not None and "robot0_eef_pos" in v:
            p = np.asarray(v["robot0_eef_pos"], dtype=np.float64)
            m = self.lim.workspace_margin
            if np.any(p < self.box[0] - m) or np.any(p > self.box[1] + m):
                self.trip(
                    f"end effector at {np.round(p, 3).tolist()} left the workspace box "
                    f"{list(self.lim.workspace_min)}..{list(self.lim.workspace_max)} (margin {m} m)"
                )

    def command(self, now: float) -> None:
        raw = self.traj(now)
        lim = self.lim
        if self.joint_space:
            asked = float(np.max(np.abs(raw - self.prev_raw)))
            if asked > lim.max_joint_step:
                self.trip(
                    f"joint command jumps {asked:.3f} rad in one tick (max_joint_step {lim.max_joint_step})"
                )
                return
            target = np.clip(raw, *self.jlim) if self.jlim is not None else raw
            step = np.clip(
                target - self.cmd, -lim.max_joint_speed * self.period, lim.max_joint_speed * self.period
            )
            if not np.allclose(step, target - self.cmd):
                self.counters["speed_clamps"] += 1
            self.cmd = self.cmd + step
            self.driver.servo_joints(self.cmd, now + self.period)
        else:
            lin, ang = pose_distance(raw, self.prev_raw)
            if lin > lim.max_step or ang > lim.max_step_rad:
                self.trip(
                    f"pose command jumps {lin:.3f} m / {ang:.3f} rad in one tick "
                    f"(max_step {lim.max_step} m / max_step_rad {lim.max_step_rad} rad)"
                )
                return
            target = raw.copy()
            if self.box is not None:
                target[:3] = np.clip(raw[:3], *self.box)
                if not np.array_equal(target[:3], raw[:3]):
                    self.counters["box_clips"] += 1
            new = pose_step_toward(
                self.cmd, target, lim.max_linear_speed * self.period, lim.max_angular_speed * self.period
            )
            if not np.array_equal(new, target):
                self.counters["speed_clamps"] += 1
            self.cmd = new
            self.driver.servo_pose(self.cmd, now + self.period)
        self.prev_raw = raw
        if self.grip_traj is not None:
            self.driver.gripper(float(self.grip_traj(now)[0]))

    def tick(self, now: float) -> None:
        self.state = self.driver.read()
        self.t_host = time.monotonic()
        age = self.t_host - self.state.t_device
        if self.status != FAULT and age > self.cfg.stale_s:  # moving or not: the state must stay fresh
            self.trip(f"arm state is {age:.2f} s old (stale_s {self.cfg.stale_s}): the arm stopped reporting")
        elif self.status == RUNNING:
            if now - self.last_cmd_time > self.cfg.watchdog_s:
                self.counters["watchdog_stops"] += 1
                print(
                    f"robolearn arm controller: no command for {now - self.last_cmd_time:.2f} s "
                    f"(watchdog_s {self.cfg.watchdog_s}); arm stopped",
                    file=sys.stderr,
                    flush=True,
                )
                self.hold()
            else:
                self.check_measured()
                if self.status == RUNNING:
                    self.command(now)

    def publish(self) -> None:
        st = self.state
        success = -1.0 if st.success is None else float(st.success)
        c = self.counters
        status = [
            self.status,
            success,
            st.t_device,
            self.t_host,
            c["ticks"],
            c["overruns"],
            c["box_clips"],
            c["speed_clamps"],
            c["watchdog_stops"],
        ]
        self.shm.write(self.layout.pack(st.values, status), text=self.fault)

    def run(self) -> None:
        t_next = time.monotonic()
        t_last = t_next
        while True:
            t_next += self.period
            delay = t_next - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            now = time.monotonic()
            if now - t_next > self.period:  # fell a whole tick behind: count it and re-phase
                self.counters["overruns"] += 1
                t_next = now
            slot = self.counters["ticks"] % _PERIOD_RING
            self.periods[slot] = now - t_last
            self.late[slot] = now - t_next
            t_last = now
            self.counters["ticks"] += 1
            while self.conn.poll():  # EOFError here: the client is gone
                if not self.handle(self.conn.recv(), now):
                    return
            try:
                self.tick(now)
            except (UserError, RuntimeError, OSError, ValueError) as e:
                self.trip(f"{self.cfg.type} arm error: {e}")
            self.publish()
            self.work[slot] = time.monotonic() - now


def controller_main(cfg: ArmConfig, conn: Connection) -> None:
    """Entry point of the controller process."""
    die_with_parent()
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, _on_sigterm)  # Ctrl-C in the terminal reaches the whole process group
    _realtime(cfg.rt_priority)
    driver = make_driver(cfg)
    try:
        driver.connect()
    except BaseException as e:  # noqa: BLE001 - one line back to the client
        msg = (
            str(e)
            if isinstance(e, UserError)
            else f"{cfg.type} arm failed to connect: {type(e).__name__}: {e}"
        )
        try:
            driver.disconnect()
        except Exception:  # noqa: BLE001
            pass
        conn.send(("error", msg, isinstance(e, UserError)))
        return
    shm = None
    why = "closed"
    try:
        layout = _Layout.of(driver.features)
        shm = ShmState(layout.size, create=True)
        loop = ServoLoop(cfg, driver, shm, layout, conn)
        loop.publish()
        # Everything imported so far (the driver's SDK, MuJoCo for the twin...) out of the collector's
        # sight: a full collection over those objects stalls a servo tick for ~30 ms.
        gc.collect()
        gc.freeze()
        jl = driver.joint_limits
        conn.send(
            (
                "ready",
                {
                    "shm": shm.name,
                    "features": driver.features,
                    "layout": layout.keys,
                    "n_values": layout.n_values,
                    "joint_limits": jl,
                    **driver.extra_info(),
                },
            )
        )
        loop.run()
    except (EOFError, BrokenPipeError, ConnectionResetError):
        why = "client gone"
    except _Terminate:
        why = "terminated"
    except Exception as e:  # noqa: BLE001 - printed, then the arm is stopped below
        why = f"error: {type(e).__name__}: {e}"
    finally:
        # Stopping must not be cut short by a second signal (the parent-death SIGTERM often follows EOF).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            driver.stop()
            print(f"robolearn arm controller: {why}; arm stopped", file=sys.stderr, flush=True)
        except Exception as e:  # noqa: BLE001
            print(
                f"robolearn arm controller: {why}; stopping the arm failed: {e}", file=sys.stderr, flush=True
            )
        try:
            driver.disconnect()
        finally:
            if shm is not None:
                vec, _, _ = shm.read()
                i = -len(STATUS_FIELDS) + STATUS_FIELDS.index("status")
                # A latched fault stays what the client reads: it names the cause, "exited" does not.
                if vec[i] != FAULT and why.startswith("error"):
                    vec[i] = FAULT
                    shm.write(vec, text=f"{cfg.type} arm controller {why}")
                elif vec[i] != FAULT:
                    vec[i] = CLOSED
                    shm.write(vec)
                shm.close()


# ----------------------------------------------------------------------------- the client


class ArmClient:
    """What a rig holds: the controller process of one arm, and its state.

    Every method raises :class:`~robolearn.rigs.RigError` (one line) once the controller has faulted,
    stalled or exited. Times are ``time.monotonic()`` seconds (the clock every process here shares)."""

    def __init__(self, cfg: ArmConfig, proc: Any, conn: Connection, ready: dict[str, Any]) -> None:
        self.cfg = cfg
        self._proc, self._conn = proc, conn
        self._features: dict[str, Feature] = ready["features"]
        self._layout = ready["layout"]
        self._n = ready["n_values"]
        self.joint_limits = ready["joint_limits"]
        self.info = {k: v for k, v in ready.items() if k not in ("features", "layout", "n_values", "shm")}
        self._shm = ShmState(self._n + len(STATUS_FIELDS), name=ready["shm"])
        self._closed = False

    # ---------------------------------------------------------------- declaration
    @property
    def features(self) -> dict[str, Feature]:
        return dict(self._features)

    @property
    def action_feature(self) -> Feature:
        if self.cfg.action == "delta_pose":
            return Feature((7,), "float32", names=("dx", "dy", "dz", "droll", "dpitch", "dyaw", "grip"))
        if self.cfg.action == "abs_pose":
            return Feature((7,), "float32", names=("x", "y", "z", "rx", "ry", "rz", "grip"))
        dof = self._features["robot0_joint_pos"].shape[0]
        return Feature((dof + 1,), "float32", names=tuple(f"joint{i}" for i in range(dof)) + ("grip",))

    @property
    def pid(self) -> int:
        return self._proc.pid

    # ---------------------------------------------------------------- state
    def _raw(self) -> tuple[np.ndarray, float]:
        if self._closed:
            raise RigError(f"{self.cfg.type} arm: the client is closed")
        vec, t_write, seq = self._shm.read()
        status = vec[self._n + STATUS_FIELDS.index("status")]
        if status == FAULT:
            raise RigError(f"{self.cfg.type} arm: {self._shm.text()}")
        if status == CLOSED or not self._proc.is_alive():
            raise RigError(
                f"{self.cfg.type} arm: the controller process exited (exit code {self._proc.exitcode})"
            )
        age = time.monotonic() - t_write
        if age > self.cfg.stale_s:
            raise RigError(
                f"{self.cfg.type} arm: the controller published nothing for {age:.2f} s "
                f"(stale_s {self.cfg.stale_s}); it stalled"
            )
        return vec, t_write

    def state(self) -> tuple[dict[str, np.ndarray], float, float]:
        """(values by key, device time, host receive time) of the latest reading."""
        vec, _ = self._raw()
        values = {}
        for k, (off, shape) in self._layout.items():
            f = self._features[k]
            values[k] = vec[off : off + int(np.prod(shape))].reshape(shape).astype(f.dtype)
        st = vec[self._n :]
        return values, float(st[STATUS_FIELDS.index("t_device")]), float(st[STATUS_FIELDS.index("t_host")])

    def status(self) -> dict[str, Any]:
        """The controller's status name and counters (never raises for a fault)."""
        vec, _, _ = self._shm.read()
        st = dict(zip(STATUS_FIELDS, vec[self._n :].tolist(), strict=True))
        st["status"] = STATUS_NAMES.get(int(st["status"]), "?")
        st["fault"] = self._shm.text()
        return st

    def success(self) -> bool | None:
        """The twin's task success; None for real arms."""
        vec, _ = self._raw()
        s = vec[self._n + STATUS_FIELDS.index("success")]
        return None if s < 0 else bool(s > 0.5)

    # ---------------------------------------------------------------- commands
    def _send(self, *msg: Any) -> None:
        self._raw()  # raise for a fault before commanding
        try:
            self._conn.send(msg)
        except (BrokenPipeError, OSError):
            raise RigError(f"{self.cfg.type} arm: the controller process is gone") from None

    def send_action(self, action: np.ndarray, t: float | None = None) -> None:
        """One control tick's action in the configured mode (``action_feature``), effective at ``t``
        (``time.monotonic()``; default at once)."""
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        want = self.action_feature.shape
        if a.shape != want:
            raise UserError(
                f"{self.cfg.type} arm ({self.cfg.action}) takes actions of shape {want}, got {a.shape}"
            )
        if not np.all(np.isfinite(a)):
            raise UserError(f"{self.cfg.type} arm: action has NaN or infinite entries: {a.tolist()}")
        self._send("action", a, t)

    def schedule_waypoint(self, pose: np.ndarray, t: float) -> None:
        """Be at ``pose`` (7: xyz + quaternion xyzw, or 6: xyz + rotation vector) at time ``t``."""
        if self.cfg.action == "joints":
            raise UserError(f"{self.cfg.type} arm runs in joint space (action: joints); use schedule_joints")
        self._send("waypoint", as_pose(pose), float(t))

    def schedule_joints(self, q: np.ndarray, t: float) -> None:
        """Be at joint positions ``q`` (radians) at time ``t`` (joint-space arms)."""
        if self.cfg.action != "joints":
            raise UserError(f"{self.cfg.type} arm runs in pose space (action: {self.cfg.action})")
        self._send("joints", np.asarray(q, dtype=np.float64), float(t))

    def schedule_gripper(self, width: float, t: float) -> None:
        """Open the gripper to ``width`` metres at time ``t``."""
        close = 1.0 - 2.0 * float(np.clip(width / self.cfg.gripper_max_width, 0.0, 1.0))
        self._send("gripper", close, float(t))

    def stop(self) -> None:
        """Stop moving and hold here; the next command moves the arm again."""
        self._send("stop")

    def set_limits(self, limits: SafetyLimits) -> None:
        """Replace the safety limits from the next tick on (e.g. tighter ones near a fixture)."""
        from robolearn.config import check_config

        check_config(limits, "arm.limits")
        self._send_raw(("limits", limits))

    def set_action_latency(self, seconds: float) -> None:
        """The twin: delay every command by ``seconds`` before it acts (for latency calibration)."""
        if self.cfg.type != "twin":
            raise UserError(f"action latency is injected into the twin only, not a {self.cfg.type} arm")
        if not 0.0 <= seconds <= 2.0:
            raise UserError(f"action latency must be within 0..2 s, got {seconds}")
        self._send_raw(("latency", float(seconds)))

    def _send_raw(self, msg: tuple) -> None:
        try:
            self._conn.send(msg)
        except (BrokenPipeError, OSError):
            raise RigError(f"{self.cfg.type} arm: the controller process is gone") from None

    def clear_fault(self) -> None:
        """Accept a latched fault after inspecting it (the arm stays stopped until commanded)."""
        self._conn.send(("clear",))

    def reset(self, seed: int | None = None) -> None:
        """The twin: a new episode's initial state (``seed`` as the sim task's). Clears faults."""
        if self._closed or not self._proc.is_alive():
            raise RigError(f"{self.cfg.type} arm: the controller process is not running")
        self._conn.send(("reset", seed))
        reply = self._reply("reset", self.cfg.connect_timeout_s)
        if reply is not None:
            raise RigError(f"{self.cfg.type} arm: reset failed: {reply}")

    def stats(self) -> dict[str, Any]:
        """Counters and, per recent servo tick (seconds): its period, its work (wake-up to state
        published) and its wake-up lateness."""
        self._conn.send(("stats",))
        return self._reply("stats", 10.0)

    def _reply(self, kind: str, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._conn.poll(0.05):
                k, value = self._conn.recv()
                if k == kind:
                    return value
            elif not self._proc.is_alive():
                break
        raise RigError(f"{self.cfg.type} arm: the controller did not answer {kind!r} in {timeout:.0f} s")

    def close(self) -> None:
        """Stop the arm, disconnect it and end the controller. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self._conn.send(("close",))
        except (BrokenPipeError, OSError):
            pass
        atexit.unregister(self.close)
        self._proc.join(10.0)
        if self._proc.is_alive():  # a wedged controller: SIGTERM still runs its stop-the-arm path
            self._proc.terminate()
            self._proc.join(5.0)
        self._shm.close()
        self._conn.close()

    def __enter__(self) -> ArmClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self.close()


def open_arm(cfg: ArmConfig) -> ArmClient:
    """Start the controller process for ``cfg`` and connect the arm; returns once it is servoing.

    A missing vendor SDK or a bad setting is a ``UserError``; an arm that does not answer a ``RigError``."""
    from robolearn.config import check_config

    check_config(cfg, "arm")
    ctx = mp.get_context("spawn")
    conn, child = ctx.Pipe()
    proc = ctx.Process(target=controller_main, args=(cfg, child), name=f"robolearn-arm-{cfg.type}")
    proc.start()
    child.close()
    try:
        if not conn.poll(cfg.connect_timeout_s):
            raise RigError(f"{cfg.type} arm: the controller did not come up in {cfg.connect_timeout_s} s")
        msg = conn.recv()
    except EOFError:
        proc.join(5.0)
        raise RigError(
            f"{cfg.type} arm: the controller process died while starting (exit code {proc.exitcode})"
        ) from None
    except BaseException:
        proc.terminate()
        proc.join(5.0)
        raise
    if msg[0] == "error":
        proc.join(10.0)
        raise (UserError if msg[2] else RigError)(msg[1])
    client = ArmClient(cfg, proc, conn, msg[1])
    # The controller is not a daemon (it has the twin world as a child), so multiprocessing's exit hook
    # would wait for it forever if the client were left open; close it first (atexit runs LIFO).
    atexit.register(client.close)
    return client


__all__ = ["ArmClient", "ServoLoop", "controller_main", "die_with_parent", "open_arm"]
