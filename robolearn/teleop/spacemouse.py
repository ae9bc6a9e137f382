"""3Dconnexion SpaceMouse through its raw HID reports (Linux hidraw; the bytes hidapi also returns).

The reports, as the devices send them:

- report 1, 7 bytes (SpaceNavigator, SpaceMouse Pro and other older models): translation x, y, z as
  little-endian int16;
- report 1, 13 bytes (SpaceMouse Wireless / Compact and newer firmware): translation and rotation in
  one report, six little-endian int16;
- report 2, 7 bytes: rotation rx, ry, rz (older models);
- report 3: the buttons as a little-endian bit mask (bit i = button i).

Axis values span about +-350 counts; ``full_scale`` maps that to 1.
"""

from __future__ import annotations

import glob
import os
import struct

from robolearn.errors import UserError
from robolearn.teleop.devices import DeviceTeleop, TeleopSettings

VENDORS = (0x046D, 0x256F)  # Logitech (older 3Dconnexion devices) and 3Dconnexion
FULL_SCALE = 350.0


def parse_report(report: bytes) -> tuple[dict[str, float], int | None]:
    """One HID report -> (axes it carries, raw counts; button mask or None)."""
    if not report:
        return {}, None
    rid, body = report[0], report[1:]
    if rid == 1 and len(body) >= 12:
        x, y, z, rx, ry, rz = struct.unpack_from("<6h", body)
        return {"x": x, "y": y, "z": z, "rx": rx, "ry": ry, "rz": rz}, None
    if rid == 1 and len(body) >= 6:
        x, y, z = struct.unpack_from("<3h", body)
        return {"x": x, "y": y, "z": z}, None
    if rid == 2 and len(body) >= 6:
        rx, ry, rz = struct.unpack_from("<3h", body)
        return {"rx": rx, "ry": ry, "rz": rz}, None
    if rid == 3:
        return {}, int.from_bytes(body, "little")
    return {}, None


def find_spacemouse() -> str:
    """The first hidraw node of a 3Dconnexion device."""
    for node in sorted(glob.glob("/sys/class/hidraw/hidraw*")):
        try:
            uevent = open(os.path.join(node, "device", "uevent")).read()
        except OSError:
            continue
        fields = dict(line.split("=", 1) for line in uevent.splitlines() if "=" in line)
        try:
            _, vendor, product = fields.get("HID_ID", "").split(":")
        except ValueError:
            continue
        name = fields.get("HID_NAME", "").lower()
        if int(vendor, 16) in VENDORS and ("3dconnexion" in name or "space" in name or int(vendor, 16) == 0x256F):
            return f"/dev/{os.path.basename(node)}"
    raise UserError("teleoperator 'spacemouse': no SpaceMouse found (no 3Dconnexion hidraw device); plug it in, "
                    "or set teleop.path "
                    "to its /dev/hidrawN (and make it readable: a udev rule with MODE=\"0666\")")


class SpaceMouseTeleop(DeviceTeleop):
    """Six axes from the puck, buttons to the gripper and operator events (see ``settings.buttons``)."""

    name = "spacemouse"

    def __init__(self, settings: TeleopSettings | None = None, fd: int | None = None,
                 full_scale: float = FULL_SCALE) -> None:
        super().__init__(settings, fd)
        self.full_scale = full_scale
        self._buttons = 0

    def find_device(self) -> str:
        return find_spacemouse()

    def read_size(self) -> int:
        return 64  # hidraw returns one report per read

    def feed(self, data: bytes) -> None:
        axes, buttons = parse_report(data)
        if axes:
            self.set_axes({k: v / self.full_scale for k, v in axes.items()})
        if buttons is not None:
            changed = buttons ^ self._buttons
            self._buttons = buttons
            for i in range(changed.bit_length()):
                if changed >> i & 1:
                    self.button(i, bool(buttons >> i & 1))
