"""A leader arm: the operator moves a second, unpowered arm and the follower copies its joints.

The leader is a serial-bus arm (SO-100/SO-101 Feetech, Koch Dynamixel) read through the vendor SDK
exactly as the follower's driver reads it (:class:`robolearn.hardware.arms.lerobot_bus.BusArm`, the
same calibration file format as lerobot's), with its torque off so a hand can move it. The action is
the follower's joint action: the leader's joint angles, then the gripper (-1 open .. 1 closed).
Operator events come from the terminal's keys (enter start, k keep, y/n success/failure, x discard,
r reset, esc quit).
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Iterable
from typing import Any

import numpy as np

from robolearn.errors import UserError
from robolearn.rigs.base import Observation, Rig
from robolearn.teleop.base import Event, Teleoperator
from robolearn.teleop.devices import OPERATOR_KEYS, TeleopSettings, TerminalKeys

BUS_ARMS = ("so100", "so101", "koch")


def _passive_bus_arm(cfg: Any) -> Any:
    from robolearn.hardware.arms.lerobot_bus import BusArm

    class PassiveBusArm(BusArm):
        """The follower's driver with the torque off after connecting: a leader is moved by hand."""

        def connect(self) -> None:
            super().connect()
            for i in self.ids:
                self._tx(lambda i=i: self._ph.write1ByteTxRx(self._port, i, self.table.torque_addr, 0)[0],
                         f"torque off motor {i}")

    return PassiveBusArm(cfg)


class LeaderTeleop(Teleoperator):
    name = "leader"
    autostart = False

    def __init__(self, settings: TeleopSettings | None = None, arm_config: Any = None) -> None:
        self.settings = settings or TeleopSettings()
        self.arm_config = arm_config if arm_config is not None else getattr(settings, "leader", None)
        self.arm: Any = None
        self._events: deque[Event] = deque()
        self._lock = threading.Lock()
        self._keys: TerminalKeys | None = None

    def connect(self, rig: Rig | None = None) -> None:
        cfg = self.arm_config
        if cfg is None:
            raise UserError("teleoperator leader needs the leader arm in the rig file's teleop.leader "
                            "(type, serial_port, calibration)")
        if cfg.type not in BUS_ARMS:
            raise UserError(f"a leader arm is a serial-bus arm ({', '.join(BUS_ARMS)}), got {cfg.type!r}")
        self.arm = _passive_bus_arm(cfg)
        try:
            self.arm.connect()
        except RuntimeError as e:
            raise UserError(f"leader arm: {e}") from None
        dof = len(self.arm.ids)
        if rig is not None and tuple(rig.action_feature.shape) != (dof,):
            self.disconnect()
            raise UserError(f"the leader arm gives {dof} joint targets (joints + gripper), rig {rig.name} takes "
                            f"{list(rig.action_feature.shape)}: set the follower's action to joints")
        if self.settings.keys and (self.settings.keys_tty is not None or os.isatty(0)):
            self._keys = TerminalKeys(self.settings.keys_tty or "/dev/tty", self._on_key)
            self._keys.start()

    def _on_key(self, key: str) -> None:
        if key in OPERATOR_KEYS:
            with self._lock:
                self._events.append(OPERATOR_KEYS[key])

    def read(self) -> np.ndarray:
        """The leader's joint angles (radians) and gripper command (-1 open .. 1 closed)."""
        state = self.arm.read()
        raw = self.arm._last_raw  # noqa: SLF001 - the gripper motor's ticks, read just now
        lo, hi = self.arm.lo[-1], self.arm.hi[-1]
        close = 1.0 - 2.0 * float(np.clip((raw[-1] - lo) / max(hi - lo, 1.0), 0.0, 1.0))
        return np.append(state.values["robot0_joint_pos"], close).astype(np.float32)

    def act(self, observation: Observation) -> tuple[np.ndarray, bool]:
        del observation
        try:
            return self.read(), True
        except RuntimeError as e:  # the leader's bus failed (unplugged): the episode cannot go on
            from robolearn.rigs.base import RigError

            raise RigError(f"leader arm: {e}") from None

    def events(self) -> Iterable[Event]:
        with self._lock:
            out = list(self._events)
            self._events.clear()
        return out

    def disconnect(self) -> None:
        if self._keys is not None:
            self._keys.close()
            self._keys = None
        if self.arm is not None:
            self.arm.disconnect()
            self.arm = None
