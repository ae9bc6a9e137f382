"""A gamepad through Linux evdev (/dev/input/eventN): the kernel's ``input_event`` records, parsed
here, with the axis ranges read from the device through the ``evdev`` package (optional:
``pip install 'robolearn[gamepad]'``; without it the pad must be named by ``teleop.path`` and
xpad's ranges are assumed). The event codes are the kernel's (linux/input-event-codes.h).

Default layout (an Xbox-style pad): left stick x/y, right stick up/down z and left/right yaw, the
d-pad roll and pitch, the right trigger closes the gripper (analog), the right bumper toggles it.
Buttons: start START, A success, B failure, Y keep, X discard, back reset, the guide button quit.
"""

from __future__ import annotations

import glob
import struct
from types import SimpleNamespace

from robolearn.errors import UserError
from robolearn.teleop.base import Event
from robolearn.teleop.devices import DeviceTeleop, TeleopSettings

EVENT = struct.Struct("llHHi")  # struct input_event: timeval, type, code, value
# The kernel's event codes (a stable ABI, linux/input-event-codes.h; evdev.ecodes has the same values).
ecodes = SimpleNamespace(
    EV_SYN=0, EV_KEY=1, EV_ABS=3, SYN_REPORT=0, ABS_X=0, ABS_Y=1, ABS_Z=2, ABS_RX=3, ABS_RY=4, ABS_RZ=5,
    ABS_HAT0X=16, ABS_HAT0Y=17, BTN_SOUTH=304, BTN_EAST=305, BTN_NORTH=307, BTN_WEST=308, BTN_TL=310,
    BTN_TR=311, BTN_SELECT=314, BTN_START=315, BTN_MODE=316,
)

# evdev axis -> (our axis, sign); stick "up" is negative on every pad.
STICKS = {ecodes.ABS_X: ("y", -1.0), ecodes.ABS_Y: ("x", -1.0), ecodes.ABS_RY: ("z", -1.0),
          ecodes.ABS_RX: ("rz", -1.0), ecodes.ABS_HAT0X: ("rx", 1.0), ecodes.ABS_HAT0Y: ("ry", -1.0)}
TRIGGER = ecodes.ABS_RZ
BUTTONS = {ecodes.BTN_START: Event.START, ecodes.BTN_SOUTH: Event.SUCCESS, ecodes.BTN_EAST: Event.FAILURE,
           ecodes.BTN_NORTH: Event.KEEP, ecodes.BTN_WEST: Event.DISCARD, ecodes.BTN_SELECT: Event.RESET,
           ecodes.BTN_MODE: Event.QUIT}
GRIPPER_TOGGLE = ecodes.BTN_TR
# Ranges when the device cannot be asked (a recording): xpad's sticks, hat and 8-bit triggers.
DEFAULT_RANGES = {ecodes.ABS_X: (-32768, 32767), ecodes.ABS_Y: (-32768, 32767), ecodes.ABS_RX: (-32768, 32767),
                  ecodes.ABS_RY: (-32768, 32767), ecodes.ABS_HAT0X: (-1, 1), ecodes.ABS_HAT0Y: (-1, 1),
                  ecodes.ABS_Z: (0, 255), ecodes.ABS_RZ: (0, 255)}


def parse_events(data: bytes) -> tuple[list[tuple[float, int, int, int]], bytes]:
    """Bytes read from an event device -> ((time, type, code, value), ...) and the incomplete tail."""
    n = len(data) // EVENT.size
    out = []
    for i in range(n):
        sec, usec, typ, code, value = EVENT.unpack_from(data, i * EVENT.size)
        out.append((sec + usec * 1e-6, typ, code, value))
    return out, data[n * EVENT.size:]


def _evdev():  # noqa: ANN202
    try:
        import evdev
    except ImportError:
        raise UserError("finding a gamepad and reading its axis ranges needs the evdev package: "
                        "pip install 'robolearn[gamepad]'") from None
    return evdev


def find_gamepad() -> str:
    """The first event device with a gamepad's south button and sticks."""
    InputDevice = _evdev().InputDevice  # noqa: N806

    for path in sorted(glob.glob("/dev/input/event*")):
        try:
            dev = InputDevice(path)
            caps = dev.capabilities()
            dev.close()
        except OSError:
            continue
        if ecodes.BTN_SOUTH in caps.get(ecodes.EV_KEY, []) and ecodes.EV_ABS in caps:
            return path
    raise UserError("teleoperator 'gamepad': no gamepad found under /dev/input (none with sticks and buttons, "
                    "or not readable by this user); plug one in or set teleop.path to its /dev/input/eventN")


class GamepadTeleop(DeviceTeleop):
    name = "gamepad"

    def __init__(self, settings: TeleopSettings | None = None, fd: int | None = None,
                 ranges: dict[int, tuple[int, int]] | None = None) -> None:
        super().__init__(settings, fd)
        self.ranges = dict(DEFAULT_RANGES, **(ranges or {}))
        self._tail = b""

    def find_device(self) -> str:
        return find_gamepad()

    def connect(self, rig=None) -> None:  # noqa: ANN001 - as the base
        if self._fd is None:  # a real device: ask it for its axis ranges
            InputDevice = _evdev().InputDevice  # noqa: N806
            path = self.settings.path or self.find_device()
            self.settings.path = path
            try:
                dev = InputDevice(path)
                for code, info in dev.capabilities(absinfo=True).get(ecodes.EV_ABS, []):
                    self.ranges[code] = (info.min, info.max)
                dev.close()
            except OSError as e:
                raise UserError(f"gamepad: cannot open {path}: {e.strerror}") from None
        super().connect(rig)

    def read_size(self) -> int:
        return EVENT.size * 64

    def _norm(self, code: int, value: int) -> float:
        lo, hi = self.ranges.get(code, (-32768, 32767))
        if code in (ecodes.ABS_Z, ecodes.ABS_RZ):
            return (value - lo) / max(hi - lo, 1)
        return max(-1.0, min(1.0, (2.0 * value - lo - hi) / max(hi - lo, 1)))

    def feed(self, data: bytes) -> None:
        events, self._tail = parse_events(self._tail + data)
        for _, typ, code, value in events:
            if typ == ecodes.EV_ABS:
                if code in STICKS:
                    axis, sign = STICKS[code]
                    self.set_axes({axis: sign * self._norm(code, value)})
                elif code == TRIGGER:
                    with self._lock:
                        self._gripper = -1.0 + 2.0 * self._norm(code, value)
            elif typ == ecodes.EV_KEY and value == 1:  # press (2 is auto-repeat, 0 release)
                if code in BUTTONS:
                    self.push(BUTTONS[code])
                elif code == GRIPPER_TOGGLE:
                    with self._lock:
                        self._gripper = 1.0 if self._gripper < 0 else -1.0
