"""Franka (Panda, FR3) through franky-control.

franky plans jerk-limited motions on the robot's 1 kHz loop; each servo tick replaces the running
motion with a new absolute Cartesian (or joint) target, asynchronously, which franky's real-time
preemption is made for."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from robolearn.errors import ConfigError
from robolearn.features import Feature
from robolearn.hardware.arms.base import Arm, ArmConfig, ArmState, import_sdk, real_arm_features

DEFAULTS = {"relative_dynamics_factor": 0.1, "gripper_speed": 0.05, "gripper_force": 20.0}
# Panda / FR3 joint limits (radians) from Franka's datasheet.
PANDA_LIMITS = (
    np.array([-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973]),
    np.array([2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973]),
)


class FrankaArm(Arm):
    def __init__(self, cfg: ArmConfig) -> None:
        super().__init__(cfg)
        unknown = set(cfg.options) - set(DEFAULTS)
        if unknown:
            raise ConfigError(
                f"unknown franka option(s) {sorted(unknown)}; allowed: {', '.join(DEFAULTS)}", key="options"
            )
        self.opt = {**DEFAULTS, **cfg.options}
        self._robot: Any = None
        self._gripper: Any = None
        self._grip_cmd: float | None = None

    def connect(self) -> None:
        franky = import_sdk("franka")
        self._f = franky
        self._robot = franky.Robot(self.cfg.host)
        self._robot.recover_from_errors()
        self._robot.relative_dynamics_factor = float(self.opt["relative_dynamics_factor"])
        self._gripper = franky.Gripper(self.cfg.host)

    @property
    def features(self) -> dict[str, Feature]:
        return real_arm_features(7)

    @property
    def joint_limits(self) -> tuple[np.ndarray, np.ndarray]:
        return PANDA_LIMITS

    def read(self) -> ArmState:
        t = time.monotonic()
        ee = self._robot.current_cartesian_state.pose.end_effector_pose
        q = self._robot.current_joint_state.position
        width = float(self._gripper.width)
        values = {
            "robot0_eef_pos": np.asarray(ee.translation, np.float32),
            "robot0_eef_quat": np.asarray(ee.quaternion, np.float32),  # x, y, z, w
            "robot0_gripper_qpos": np.array([width / 2, -width / 2], np.float32),
            "robot0_joint_pos": np.asarray(q, np.float32),
        }
        return ArmState(values, t)

    def servo_pose(self, pose: np.ndarray, t: float) -> None:
        f = self._f
        target = f.Affine(np.asarray(pose[:3], np.float64), np.asarray(pose[3:], np.float64))
        self._robot.move(f.CartesianMotion(target, f.ReferenceType.Absolute), asynchronous=True)

    def servo_joints(self, q: np.ndarray, t: float) -> None:
        self._robot.move(self._f.JointMotion(np.asarray(q, np.float64)), asynchronous=True)

    def gripper(self, close: float) -> None:
        if close == self._grip_cmd:
            return
        self._grip_cmd = close
        width = self.cfg.gripper_max_width * (1.0 - close) / 2.0
        self._gripper.move_async(width, float(self.opt["gripper_speed"]))

    def stop(self) -> None:
        if self._robot is not None:
            self._robot.stop()

    def disconnect(self) -> None:
        self._robot = None
        self._gripper = None
