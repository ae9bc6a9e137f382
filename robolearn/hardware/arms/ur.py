"""Universal Robots CB3 / e-Series through ur-rtde (RTDE control and receive interfaces).

Poses on the wire are UR's ``[x, y, z, rx, ry, rz]`` (metres, rotation vector) in the base frame; the
controller streams them with ``servoL`` once per servo tick (125 Hz on CB3, up to 500 Hz on e-Series)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from robolearn.features import Feature
from robolearn.hardware.arms.base import Arm, ArmConfig, ArmState, import_sdk, real_arm_features
from robolearn.hardware.arms.interp import quat_from_rotvec, quat_to_rotvec

# servoL/servoJ tuning (ur-rtde's documented ranges: lookahead 0.03-0.2 s, gain 100-2000).
DEFAULTS = {
    "lookahead_time": 0.1,
    "gain": 300,
    "speed": 0.5,
    "acceleration": 0.5,
    "stop_deceleration": 10.0,
    "tcp_offset": None,
    "payload_mass": None,
}


def ur_pose_to_pose(p: Any) -> np.ndarray:
    """UR ``[x, y, z, rx, ry, rz]`` -> 7-number pose (quaternion xyzw)."""
    p = np.asarray(p, dtype=np.float64)
    return np.concatenate([p[:3], quat_from_rotvec(p[3:6])])


def pose_to_ur_pose(pose: np.ndarray) -> list[float]:
    return [*map(float, pose[:3]), *map(float, quat_to_rotvec(pose[3:]))]


class URArm(Arm):
    def __init__(self, cfg: ArmConfig) -> None:
        super().__init__(cfg)
        unknown = set(cfg.options) - set(DEFAULTS)
        if unknown:
            from robolearn.errors import ConfigError

            raise ConfigError(
                f"unknown ur option(s) {sorted(unknown)}; allowed: {', '.join(DEFAULTS)}", key="options"
            )
        self.opt = {**DEFAULTS, **cfg.options}
        self._ctrl: Any = None
        self._recv: Any = None

    def connect(self) -> None:
        rtde_control = import_sdk("ur")
        import rtde_receive

        freq = float(self.cfg.servo_hz)
        self._recv = rtde_receive.RTDEReceiveInterface(self.cfg.host, freq)
        self._ctrl = rtde_control.RTDEControlInterface(self.cfg.host, freq)
        if self.opt["tcp_offset"] is not None:
            self._ctrl.setTcp(list(self.opt["tcp_offset"]))
        if self.opt["payload_mass"] is not None:
            self._ctrl.setPayload(float(self.opt["payload_mass"]))
        self._t0 = time.monotonic() - float(self._recv.getTimestamp())  # robot clock -> host monotonic

    @property
    def features(self) -> dict[str, Feature]:
        return real_arm_features(6)

    def read(self) -> ArmState:
        pose = ur_pose_to_pose(self._recv.getActualTCPPose())
        q = np.asarray(self._recv.getActualQ(), dtype=np.float32)
        values = {
            "robot0_eef_pos": pose[:3].astype(np.float32),
            "robot0_eef_quat": pose[3:].astype(np.float32),
            "robot0_gripper_qpos": np.zeros(2, np.float32),
            "robot0_joint_pos": q,
        }
        return ArmState(values, self._t0 + float(self._recv.getTimestamp()))

    def servo_pose(self, pose: np.ndarray, t: float) -> None:
        dt = max(t - time.monotonic(), 1.0 / self.cfg.servo_hz)
        o = self.opt
        self._ctrl.servoL(
            pose_to_ur_pose(pose), o["speed"], o["acceleration"], dt, o["lookahead_time"], o["gain"]
        )

    def servo_joints(self, q: np.ndarray, t: float) -> None:
        dt = max(t - time.monotonic(), 1.0 / self.cfg.servo_hz)
        o = self.opt
        self._ctrl.servoJ(
            [float(x) for x in q], o["speed"], o["acceleration"], dt, o["lookahead_time"], o["gain"]
        )

    def gripper(self, close: float) -> None:
        """UR arms carry third-party grippers (Robotiq, ...) on their own bus; none is driven here."""

    def stop(self) -> None:
        if self._ctrl is not None:
            self._ctrl.servoStop(self.opt["stop_deceleration"])

    def disconnect(self) -> None:
        if self._ctrl is not None:
            self._ctrl.stopScript()
            self._ctrl.disconnect()
            self._ctrl = None
        if self._recv is not None:
            self._recv.disconnect()
            self._recv = None
