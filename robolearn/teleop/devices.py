"""What every human teleoperation device shares: deadzone and scaling, a background reader of raw
device bytes, and operator events from the terminal.

A device teleoperator turns its device's raw input (HID reports, terminal bytes, evdev events) into
six normalised axes in [-1, 1] (dx, dy, dz, droll, dpitch, dyaw) and a gripper command, and the
action it gives is the 7-d delta-pose action of the sim tasks and the twin (OSC_POSE, gripper -1 open,
+1 closed). Parsing is a pure function of the bytes (``feed``), so recorded reports test it exactly.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from robolearn.errors import ConfigError, UserError
from robolearn.rigs.base import Observation, Rig
from robolearn.teleop.base import Event, Teleoperator

AXES = ("x", "y", "z", "rx", "ry", "rz")
EVENT_NAMES = tuple(e.value for e in Event)


@dataclass
class TeleopSettings:
    """A teleoperation device's settings (the ``teleop`` section of a rig file)."""

    # Device node (/dev/hidrawN for a SpaceMouse, /dev/input/eventN for a gamepad, a tty for keys);
    # None finds the first matching device.
    path: str | None = None
    # Axis values (normalised to [-1, 1]) below this count as zero; above it they are rescaled so
    # the output still starts at 0.
    deadzone: float = field(default=0.05, metadata={"min": 0.0, "max": 0.9})
    scale_translation: float = field(default=1.0, metadata={"gt": 0.0, "max": 1.0})
    scale_rotation: float = field(default=1.0, metadata={"gt": 0.0, "max": 1.0})
    # Device axis feeding each action axis (dx, dy, dz, droll, dpitch, dyaw), '-' flips it.
    axes: list[str] = field(default_factory=lambda: ["x", "y", "z", "rx", "ry", "rz"])
    # Also read operator keys (start, keep, discard, ...) from the terminal running `record`.
    keys: bool = True
    keys_tty: str | None = None  # another terminal for the keys (default: this one, when it is a tty)
    # Terminal keys give no key-up: a motion key holds its axis this long after its last repeat.
    key_hold_s: float = field(default=0.3, metadata={"gt": 0.0, "max": 2.0})
    # Device buttons (by index) to operator events or "gripper" (toggle).
    buttons: dict[int, str] = field(default_factory=lambda: {0: "gripper", 1: "keep"})

    def validate(self) -> None:
        if len(self.axes) != 6:
            raise ConfigError(f"expected 6 entries (dx, dy, dz, droll, dpitch, dyaw), got {len(self.axes)}",
                              key="axes")
        for i, a in enumerate(self.axes):
            if a.lstrip("-") not in AXES:
                raise ConfigError(f"unknown axis {a!r}; use one of {', '.join(AXES)}, '-' in front flips it",
                                  key=f"axes[{i}]")
        for b, what in self.buttons.items():
            if what != "gripper" and what not in EVENT_NAMES:
                raise ConfigError(f"unknown action {what!r}; use gripper or one of {', '.join(EVENT_NAMES)}",
                                  key=f"buttons.{b}")


def apply_deadzone(v: np.ndarray, deadzone: float) -> np.ndarray:
    """Zero below ``deadzone``, then rescaled so the output is continuous and reaches 1 at 1."""
    v = np.clip(np.asarray(v, np.float64), -1.0, 1.0)
    mag = np.maximum(np.abs(v) - deadzone, 0.0) / (1.0 - deadzone)
    return np.sign(v) * mag


class DeviceTeleop(Teleoperator):
    """A human device: a thread reads raw bytes from ``fd`` (or the device at ``settings.path``) and
    ``feed`` parses them into axes, gripper and events; ``act`` reads the latest state."""

    autostart = False  # humans press START for each episode
    action_dim = 7

    def __init__(self, settings: TeleopSettings | None = None, fd: int | None = None) -> None:
        self.settings = settings or TeleopSettings()
        self._fd = fd
        self._own_fd = False
        self._lock = threading.Lock()
        self._axes = np.zeros(6)  # device axes (AXES order), normalised
        self._gripper = -1.0
        self._events: deque[Event] = deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._keys: TerminalKeys | None = None
        self.read_error: str | None = None
        perm = []
        for a in self.settings.axes:
            perm.append((AXES.index(a.lstrip("-")), -1.0 if a.startswith("-") else 1.0))
        self._perm = perm

    # ------------------------------------------------------------ parsing (per device)
    def feed(self, data: bytes) -> None:
        """Parse one read's bytes from the device."""
        raise NotImplementedError

    def read_size(self) -> int:
        return 4096

    def find_device(self) -> str:
        raise UserError(f"{self.name}: no device path given and none found")

    # ------------------------------------------------------------ state
    def set_axes(self, values: dict[str, float]) -> None:
        with self._lock:
            for k, v in values.items():
                self._axes[AXES.index(k)] = v

    def push(self, event: Event) -> None:
        with self._lock:
            self._events.append(event)

    def button(self, index: int, pressed: bool) -> None:
        """A device button changed: a mapped event fires on press; "gripper" toggles on press."""
        what = self.settings.buttons.get(index)
        if not pressed or what is None:
            return
        if what == "gripper":
            with self._lock:
                self._gripper = -self._gripper
        else:
            self.push(Event(what))

    def axes(self) -> np.ndarray:
        """The six action axes after mapping, deadzone and scaling (dx, dy, dz, droll, dpitch, dyaw)."""
        with self._lock:
            raw = self._axes.copy()
        v = np.array([s * raw[i] for i, s in self._perm])
        v = apply_deadzone(v, self.settings.deadzone)
        v[:3] *= self.settings.scale_translation
        v[3:] *= self.settings.scale_rotation
        return v

    @property
    def gripper(self) -> float:
        with self._lock:
            return self._gripper

    # ------------------------------------------------------------ Teleoperator
    def connect(self, rig: Rig | None = None) -> None:
        if rig is not None:
            shape = tuple(rig.action_feature.shape)
            if shape != (self.action_dim,):
                raise UserError(f"teleoperator {self.name} gives 7-d delta-pose actions, rig {rig.name} takes "
                                f"{list(shape)}: set the arm's action to delta_pose, or use a leader arm")
        if self._fd is None:
            path = self.settings.path or self.find_device()
            try:
                self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            except OSError as e:
                raise UserError(f"teleoperator '{self.name}': cannot open {path}: {e.strerror} "
                                "(is it plugged in, and readable by this user?)") from None
            self._own_fd = True
        self._stop.clear()
        self._thread = threading.Thread(target=self._read_loop, name=f"teleop-{self.name}", daemon=True)
        self._thread.start()
        if self.settings.keys:
            tty = self.settings.keys_tty
            if tty is not None or os.isatty(0):
                self._keys = TerminalKeys(tty or "/dev/tty", self._on_key, self.settings.key_hold_s)
                self._keys.start()

    def _read_loop(self) -> None:
        assert self._fd is not None
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._fd], [], [], 0.05)
                if not ready:
                    continue
                data = os.read(self._fd, self.read_size())
            except OSError as e:  # unplugged
                self.read_error = f"{self.name}: device read failed: {e.strerror or e}"
                return
            if not data:  # end of a recording, or the writer closed
                time.sleep(0.01)
                continue
            self.feed(data)

    def _on_key(self, key: str) -> None:
        ev = OPERATOR_KEYS.get(key)
        if ev is not None:
            self.push(ev)

    def disconnect(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None
        if self._keys is not None:
            self._keys.close()
            self._keys = None
        if self._own_fd and self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._own_fd = False

    def act(self, observation: Observation) -> tuple[np.ndarray, bool]:
        del observation
        if self.read_error:
            from robolearn.rigs.base import RigError

            raise RigError(self.read_error)
        a = np.zeros(7, np.float32)
        a[:6] = self.axes()
        a[6] = self.gripper
        return a, True

    def events(self) -> Iterable[Event]:
        with self._lock:
            out = list(self._events)
            self._events.clear()
        return out


# ----------------------------------------------------------------------------- terminal keys

# Operator keys shared by every device (the keyboard teleop adds motion keys).
OPERATOR_KEYS: dict[str, Event] = {
    "enter": Event.START,
    "k": Event.KEEP,
    "y": Event.SUCCESS,
    "n": Event.FAILURE,
    "backspace": Event.DISCARD,
    "x": Event.DISCARD,
    "r": Event.RESET,
    "esc": Event.QUIT,
    "ctrl-c": Event.QUIT,
}

_ESCAPES = {b"[A": "up", b"[B": "down", b"[C": "right", b"[D": "left", b"OA": "up", b"OB": "down",
            b"OC": "right", b"OD": "left", b"[H": "home", b"[F": "end", b"[5~": "pageup", b"[6~": "pagedown"}
_CONTROL = {b"\r": "enter", b"\n": "enter", b"\x7f": "backspace", b"\x08": "backspace", b" ": "space",
            b"\t": "tab", b"\x03": "ctrl-c", b"\x04": "ctrl-d"}


class KeyParser:
    """Terminal bytes -> key names (``a``, ``enter``, ``up``, ``esc`` ...), across read boundaries."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> list[str]:
        buf = self._pending + data
        self._pending = b""
        keys: list[str] = []
        i = 0
        while i < len(buf):
            c = buf[i:i + 1]
            if c == b"\x1b":
                rest = buf[i + 1:]
                if not rest:  # maybe the start of a sequence split across reads
                    self._pending = c
                    break
                for seq, name in _ESCAPES.items():
                    if rest.startswith(seq):
                        keys.append(name)
                        i += 1 + len(seq)
                        break
                else:
                    if rest[:1] in (b"[", b"O") and (len(rest) < 2 or (len(rest) < 3 and rest[1:2].isdigit())):
                        self._pending = buf[i:]  # an incomplete sequence
                        break
                    if rest[:1] == b"[":  # an unknown CSI sequence: skip to its final byte
                        j = 1
                        while j < len(rest) and not (0x40 <= rest[j] <= 0x7E):
                            j += 1
                        i += 2 + j
                        continue
                    keys.append("esc")
                    i += 1
                continue
            if c in _CONTROL:
                keys.append(_CONTROL[c])
            elif 0x20 < buf[i] < 0x7F:
                keys.append(c.decode())
            i += 1
        return keys

    def flush(self) -> list[str]:
        """A lone ESC with nothing after it was the Escape key."""
        out = ["esc"] if self._pending == b"\x1b" else []
        self._pending = b""
        return out


class TerminalKeys:
    """Reads keys from a terminal in cbreak mode (no echo, no line buffering; Ctrl-C still signals)
    on a thread, calling ``on_key(name)`` per key; restores the terminal on ``close``."""

    def __init__(self, tty: str | int, on_key: Callable[[str], None], hold_s: float = 0.3) -> None:
        self.on_key = on_key
        self._own = isinstance(tty, str)
        self.fd = os.open(tty, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY) if isinstance(tty, str) else tty
        self._saved = None
        self._parser = KeyParser()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        import termios
        import tty as ttymod

        if os.isatty(self.fd):
            self._saved = termios.tcgetattr(self.fd)
            ttymod.setcbreak(self.fd, termios.TCSANOW)
        self._thread = threading.Thread(target=self._loop, name="teleop-keys", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self.fd], [], [], 0.05)
                if not ready:
                    for k in self._parser.flush():
                        self.on_key(k)
                    continue
                data = os.read(self.fd, 1024)
            except OSError:
                return
            if not data:
                time.sleep(0.01)
                continue
            for k in self._parser.feed(data):
                self.on_key(k)

    def close(self) -> None:
        import termios

        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None
        if self._saved is not None:
            try:
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            except termios.error:
                pass
            self._saved = None
        if self._own:
            os.close(self.fd)
            self._own = False
