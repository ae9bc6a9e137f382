"""UFactory xArm (5/6/7, Lite 6) through xarm-python-sdk, in servo mode (mode 1).

The SDK speaks millimetres and roll/pitch/yaw (fixed-axis x-y-z, radians here via ``is_radian``); the
conversions to metres and quaternions are below. The gripper position runs 0 (closed) .. 850 (open)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from robolearn.errors import ConfigError
from robolearn.features import Feature
from robolearn.hardware.arms.base import Arm, ArmConfig, ArmState, import_sdk, real_arm_features
from robolearn.hardware.arms.interp import quat_from_mat, quat_to_mat

DEFAULTS = {"dof": 7, "gripper": True, "gripper_speed": 5000}
GRIPPER_OPEN = 850.0


def rpy_to_quat(rpy: np.ndarray) -> np.ndarray:
    """Fixed-axis roll (x), pitch (y), yaw (z): R = Rz(yaw) Ry(pitch) Rx(roll)."""
    r, p, y = rpy
    cr, sr, cp, sp, cy, sy = np.cos(r), np.sin(r), np.cos(p), np.sin(p), np.cos(y), np.sin(y)
    m = np.array(
        [
            [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
            [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
            [-sp, cp * sr, cp * cr],
        ]
    )
    return quat_from_mat(m)


def quat_to_rpy(q: np.ndarray) -> np.ndarray:
    m = quat_to_mat(q)
    pitch = -np.arcsin(np.clip(m[2, 0], -1.0, 1.0))
    if abs(m[2, 0]) < 1 - 1e-9:
        roll, yaw = np.arctan2(m[2, 1], m[2, 2]), np.arctan2(m[1, 0], m[0, 0])
    else:  # gimbal lock: put the whole rotation about z into yaw
        roll, yaw = 0.0, np.arctan2(-m[0, 1], m[1, 1])
    return np.array([roll, pitch, yaw])


def xarm_pose_to_pose(p: Any) -> np.ndarray:
    """xArm ``[x, y, z (mm), roll, pitch, yaw (rad)]`` -> 7-number pose in metres."""
    p = np.asarray(p, dtype=np.float64)
    return np.concatenate([p[:3] / 1000.0, rpy_to_quat(p[3:6])])


def pose_to_xarm_pose(pose: np.ndarray) -> list[float]:
    return [*(float(x) * 1000.0 for x in pose[:3]), *map(float, quat_to_rpy(pose[3:]))]


class XArm(Arm):
    def __init__(self, cfg: ArmConfig) -> None:
        super().__init__(cfg)
        unknown = set(cfg.options) - set(DEFAULTS)
        if unknown:
            raise ConfigError(
                f"unknown xarm option(s) {sorted(unknown)}; allowed: {', '.join(DEFAULTS)}", key="options"
            )
        self.opt = {**DEFAULTS, **cfg.options}
        self._arm: Any = None
        self._grip_cmd: float | None = None
        self._stopped = False

    def _check(self, code: Any, what: str) -> Any:
        ret = code if isinstance(code, tuple) else (code, None)
        if ret[0] != 0:
            raise RuntimeError(f"xArm {what} failed with code {ret[0]} (see the xArm SDK's error codes)")
        return ret[1]

    def connect(self) -> None:
        wrapper = import_sdk("xarm")
        self._arm = wrapper.XArmAPI(self.cfg.host, is_radian=True)
        self._arm.clean_error()
        self._arm.motion_enable(enable=True)
        self._check(self._arm.set_mode(1), "set_mode(1) (servo mode)")
        self._check(self._arm.set_state(0), "set_state(0)")
        if self.opt["gripper"]:
            self._arm.set_gripper_enable(True)

    @property
    def features(self) -> dict[str, Feature]:
        return real_arm_features(int(self.opt["dof"]))

    def read(self) -> ArmState:
        t = time.monotonic()
        pose = xarm_pose_to_pose(self._check(self._arm.get_position(is_radian=True), "get_position"))
        q = np.asarray(self._check(self._arm.get_servo_angle(is_radian=True), "get_servo_angle"), np.float32)
        width = 0.0
        if self.opt["gripper"]:
            pos = self._check(self._arm.get_gripper_position(), "get_gripper_position")
            width = self.cfg.gripper_max_width * float(pos) / GRIPPER_OPEN
        values = {
            "robot0_eef_pos": pose[:3].astype(np.float32),
            "robot0_eef_quat": pose[3:].astype(np.float32),
            "robot0_gripper_qpos": np.array([width / 2, -width / 2], np.float32),
            "robot0_joint_pos": q[: int(self.opt["dof"])],
        }
        return ArmState(values, t)

    def _resume(self) -> None:
        """After stop() the arm sits in the stop state; servo mode must be entered again."""
        if self._stopped:
            self._check(self._arm.set_mode(1), "set_mode(1) (servo mode)")
            self._check(self._arm.set_state(0), "set_state(0)")
            self._stopped = False

    def servo_pose(self, pose: np.ndarray, t: float) -> None:
        self._resume()
        self._check(self._arm.set_servo_cartesian(pose_to_xarm_pose(pose), is_radian=True), "set_servo_cartesian")

    def servo_joints(self, q: np.ndarray, t: float) -> None:
        self._resume()
        self._check(self._arm.set_servo_angle_j([float(x) for x in q], is_radian=True), "set_servo_angle_j")

    def gripper(self, close: float) -> None:
        if not self.opt["gripper"] or close == self._grip_cmd:
            return
        self._grip_cmd = close
        pos = GRIPPER_OPEN * (1.0 - close) / 2.0
        self._arm.set_gripper_position(pos, wait=False, speed=self.opt["gripper_speed"])

    def stop(self) -> None:
        if self._arm is not None:
            self._arm.set_state(4)  # stop state: the arm halts; _resume() re-enters servo mode
            self._stopped = True

    def disconnect(self) -> None:
        if self._arm is not None:
            self._arm.disconnect()
            self._arm = None
