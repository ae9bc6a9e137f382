"""The arm driver interface and the arm section of a rig file.

A driver (:class:`Arm`) talks to one arm through its vendor SDK and lives inside the controller
process (:mod:`robolearn.hardware.arms.controller`), which calls it at the servo rate: read the state,
send the next servo target (to be reached at a given time), command the gripper, stop. Everything
above the driver (interpolation, safety limits, the watchdog) is the controller's, the same for every
arm. Drivers import their SDK only in ``connect()``, so configs validate and tests run without it.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from robolearn.errors import ConfigError, UserError
from robolearn.features import Feature

ArmType = Literal["ur", "franka", "xarm", "so100", "so101", "koch", "twin"]
ActionMode = Literal["delta_pose", "abs_pose", "joints"]

# The optional extra that installs each driver's SDK: (import name, pip requirement, extra name).
SDKS: dict[str, tuple[str, str, str]] = {
    "ur": ("rtde_control", "ur-rtde", "ur"),
    "franka": ("franky", "franky-control", "franka"),
    "xarm": ("xarm.wrapper", "xarm-python-sdk", "xarm"),
    "so100": ("scservo_sdk", "feetech-servo-sdk", "feetech"),
    "so101": ("scservo_sdk", "feetech-servo-sdk", "feetech"),
    "koch": ("dynamixel_sdk", "dynamixel-sdk", "dynamixel"),
}


def import_sdk(arm_type: str) -> Any:
    """The SDK module of ``arm_type``; a missing one is a one-line ``UserError`` with the install command."""
    module, requirement, extra = SDKS[arm_type]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise UserError(
            f"the {arm_type} arm driver needs {requirement} ({e.name or module} is not installed); "
            f"install it with: pip install 'robolearn[{extra}]'"
        ) from None


@dataclass
class SafetyLimits:
    """What the controller enforces on every servo tick. Lengths in metres, angles in radians.

    Commanded poses are clipped into the workspace box and their speed is capped at the maximum linear
    and angular speeds (a far waypoint is approached at those speeds). A command that asks for more
    than ``max_step`` / ``max_step_rad`` in one tick (a jump: a waypoint in the past, a wild action) or
    a measured pose or joint outside its limits stops the arm and latches a fault."""

    workspace_min: tuple[float, float, float] | None = None
    workspace_max: tuple[float, float, float] | None = None
    workspace_margin: float = field(default=0.03, metadata={"min": 0.0})  # measured pose may overshoot this
    max_linear_speed: float = field(default=0.25, metadata={"gt": 0.0})  # m/s
    max_angular_speed: float = field(default=1.0, metadata={"gt": 0.0})  # rad/s
    # A delta action of the sim tasks' scale asks for up to 0.087 m / 0.87 rad at once; more is a jump.
    max_step: float = field(default=0.1, metadata={"gt": 0.0})  # m per servo tick asked for
    max_step_rad: float = field(default=1.5, metadata={"gt": 0.0})  # rad per servo tick asked for
    joint_min: list[float] | None = None  # default: the driver's own limits
    joint_max: list[float] | None = None
    max_joint_speed: float = field(default=1.0, metadata={"gt": 0.0})  # rad/s (joint commands)
    max_joint_step: float = field(default=0.2, metadata={"gt": 0.0})  # rad per servo tick asked for

    def validate(self) -> None:
        if (self.workspace_min is None) != (self.workspace_max is None):
            raise ConfigError("give both workspace_min and workspace_max, or neither", key="workspace_min")
        if self.workspace_min is not None and not all(
            a < b for a, b in zip(self.workspace_min, self.workspace_max, strict=True)
        ):
            raise ConfigError(
                f"workspace_min {list(self.workspace_min)} must be below workspace_max "
                f"{list(self.workspace_max)} on every axis",
                key="workspace_min",
            )
        if (self.joint_min is None) != (self.joint_max is None):
            raise ConfigError("give both joint_min and joint_max, or neither", key="joint_min")
        if self.joint_min is not None:
            if len(self.joint_min) != len(self.joint_max):
                raise ConfigError(
                    f"joint_min has {len(self.joint_min)} entries, joint_max {len(self.joint_max)}",
                    key="joint_min",
                )
            bad = [i for i, (a, b) in enumerate(zip(self.joint_min, self.joint_max, strict=True)) if a >= b]
            if bad:
                raise ConfigError(f"joint_min must be below joint_max (joint {bad[0]})", key="joint_min")


@dataclass
class ArmConfig:
    """The ``arm:`` section of a rig file (read by :func:`robolearn.config.load_config`)."""

    type: ArmType
    host: str | None = None  # UR / Franka / xArm controller address
    port: int | None = None
    serial_port: str | None = None  # SO-100/SO-101/Koch bus, e.g. /dev/ttyACM0
    baudrate: int = field(default=1_000_000, metadata={"gt": 0})
    motor_ids: list[int] | None = None  # bus arms: arm joints then the gripper; default 1..6
    calibration: Path | None = None  # bus arms: lerobot calibration JSON (homing offsets, ranges)
    servo_hz: float = field(default=125.0, metadata={"min": 125.0, "max": 500.0})
    action: ActionMode = "delta_pose"
    control_hz: float = field(default=20.0, metadata={"gt": 0.0, "max": 500.0})  # send_action rate
    pos_scale: float = field(default=0.05, metadata={"gt": 0.0})  # metres per unit of a delta action
    rot_scale: float = field(default=0.5, metadata={"gt": 0.0})  # radians per unit of a delta action
    gripper_max_width: float = field(default=0.08, metadata={"gt": 0.0})
    limits: SafetyLimits = field(default_factory=SafetyLimits)
    watchdog_s: float = field(default=0.5, metadata={"gt": 0.0})  # no command for this long: stop
    stale_s: float = field(default=0.5, metadata={"gt": 0.0})  # no arm state for this long: fault
    connect_timeout_s: float = field(default=60.0, metadata={"gt": 0.0})
    # SCHED_FIFO priority of the servo loop (Linux, root or CAP_SYS_NICE); 0: normal scheduling. Without
    # it a busy machine delays ticks by milliseconds (benchmarks/bench_arm.py). Default (null): 50, but 0
    # for the bus arms, whose SDKs busy-wait for status packets and would hog a core at real-time priority.
    realtime_priority: int | None = field(default=None, metadata={"min": 0, "max": 99})

    @property
    def rt_priority(self) -> int:
        if self.realtime_priority is not None:
            return self.realtime_priority
        return 0 if self.type in ("so100", "so101", "koch") else 50

    # The MuJoCo twin: a sim task's robot and objects (task name or YAML), its seed, injected latency.
    task: str | None = None
    seed: int | None = None
    action_latency_s: float = field(default=0.0, metadata={"min": 0.0, "max": 2.0})
    options: dict[str, Any] = field(default_factory=dict)  # passed to the vendor SDK (driver-specific)

    def validate(self) -> None:
        if self.type in ("ur", "franka", "xarm") and not self.host:
            raise ConfigError(f"a {self.type} arm needs 'host' (its controller's IP address)", key="host")
        if self.type in ("so100", "so101", "koch"):
            if not self.serial_port:
                raise ConfigError(
                    f"a {self.type} arm needs 'serial_port' (e.g. /dev/ttyACM0)", key="serial_port"
                )
            if self.action != "joints":
                raise ConfigError(
                    f"a {self.type} arm is driven in joint space: set action: joints", key="action"
                )
        if self.type == "twin" and not self.task:
            raise ConfigError("the twin arm needs 'task' (a sim task, e.g. lift)", key="task")
        if self.type != "twin" and self.action_latency_s:
            raise ConfigError("action_latency_s is injected into the twin only", key="action_latency_s")


@dataclass
class ArmState:
    """One reading of the arm: named float arrays and the device's timestamp (seconds, monotonic clock)."""

    values: dict[str, np.ndarray]
    t_device: float
    success: bool | None = None  # the twin knows its task's success; real arms None


class Arm(ABC):
    """One arm behind its vendor SDK, driven by the controller process at the servo rate.

    Poses are 7 numbers, position (m) and quaternion (x, y, z, w), in the robot base frame. Gripper
    commands are a closing amount in [-1 (open), 1 (closed)], as in the sim tasks' actions."""

    supports_pose: bool = True
    supports_joints: bool = True

    def __init__(self, cfg: ArmConfig) -> None:
        self.cfg = cfg

    @abstractmethod
    def connect(self) -> None:
        """Open the connection; raise a one-line UserError/RuntimeError naming the arm when it fails."""

    @property
    @abstractmethod
    def features(self) -> dict[str, Feature]:
        """The state's keys (valid after connect)."""

    @property
    def joint_limits(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The arm's own joint limits (radians), or None if unknown."""
        return None

    @abstractmethod
    def read(self) -> ArmState:
        """The latest state."""

    def servo_pose(self, pose: np.ndarray, t: float) -> None:
        """Stream a target pose to be reached at time ``t`` (one servo tick ahead)."""
        raise UserError(f"the {self.cfg.type} arm takes joint commands only (action: joints)")

    def servo_joints(self, q: np.ndarray, t: float) -> None:
        """Stream target joint positions to be reached at time ``t``."""
        raise UserError(f"the {self.cfg.type} arm takes pose commands only")

    @abstractmethod
    def gripper(self, close: float) -> None:
        """Command the gripper: -1 open, 1 closed."""

    @abstractmethod
    def stop(self) -> None:
        """Stop moving now and hold where the arm is."""

    @abstractmethod
    def disconnect(self) -> None:
        """Release the arm (after :meth:`stop`). Safe to call twice."""

    # --- hooks the twin implements; real arms have no episodes to reset
    def reset(self, seed: int | None) -> None:
        raise UserError(f"the {self.cfg.type} arm cannot be reset to an initial state; move it there")

    def extra_info(self) -> dict[str, Any]:
        """Facts for the client (the twin: where its world's state lives, for twin cameras)."""
        return {}


def real_arm_features(dof: int, pose: bool = True) -> dict[str, Feature]:
    """The state keys of a real arm, named as the sim rig's so that policies run on both."""
    out = {}
    if pose:
        out["robot0_eef_pos"] = Feature((3,), "float32")
        out["robot0_eef_quat"] = Feature((4,), "float32")
    out["robot0_gripper_qpos"] = Feature((2,), "float32")
    out["robot0_joint_pos"] = Feature((dof,), "float32")
    return out


def make_driver(cfg: ArmConfig) -> Arm:
    """The driver for ``cfg.type`` (its SDK is imported on connect)."""
    if cfg.type == "twin":
        from robolearn.hardware.arms.twin import TwinArm

        return TwinArm(cfg)
    if cfg.type == "ur":
        from robolearn.hardware.arms.ur import URArm

        return URArm(cfg)
    if cfg.type == "franka":
        from robolearn.hardware.arms.franka import FrankaArm

        return FrankaArm(cfg)
    if cfg.type == "xarm":
        from robolearn.hardware.arms.xarm import XArm

        return XArm(cfg)
    from robolearn.hardware.arms.lerobot_bus import BusArm, LeRobotBusArm

    return LeRobotBusArm(cfg) if cfg.options.get("backend") == "lerobot" else BusArm(cfg)
