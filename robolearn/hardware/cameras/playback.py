"""RealSense recordings: reading what one holds, and writing one from arrays.

A recording stands in for a camera in a rig file (``type: playback``, ``path: x.db3``); the
camera process plays it through the SDK (:mod:`robolearn.hardware.cameras.realsense`).
:func:`write_recording` builds one with the SDK's own software device and recorder, frame by
frame with the given pixels, frame numbers and timestamps: how tests, benchmarks and the
simulated twin rig get RealSense recordings without a camera. pyrealsense2 2.59 writes ROS 2
``.db3`` files (and still plays older ``.bag`` files).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from robolearn.errors import MissingFileError, UserError


@dataclass
class RecordedFrame:
    """One colour (+ depth) frame to record; ``t_ms`` is the device timestamp in milliseconds."""

    color: np.ndarray  # (H, W, 3) uint8 RGB
    frame_number: int
    t_ms: float
    depth: np.ndarray | None = None  # (H, W) uint16, in units of the recording's depth scale
    depth_t_ms: float | None = None  # depth's own timestamp (defaults to t_ms)
    depth_frame_number: int | None = None


def _rs() -> Any:
    try:
        import pyrealsense2 as rs
    except ImportError:
        raise UserError("pyrealsense2 is not installed: pip install 'pyrealsense2>=2.58'") from None
    return rs


def _intrinsics(rs: Any, w: int, h: int, fov_x_deg: float = 69.0) -> Any:
    i = rs.intrinsics()
    i.width, i.height = w, h
    i.fx = i.fy = (w / 2) / np.tan(np.radians(fov_x_deg) / 2)
    i.ppx, i.ppy = w / 2, h / 2
    i.model, i.coeffs = rs.distortion.none, [0.0] * 5
    return i


def write_recording(path: str | os.PathLike, frames: Iterable[RecordedFrame], width: int, height: int,
                    fps: int = 30, depth: bool = True, depth_scale: float = 0.001, serial: str = "000000000001",
                    model: str = "Intel RealSense D435", domain: str = "global_time",
                    depth_to_color_m: tuple[float, float, float] = (0.015, 0.0, 0.0), realtime: bool = False,
                    single_sensor: bool = False) -> Path:
    """Record ``frames`` into a RealSense recording at ``path`` (``.db3``) through ``rs.software_device``
    and ``rs.recorder``; returns the path. Frames carry their own frame numbers and timestamps (in
    timestamp ``domain``: global_time, hardware_clock or system_time) so a recording can hold gaps.

    The recorder also stamps each frame with its own clock, which the SDK's real-time playback
    follows; ``realtime=True`` pushes frames spaced as their timestamps are (slower to write) so that
    a real-time playback runs at the frames' rate. Non-real-time playback does not need it.
    ``single_sensor=True`` puts colour and depth on one sensor, as a D405 has them."""
    rs = _rs()
    path = Path(path)
    if path.suffix != ".db3":
        raise UserError(f"{path}: pyrealsense2 >= 2.58 writes ROS 2 recordings; name the file .db3")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    dom = getattr(rs.timestamp_domain, domain)
    dev = rs.software_device()
    dev.register_info(rs.camera_info.serial_number, serial)
    dev.register_info(rs.camera_info.name, model)
    dev.register_info(rs.camera_info.firmware_version, "software")
    color_sensor = dev.add_sensor("RGB Camera")
    vs = rs.video_stream()
    vs.type, vs.index, vs.uid, vs.width, vs.height, vs.fps, vs.bpp, vs.fmt = \
        rs.stream.color, 0, 1, width, height, fps, 3, rs.format.rgb8
    vs.intrinsics = _intrinsics(rs, width, height)
    color_profile = color_sensor.add_video_stream(vs).as_video_stream_profile()
    sensors = [(color_sensor, color_profile)]
    if depth:
        depth_sensor = color_sensor if single_sensor else dev.add_sensor("Stereo Module")
        vd = rs.video_stream()
        vd.type, vd.index, vd.uid, vd.width, vd.height, vd.fps, vd.bpp, vd.fmt = \
            rs.stream.depth, 0, 2, width, height, fps, 2, rs.format.z16
        vd.intrinsics = _intrinsics(rs, width, height, 87.0)
        depth_profile = depth_sensor.add_video_stream(vd).as_video_stream_profile()
        depth_sensor.add_read_only_option(rs.option.depth_units, float(depth_scale))
        ext = rs.extrinsics()
        ext.rotation, ext.translation = [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0], list(depth_to_color_m)
        depth_profile.register_extrinsics_to(color_profile, ext)
        sensors.append((depth_sensor, depth_profile))
    recorder = rs.recorder(str(path), dev)
    rec_sensors = recorder.query_sensors()
    profiles = [[p for _, p in sensors]] if single_sensor and depth else [[p] for _, p in sensors]
    for rec_sensor, ps in zip(rec_sensors, profiles, strict=True):
        rec_sensor.open(ps if len(ps) > 1 else ps[0])
        rec_sensor.start(lambda f: None)  # the recorder writes frames on their way to this callback

    def push(sensor: Any, profile: Any, pixels: np.ndarray, bpp: int, fnum: int, t_ms: float,
             units: float | None = None) -> None:
        f = rs.software_video_frame()  # a fresh one per frame: the SDK keeps the buffer
        f.pixels = np.ascontiguousarray(pixels)
        f.stride, f.bpp = pixels.shape[1] * bpp, bpp
        f.timestamp, f.domain, f.frame_number, f.profile = float(t_ms), dom, int(fnum), profile
        if units is not None:
            f.depth_units = units
        sensor.on_video_frame(f)

    n, t_first, ms_first = 0, 0.0, 0.0
    try:
        for fr in frames:
            if realtime:
                if n == 0:
                    t_first, ms_first = time.perf_counter(), fr.t_ms
                time.sleep(max(0.0, t_first + (fr.t_ms - ms_first) / 1000.0 - time.perf_counter()))
            if fr.color.shape != (height, width, 3) or fr.color.dtype != np.uint8:
                raise UserError(f"frame {fr.frame_number}: colour must be uint8 {(height, width, 3)}, "
                                f"got {fr.color.dtype} {fr.color.shape}")
            push(color_sensor, color_profile, fr.color, 3, fr.frame_number, fr.t_ms)
            if depth:
                if fr.depth is None or fr.depth.shape != (height, width) or fr.depth.dtype != np.uint16:
                    raise UserError(f"frame {fr.frame_number}: depth must be uint16 {(height, width)}")
                push(sensors[1][0], sensors[1][1], fr.depth, 2,
                     fr.frame_number if fr.depth_frame_number is None else fr.depth_frame_number,
                     fr.t_ms if fr.depth_t_ms is None else fr.depth_t_ms, depth_scale)
            n += 1
    finally:
        for rec_sensor in rec_sensors:
            rec_sensor.stop()
            rec_sensor.close()
        del rec_sensors, recorder  # the recorder finishes the file when it is destroyed
    if n == 0:
        raise UserError(f"{path}: no frames to record")
    return path


def recording_info(path: str | os.PathLike) -> dict[str, Any]:
    """What a recording holds: device facts, streams (type, size, fps, format), depth scale, duration."""
    rs = _rs()
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"recording not found: {p}")
    from robolearn.hardware.cameras.realsense import device_facts

    try:
        dev = rs.context().load_device(str(p))
    except RuntimeError as e:
        raise UserError(f"cannot read recording {p}: {e}") from None
    pb = dev.as_playback()
    streams, depth_scale = [], None
    for s in dev.query_sensors():
        for prof in s.get_stream_profiles():
            v = prof.as_video_stream_profile() if prof.is_video_stream_profile() else None
            streams.append({"stream": str(prof.stream_type()).rsplit(".", 1)[-1],
                            "format": str(prof.format()).rsplit(".", 1)[-1], "fps": prof.fps(),
                            **({"width": v.width(), "height": v.height()} if v else {})})
        if s.is_depth_sensor():
            depth_scale = float(f"{s.as_depth_sensor().get_depth_scale():.7g}")  # float32 in the SDK
    return {**device_facts(dev), "file": str(p), "streams": streams, "depth_scale": depth_scale,
            "duration_s": pb.get_duration().total_seconds()}
