"""SO-100 / SO-101 (Feetech STS3215) and Koch (Dynamixel XL430/XL330) arms on a serial servo bus.

The arms lerobot builds, driven through the vendor SDKs that lerobot's motor buses wrap
(feetech-servo-sdk's ``scservo_sdk``, ``dynamixel-sdk``): one sync read of every present position and
one sync write of every goal position per servo tick. Joint angles come from raw ticks through a
lerobot calibration file (per motor: ``id``, ``drive_mode``, ``homing_offset``, ``range_min``,
``range_max``); without one the middle of the encoder (2048) is zero. The last motor is the gripper:
its range maps to the gripper opening. A bus error (timeout, corrupt status packet) is retried; one
that persists, or a port that vanishes, stops the arm through the controller's fault path.
"""

from __future__ import annotations

import json
import termios
import time
from collections import deque
from typing import Any

import numpy as np

from robolearn.errors import ConfigError, UserError
from robolearn.features import Feature
from robolearn.hardware.arms.base import Arm, ArmConfig, ArmState, import_sdk, real_arm_features
from robolearn.hardware.arms.bus_emulator import STS3215, XL430, MotorTable

MOTOR_NAMES = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")
RESOLUTION = 4096  # ticks per turn (STS3215, XL430, XL330)
# backend "sdk": the vendor SDK's group sync read/write here; "lerobot": lerobot's motor bus classes
# (FeetechMotorsBus / DynamixelMotorsBus, with lerobot's own normalisation), for setups built with lerobot.
# After a failed try, the line must be quiet this long before the next: more than a status packet's
# gap on a real bus (< 1 ms at 1 Mbaud, plus a USB adapter's latency timer of 1-16 ms); at most MAX.
DRAIN_QUIET_S = 0.02
DRAIN_MAX_S = 0.2
DEFAULTS = {"retries": 3, "torque_off_on_disconnect": False, "backend": "sdk"}
# What a vanished adapter raises: pyserial's SerialException (an OSError), and termios.error (not an
# OSError) from the flush/drain the SDKs call before each packet.
PORT_GONE = (OSError, termios.error)


def load_calibration(path: Any, names: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """A lerobot calibration JSON, checked for the motors this arm has."""
    try:
        raw = json.loads(open(path).read())
    except OSError as e:
        raise UserError(f"calibration file {path} cannot be read: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"calibration file {path} is not JSON: {e.msg} (line {e.lineno})") from None
    missing = [n for n in names if n not in raw]
    if missing:
        raise UserError(f"calibration file {path} has no entry for motor(s) {missing}")
    for n in names:
        for k in ("range_min", "range_max"):
            if not isinstance(raw[n].get(k), int):
                raise UserError(f"calibration file {path}: {n}.{k} must be an integer tick count")
    return raw


class BusArm(Arm):
    supports_pose = False  # joint space only (no kinematic model of these arms here)

    def __init__(self, cfg: ArmConfig) -> None:
        super().__init__(cfg)
        unknown = set(cfg.options) - set(DEFAULTS)
        if unknown:
            raise ConfigError(
                f"unknown {cfg.type} option(s) {sorted(unknown)}; allowed: {', '.join(DEFAULTS)}",
                key="options",
            )
        self.opt = {**DEFAULTS, **cfg.options}
        # The last bytes the bus sent during the last try, for the error message (filled by connect).
        self._heard: deque[int] = deque(maxlen=24)
        if self.opt["backend"] not in ("sdk", "lerobot"):
            raise ConfigError(
                f"options.backend must be 'sdk' or 'lerobot', got {self.opt['backend']!r}", key="options"
            )
        self.ids = list(cfg.motor_ids or range(1, 7))
        if len(self.ids) != len(MOTOR_NAMES):
            raise ConfigError(
                f"a {cfg.type} arm has {len(MOTOR_NAMES)} motors ({', '.join(MOTOR_NAMES)}), "
                f"got {len(self.ids)} motor_ids",
                key="motor_ids",
            )
        self.table: MotorTable = XL430 if cfg.type == "koch" else STS3215
        mid = RESOLUTION // 2
        self.lo = np.full(len(self.ids), 0.0)
        self.hi = np.full(len(self.ids), float(RESOLUTION - 1))
        self.center = np.full(len(self.ids), float(mid))
        self.sign = np.ones(len(self.ids))
        if cfg.calibration is not None:
            cal = load_calibration(cfg.calibration, MOTOR_NAMES)
            for j, n in enumerate(MOTOR_NAMES):
                self.lo[j], self.hi[j] = cal[n]["range_min"], cal[n]["range_max"]
                self.center[j] = (self.lo[j] + self.hi[j]) / 2
                self.sign[j] = -1.0 if cal[n].get("drive_mode", 0) else 1.0
        self._port: Any = None
        self._grip_goal: float | None = None
        self._last_raw: np.ndarray | None = None

    # ---------------------------------------------------------------- units
    def ticks_to_rad(self, raw: np.ndarray) -> np.ndarray:
        return (np.asarray(raw, np.float64) - self.center) * self.sign * (2 * np.pi / RESOLUTION)

    def rad_to_ticks(self, q: np.ndarray, j: slice | np.ndarray = slice(None)) -> np.ndarray:
        return np.rint(np.asarray(q) * self.sign[j] * RESOLUTION / (2 * np.pi) + self.center[j])

    def close_to_ticks(self, close: float) -> float:
        """Gripper: -1 open (range_max) .. 1 closed (range_min)."""
        return float(self.hi[-1] - (close + 1) / 2 * (self.hi[-1] - self.lo[-1]))

    # ---------------------------------------------------------------- bus
    def _fail(self, what: str, result: int) -> RuntimeError:
        heard = bytes(self._heard).hex(" ") or "nothing"
        return RuntimeError(
            f"{self.cfg.type} bus on {self.cfg.serial_port}: {what}: {self._ph.getTxRxResult(result)} "
            f"(last bytes from the bus: {heard})"
        )

    def connect(self) -> None:
        sdk = import_sdk(self.cfg.type)
        self._sdk = sdk
        self._ph = sdk.PacketHandler(2.0) if self.cfg.type == "koch" else sdk.PacketHandler(0)
        port = sdk.PortHandler(self.cfg.serial_port)
        try:
            opened = port.openPort() and port.setBaudRate(self.cfg.baudrate)
        except Exception as e:  # noqa: BLE001 - pyserial raises its own SerialException
            raise UserError(
                f"{self.cfg.type} arm: cannot open serial port {self.cfg.serial_port}: {e}"
            ) from None
        if not opened:
            raise UserError(
                f"{self.cfg.type} arm: cannot open serial port {self.cfg.serial_port} "
                f"at {self.cfg.baudrate} baud"
            )
        self._port = port
        # Keep the last bytes the bus sent, for the error message: garbage says wrong baud rate or a
        # second device on the line, an echo of our own packets a misconfigured adapter, nothing no power.
        read = port.readPort

        def read_and_keep(length: int) -> Any:
            data = read(length)
            self._heard.extend(data)
            return data

        port.readPort = read_and_keep
        for i in self.ids:
            found: list[int] = []
            self._tx(lambda i=i, found=found: self._ping(i, found), f"ping of motor {i}")
            model = found[0]
            if model != self.table.model_number:
                raise RuntimeError(
                    f"{self.cfg.type} bus on {self.cfg.serial_port}: motor {i} is model {model}, "
                    f"expected {self.table.model_number}"
                )
        t = self.table
        self._reader = sdk.GroupSyncRead(port, self._ph, t.present_addr, t.position_bytes)
        for i in self.ids:
            self._reader.addParam(i)
        self._writer = sdk.GroupSyncWrite(port, self._ph, t.goal_addr, t.position_bytes)
        raw = self._read_raw()
        self._write_raw(raw)  # goal = where the arm is, before the torque comes on
        for i in self.ids:
            self._tx(
                lambda i=i: self._ph.write1ByteTxRx(port, i, t.torque_addr, 1)[0], f"torque on motor {i}"
            )

    def _tx(self, fn: Any, what: str) -> Any:
        result = -1
        for _ in range(int(self.opt["retries"])):
            self._heard.clear()  # the error names what the last try heard
            try:
                result = fn()
            except PORT_GONE as e:  # the adapter is gone
                raise RuntimeError(
                    f"{self.cfg.type} bus on {self.cfg.serial_port} disconnected ({what}): {e}"
                ) from None
            except (IndexError, ValueError):  # the SDKs index into a garbled packet: a failed try
                result = self._sdk.COMM_RX_CORRUPT
            if result == 0:
                return result
            self._drain()
        raise self._fail(f"{what} failed {self.opt['retries']} times", result)

    def _drain(self) -> None:
        """Drop a late or broken answer before asking again, once the line is quiet: discarding at once
        left a reply still on its way to be read as the next try's answer, and then every try failed
        (each ping read the previous try's model-number reply; tests/test_servo_bus.py)."""
        ser = self._port.ser
        end = time.monotonic() + DRAIN_MAX_S
        try:
            while True:
                ser.reset_input_buffer()
                time.sleep(DRAIN_QUIET_S)
                if not ser.in_waiting or time.monotonic() > end:
                    break
            ser.reset_input_buffer()
        except Exception:  # noqa: BLE001 - an unplugged adapter: the next try reports it
            pass

    def _ping(self, motor_id: int, found: list[int]) -> int:
        model, result, _ = self._ph.ping(self._port, motor_id)
        found[:] = [model]
        return result

    def _read_raw(self) -> np.ndarray:
        self._tx(self._reader.txRxPacket, "sync read of present positions")
        n = self.table.position_bytes
        raw = np.array([self._reader.getData(i, self.table.present_addr, n) for i in self.ids], np.float64)
        if n == 4:  # XL430 positions are signed 32-bit
            raw = np.where(raw >= 2**31, raw - 2**32, raw)
        return raw

    def _write_raw(self, raw: np.ndarray) -> None:
        n = self.table.position_bytes
        self._writer.clearParam()
        for i, r in zip(self.ids, raw, strict=True):
            self._writer.addParam(i, list(int(r).to_bytes(n, "little", signed=True)))
        self._tx(self._writer.txPacket, "sync write of goal positions")

    # ---------------------------------------------------------------- Arm
    @property
    def features(self) -> dict[str, Feature]:
        return real_arm_features(len(self.ids) - 1, pose=False)

    @property
    def joint_limits(self) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.ticks_to_rad(self.lo)[:-1], self.ticks_to_rad(self.hi)[:-1]
        return np.minimum(a, b), np.maximum(a, b)

    def read(self) -> ArmState:
        raw = self._read_raw()
        self._last_raw = raw
        t = time.monotonic()
        span = max(self.hi[-1] - self.lo[-1], 1.0)
        width = self.cfg.gripper_max_width * float(np.clip((raw[-1] - self.lo[-1]) / span, 0.0, 1.0))
        values = {
            "robot0_gripper_qpos": np.array([width / 2, -width / 2], np.float32),
            "robot0_joint_pos": self.ticks_to_rad(raw)[:-1].astype(np.float32),
        }
        return ArmState(values, t)

    def servo_joints(self, q: np.ndarray, t: float) -> None:
        arm = self.rad_to_ticks(q, slice(0, len(self.ids) - 1))
        grip = (
            self._grip_goal
            if self._grip_goal is not None
            else (self._last_raw[-1] if self._last_raw is not None else self.center[-1])
        )
        self._write_raw(
            np.clip(np.append(arm, grip), np.minimum(self.lo, self.hi), np.maximum(self.lo, self.hi))
        )

    def gripper(self, close: float) -> None:
        self._grip_goal = self.close_to_ticks(close)

    def stop(self) -> None:
        if self._port is not None:
            self._write_raw(self._read_raw())  # goal = present: hold here

    def disconnect(self) -> None:
        if self._port is None:
            return
        try:
            if self.opt["torque_off_on_disconnect"]:
                for i in self.ids:
                    self._ph.write1ByteTxRx(self._port, i, self.table.torque_addr, 0)
            self._port.closePort()
        except Exception:  # noqa: BLE001 - an unplugged port cannot be closed cleanly; nothing is left to do
            pass
        self._port = None


class LeRobotBusArm(BusArm):
    """The same arms through lerobot's motor bus classes: joints in lerobot's degrees (the middle of
    each calibrated range is zero), the gripper in its 0..100 range (100 open)."""

    def connect(self) -> None:
        import_sdk(self.cfg.type)
        try:
            from lerobot.motors import Motor, MotorCalibration, MotorNormMode

            if self.cfg.type == "koch":
                from lerobot.motors.dynamixel import DynamixelMotorsBus as Bus
            else:
                from lerobot.motors.feetech import FeetechMotorsBus as Bus
        except ImportError as e:
            raise UserError(
                f"options.backend 'lerobot' needs lerobot's motor buses ({e.name} is missing); "
                "install lerobot, or use backend: sdk"
            ) from None
        model = "xl430-w250" if self.cfg.type == "koch" else "sts3215"
        motors, cal = {}, {}
        for j, (name, i) in enumerate(zip(MOTOR_NAMES, self.ids, strict=True)):
            mode = MotorNormMode.RANGE_0_100 if name == "gripper" else MotorNormMode.DEGREES
            motors[name] = Motor(i, model, mode)
            cal[name] = MotorCalibration(
                id=i,
                drive_mode=int(self.sign[j] < 0),
                homing_offset=0,
                range_min=int(self.lo[j]),
                range_max=int(self.hi[j]),
            )
        for attempt in range(int(self.opt["retries"])):  # lerobot's handshake pings each motor once
            self._bus = Bus(port=self.cfg.serial_port, motors=motors, calibration=cal)
            try:
                self._bus.connect()
                self._bus.enable_torque(num_retry=int(self.opt["retries"]) - 1)
                break
            except (ConnectionError, RuntimeError, *PORT_GONE) as e:
                if self._bus.is_connected:
                    self._bus.port_handler.closePort()
                if attempt + 1 == int(self.opt["retries"]):
                    raise RuntimeError(
                        f"{self.cfg.type} bus on {self.cfg.serial_port} (lerobot): {' '.join(str(e).split())}"
                    ) from None
        self._port = self._bus  # marks the arm connected for stop()/disconnect()
        self._grip_pct: float | None = None

    def _call(self, fn: Any, what: str) -> Any:
        try:
            return fn()
        except (ConnectionError, RuntimeError, *PORT_GONE) as e:
            raise RuntimeError(
                f"{self.cfg.type} bus on {self.cfg.serial_port} (lerobot): {what}: {' '.join(str(e).split())}"
            ) from None

    def _positions(self) -> dict[str, float]:
        n = int(self.opt["retries"]) - 1
        return self._call(lambda: self._bus.sync_read("Present_Position", num_retry=n), "sync read")

    @property
    def joint_limits(self) -> tuple[np.ndarray, np.ndarray]:
        half = (self.hi - self.lo)[:-1] / 2 * 2 * np.pi / (RESOLUTION - 1)
        return -np.abs(half), np.abs(half)

    def read(self) -> ArmState:
        pos = self._positions()
        t = time.monotonic()
        q = np.deg2rad([pos[n] for n in MOTOR_NAMES[:-1]]).astype(np.float32)
        width = self.cfg.gripper_max_width * float(np.clip(pos["gripper"] / 100.0, 0.0, 1.0))
        values = {"robot0_gripper_qpos": np.array([width / 2, -width / 2], np.float32), "robot0_joint_pos": q}
        self._last_pos = pos
        return ArmState(values, t)

    def servo_joints(self, q: np.ndarray, t: float) -> None:
        goal = {n: float(np.rad2deg(q[j])) for j, n in enumerate(MOTOR_NAMES[:-1])}
        goal["gripper"] = self._grip_pct if self._grip_pct is not None else self._last_pos["gripper"]
        self._call(lambda: self._bus.sync_write("Goal_Position", goal), "sync write")

    def gripper(self, close: float) -> None:
        self._grip_pct = (1.0 - close) / 2.0 * 100.0

    def stop(self) -> None:
        if self._port is not None:
            pos = self._positions()
            self._call(lambda: self._bus.sync_write("Goal_Position", pos), "sync write")

    def disconnect(self) -> None:
        if self._port is None:
            return
        try:
            self._bus.disconnect(disable_torque=bool(self.opt["torque_off_on_disconnect"]))
        except Exception:  # noqa: BLE001 - an unplugged port cannot be closed cleanly; nothing is left to do
            pass
        self._port = None
