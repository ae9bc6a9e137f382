"""What is connected: RealSense devices (through the SDK) and video devices (through sysfs)."""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path
from typing import Any


def realsense_devices() -> tuple[list[dict[str, str]], str | None]:
    """Connected RealSense devices (serial, model, firmware, usb, product_line) and, when the SDK is
    missing or fails, why none could be listed."""
    try:
        import pyrealsense2 as rs
    except ImportError:
        return [], "pyrealsense2 is not installed (pip install 'pyrealsense2>=2.58')"
    from robolearn.hardware.cameras.realsense import device_facts

    try:
        return [device_facts(d) for d in rs.context().query_devices()], None
    except RuntimeError as e:
        return [], f"librealsense could not query devices: {e}"


def video_devices(sysfs: str = "/sys/class/video4linux", dev: str = "/dev") -> list[dict[str, Any]]:
    """Video4Linux capture nodes: path, name (from sysfs) and whether this user may open it."""
    out: list[dict[str, Any]] = []
    nodes = sorted(glob.glob(os.path.join(dev, "video*")), key=lambda p: int(re.sub(r"\D", "", p) or 0))
    for node in nodes:
        name_file = Path(sysfs) / Path(node).name / "name"
        name = name_file.read_text().strip() if name_file.is_file() else ""
        out.append({"path": node, "name": name, "readable": os.access(node, os.R_OK | os.W_OK)})
    return out


def list_hardware() -> dict[str, Any]:
    rs_devs, rs_note = realsense_devices()
    return {"realsense": rs_devs, "realsense_note": rs_note, "video": video_devices()}


def format_hardware(d: dict[str, Any]) -> str:
    lines = []
    if d["realsense"]:
        lines.append(f"RealSense devices ({len(d['realsense'])}):")
        for r in d["realsense"]:
            lines.append(f"  {r.get('serial', '?'):<14} {r.get('model', '?'):<28} firmware {r.get('firmware', '?'):<12} "
                         f"USB {r.get('usb', '?')}")
    else:
        lines.append("No RealSense devices connected" + (f" ({d['realsense_note']})." if d["realsense_note"] else "."))
    if d["video"]:
        lines.append(f"Video devices ({len(d['video'])}):")
        for v in d["video"]:
            lines.append(f"  {v['path']:<14} {v['name'] or '?'}" + ("" if v["readable"] else "  (no permission)"))
    else:
        lines.append("No video devices (/dev/video*).")
    return "\n".join(lines)
