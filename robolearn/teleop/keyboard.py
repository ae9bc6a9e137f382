"""The keyboard as a teleoperation device, read from a terminal (no X server, works over SSH).

Motion: w/s x, a/d y, e/q z, up/down pitch, left/right yaw, ','/'.' roll; space toggles the gripper.
Operator keys (every device): enter start, k keep, y success, n failure, backspace or x discard,
r reset, esc quit. A terminal sends no key-up, only the key and its auto-repeats: a motion key
drives its axis until ``key_hold_s`` after its last repeat.
"""

from __future__ import annotations

import os
import time

from robolearn.errors import UserError
from robolearn.rigs.base import Rig
from robolearn.teleop.devices import OPERATOR_KEYS, DeviceTeleop, TeleopSettings, TerminalKeys

MOTION_KEYS: dict[str, tuple[str, float]] = {
    "w": ("x", 1.0), "s": ("x", -1.0), "a": ("y", 1.0), "d": ("y", -1.0), "e": ("z", 1.0), "q": ("z", -1.0),
    ",": ("rx", -1.0), ".": ("rx", 1.0), "up": ("ry", 1.0), "down": ("ry", -1.0),
    "left": ("rz", 1.0), "right": ("rz", -1.0),
}


class KeyboardTeleop(DeviceTeleop):
    name = "keyboard"

    def __init__(self, settings: TeleopSettings | None = None, fd: int | None = None) -> None:
        super().__init__(settings, fd)
        self._held: dict[str, tuple[float, float]] = {}  # axis -> (sign, until)

    def on_key(self, key: str, now: float | None = None) -> None:
        """One key press (or auto-repeat)."""
        now = time.monotonic() if now is None else now
        if key in MOTION_KEYS:
            axis, sign = MOTION_KEYS[key]
            with self._lock:
                self._held[axis] = (sign, now + self.settings.key_hold_s)
        elif key == "space":
            with self._lock:
                self._gripper = -self._gripper
        elif key in OPERATOR_KEYS:
            self.push(OPERATOR_KEYS[key])

    def axes(self, now: float | None = None):  # noqa: ANN201 - same as the base
        now = time.monotonic() if now is None else now
        with self._lock:
            self._axes[:] = 0.0
            for axis, (sign, until) in self._held.items():
                if until > now:
                    self._axes[("x", "y", "z", "rx", "ry", "rz").index(axis)] = sign
        return super().axes()

    def connect(self, rig: Rig | None = None) -> None:
        if rig is not None and tuple(rig.action_feature.shape) != (self.action_dim,):
            raise UserError(f"teleoperator keyboard gives 7-d delta-pose actions, rig {rig.name} takes "
                            f"{list(rig.action_feature.shape)}: set the arm's action to delta_pose")
        source = self._fd if self._fd is not None else (self.settings.path or self.settings.keys_tty)
        if source is None:
            if not os.isatty(0):
                raise UserError("teleoperator 'keyboard' needs a terminal: run record in one, or set teleop.path "
                                "to a tty")
            source = "/dev/tty"
        self._keys = TerminalKeys(source, self.on_key, self.settings.key_hold_s)
        self._keys.start()

    def disconnect(self) -> None:
        if self._keys is not None:
            self._keys.close()
            self._keys = None
