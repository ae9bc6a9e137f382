"""RealSense cameras through pyrealsense2: a live device by serial number, or a recording.

Both go through the same sensor-level path: colour (rgb8) and depth (z16) sensors are opened with
the configured resolution and rate, each delivers frames to a callback, and the camera process
pairs colour and depth frames by timestamp (colour leads; a frame without a partner within half
a frame period is dropped and shows up as a gap in the frame numbers). Depth is re-projected onto
the colour image by ``rs.align`` when ``align_depth`` is set. Device timestamps are in the
device's domain (global time, i.e. mapped onto the host clock, when ``global_time`` is on);
the host receive time is taken in the callback.

A recording (``.bag``, or ``.db3`` from SDK >= 2.58) is loaded as a playback device. Non-real-time
(the default for playback) the SDK waits for the callbacks, and the callbacks wait for the ring,
so no recorded frame is skipped.

This module imports pyrealsense2 and runs in the camera process only.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import numpy as np

from robolearn.hardware.cameras.base import HW_SYNC_MODES, CameraConfig
from robolearn.hardware.cameras.process import Captured, EndOfStream, Source, SourceError

_INSTALL_HINT = "pyrealsense2 is not installed: pip install 'pyrealsense2>=2.58' (bundles librealsense)"


def import_rs() -> Any:
    try:
        import pyrealsense2 as rs
    except ImportError:
        raise SourceError(_INSTALL_HINT) from None
    return rs


def device_facts(dev: Any) -> dict[str, str]:
    """Serial, model, firmware, USB type and product line of a device, where it reports them."""
    rs = import_rs()
    fields = {"serial": rs.camera_info.serial_number, "model": rs.camera_info.name,
              "firmware": rs.camera_info.firmware_version, "usb": rs.camera_info.usb_type_descriptor,
              "product_line": rs.camera_info.product_line}
    return {k: dev.get_info(v) for k, v in fields.items() if dev.supports(v)}


def _clock_name(rs: Any, domain: Any) -> str:
    return {rs.timestamp_domain.global_time: "global", rs.timestamp_domain.hardware_clock: "hardware",
            rs.timestamp_domain.system_time: "system"}.get(domain, str(domain).rsplit(".", 1)[-1])


class RealSenseSource(Source):
    def __init__(self, cfg: CameraConfig, clock_origin: float | None) -> None:
        self.cfg, self.origin = cfg, clock_origin or 0.0
        self.recorded = cfg.type == "playback"
        self.blocking = self.recorded and not cfg.realtime
        self._queue: queue.Queue = queue.Queue(maxsize=8)
        self._closing = threading.Event()
        self._sensors: list[Any] = []
        self._pending: dict[str, list[tuple[Any, float]]] = {"color": [], "depth": []}
        self._held: tuple[Any, ...] = ()  # frames whose buffers the last Captured views
        self._playback: Any = None
        self._resumer: threading.Thread | None = None
        self._stopped_at: float | None = None
        self._domain_checked = False
        self._clock = ""

    # ------------------------------------------------------------------ open
    def _device(self, rs: Any) -> Any:
        cfg = self.cfg
        self._ctx = rs.context()
        if self.recorded:
            try:
                dev = self._ctx.load_device(str(cfg.path))
            except RuntimeError as e:
                raise SourceError(f"cannot play {cfg.path}: {e}") from None
            pb = dev.as_playback()
            pb.set_real_time(bool(cfg.realtime))
            self._playback = pb
            return dev
        devices = list(self._ctx.query_devices())
        serials = [d.get_info(rs.camera_info.serial_number) for d in devices]
        if cfg.serial is None:
            if len(devices) != 1:
                raise SourceError(f"{len(devices)} RealSense devices connected ({', '.join(serials) or 'none'}); "
                                  "set serial")
            return devices[0]
        if cfg.serial not in serials:
            raise SourceError(f"RealSense {cfg.serial} is not connected (connected: {', '.join(serials) or 'none'})")
        return devices[serials.index(cfg.serial)]

    def _profile(self, rs: Any, dev: Any, stream: Any, fmt: Any) -> tuple[int, Any, Any]:
        """(sensor index, sensor, profile) of the stream at the configured size and rate."""
        cfg = self.cfg
        seen = []
        for idx, s in enumerate(dev.query_sensors()):
            for p in s.get_stream_profiles():
                if p.stream_type() != stream or not p.is_video_stream_profile():
                    continue
                v = p.as_video_stream_profile()
                seen.append(f"{v.width()}x{v.height()}@{p.fps()} {str(p.format()).rsplit('.', 1)[-1]}")
                fmts = (fmt, rs.format.bgr8) if stream == rs.stream.color else (fmt,)
                if (v.width(), v.height(), p.fps()) == (cfg.width, cfg.height, cfg.fps) and p.format() in fmts:
                    if not self.recorded and p.format() != fmt:
                        continue  # a live device: ask for the format we store
                    return idx, s, p
        what = "colour" if stream == rs.stream.color else "depth"
        where = f"recording {self.cfg.path}" if self.recorded else f"RealSense {dev.get_info(rs.camera_info.serial_number)}"
        listed = ", ".join(sorted(set(seen))[:12]) or "none"
        raise SourceError(f"{where} has no {what} stream {cfg.width}x{cfg.height}@{cfg.fps}; it has: {listed} "
                          "(set width, height and fps to one of these)")

    def open(self) -> dict:
        rs = import_rs()
        self.rs = rs
        cfg = self.cfg
        dev = self._device(rs)
        if self._playback is not None:
            self._playback.pause()  # start every sensor before the first frame is read
        ci, cs, cp = self._profile(rs, dev, rs.stream.color, rs.format.rgb8)
        self._bgr = cp.format() == rs.format.bgr8
        # Sensor index -> (sensor, profiles): a D405 gives colour and depth from one sensor.
        targets: dict[int, tuple[Any, list[Any]]] = {ci: (cs, [cp])}
        depth_scale = None
        if cfg.depth:
            di, ds, dp = self._profile(rs, dev, rs.stream.depth, rs.format.z16)
            targets.setdefault(di, (ds, []))[1].append(dp)
            # The SDK keeps the scale as float32: 7 significant digits are all it knows (0.001, not 0.0010000000475).
            depth_scale = float(f"{ds.as_depth_sensor().get_depth_scale():.7g}") if ds.is_depth_sensor() else None
            if not depth_scale:
                raise SourceError("the depth sensor reports no depth scale (depth_units)")
        self._align = rs.align(rs.stream.color) if cfg.depth and cfg.align_depth else None
        if self._align is not None:  # builds colour+depth framesets for rs.align from two loose frames
            self._stash: list[Any] = []
            self._composer = rs.processing_block(self._compose)
            self._composed = rs.frame_queue(2)
            self._composer.start(self._composed)
        if not self.recorded:
            for s, _ in targets.values():
                if cfg.global_time and s.supports(rs.option.global_time_enabled):
                    s.set_option(rs.option.global_time_enabled, 1)
            if cfg.hw_sync is not None:
                ds = dev.first_depth_sensor()
                if not ds.supports(rs.option.inter_cam_sync_mode):
                    raise SourceError(f"RealSense {cfg.serial} does not support hardware sync (inter_cam_sync_mode)")
                ds.set_option(rs.option.inter_cam_sync_mode, HW_SYNC_MODES[cfg.hw_sync])
        color = rs.stream.color
        for s, profiles in targets.values():
            s.open(profiles if len(profiles) > 1 else profiles[0])
            s.start(lambda f: self._on_frame(f, "color" if f.profile.stream_type() == color else "depth"))
            self._sensors.append(s)
        if self._playback is not None:
            # resume() can wait on the callbacks, which wait for read(): resume from a helper thread.
            self._resumer = threading.Thread(target=self._playback.resume, name="playback-resume", daemon=True)
            self._resumer.start()
        facts = device_facts(dev)
        return {**facts, "serial": facts.get("serial", cfg.serial), "depth_scale": depth_scale,
                "width": cfg.width, "height": cfg.height, "fps": cfg.fps,
                "file": str(cfg.path) if self.recorded else None, "clock": "pending",
                "sdk": getattr(rs, "__version__", "")}

    # ------------------------------------------------------------------ frames
    def _on_frame(self, f: Any, kind: str) -> None:
        t_host = time.time()
        f.keep()
        item = (kind, f, t_host)
        if not self.blocking:
            try:
                self._queue.put_nowait(item)  # a live camera never waits; a lost frame is a numbering gap
            except queue.Full:
                pass
            return
        while not self._closing.is_set():  # playback: hold the SDK until there is room (no skipping)
            try:
                self._queue.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def _compose(self, color: Any, source: Any) -> None:
        source.frame_ready(source.allocate_composite_frame([self._stash.pop(), color]))

    def _pair(self) -> tuple[Any, float, Any] | None:
        colors, depths = self._pending["color"], self._pending["depth"]
        if not self.cfg.depth:
            if colors:
                c, t = colors.pop(0)
                return c, t, None
            return None
        half = 500.0 / self.cfg.fps
        for waiting in (colors, depths):  # one stream stopped: keep a few (SDK frames are pooled), no stream out
            del waiting[:-8]
        while colors and depths:
            (c, t), (d, _) = colors[0], depths[0]
            dt = c.get_timestamp() - d.get_timestamp()
            if abs(dt) <= half:
                colors.pop(0)
                depths.pop(0)
                return c, t, d
            if dt > 0:
                depths.pop(0)  # a depth frame whose colour frame never came
            else:
                colors.pop(0)  # a colour frame without depth: dropped, a gap in the frame numbers
        return None

    def read(self, timeout: float) -> Captured | None:
        deadline = time.time() + timeout
        while True:
            pair = self._pair()
            if pair is not None:
                return self._capture(*pair)
            try:
                kind, f, t = self._queue.get(timeout=max(0.0, min(0.02, deadline - time.time())))
                self._pending[kind].append((f, t))
                self._stopped_at = None
                continue
            except queue.Empty:
                pass
            if self._playback is not None and self._playback.current_status() == self.rs.playback_status.stopped:
                # The SDK says stopped once the file is read; give the last callbacks a moment.
                self._stopped_at = self._stopped_at or time.time()
                if time.time() - self._stopped_at > 0.03 and self._queue.empty():
                    raise EndOfStream()
            if time.time() >= deadline:
                return None

    def _capture(self, c: Any, t_host: float, d: Any) -> Captured:
        rs, cfg = self.rs, self.cfg
        if d is not None and self._align is not None:
            self._stash.append(d)
            self._composer.invoke(c)
            fs = self._align.process(self._composed.wait_for_frame(1000).as_frameset())
            c, d = fs.get_color_frame(), fs.get_depth_frame()
        domain = c.get_frame_timestamp_domain()
        if not self._domain_checked:
            self._domain_checked = True
            name = _clock_name(rs, domain)
            self._clock = ("recording-" if self.recorded else "realsense-") + name
        t_device = c.get_timestamp() / 1000.0
        # Global and system time are on the host clock: share the rig's zero. A recording keeps its own.
        if not self.recorded and domain in (rs.timestamp_domain.global_time, rs.timestamp_domain.system_time):
            t_device -= self.origin
        image = np.asanyarray(c.get_data())
        if self._bgr:
            image = image[..., ::-1]
        arrays = {cfg.image_key: image}
        if d is not None:
            arrays[cfg.depth_key] = np.asanyarray(d.get_data())
        self._held = (c, d)
        return Captured(arrays, int(c.get_frame_number()), t_device, t_host - self.origin)

    @property
    def clock(self) -> str:
        return self._clock

    def close(self) -> None:
        self._closing.set()
        while True:  # release callbacks blocked on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._resumer is not None:  # never leave the SDK call running into teardown (it aborts)
            while self._resumer.is_alive():
                try:
                    self._queue.get(timeout=0.01)
                except queue.Empty:
                    pass
            self._resumer = None
        for s in self._sensors:
            for step in (s.stop, s.close):
                try:
                    step()
                except RuntimeError:
                    pass
        self._sensors = []
        self._pending = {"color": [], "depth": []}
        self._held = ()
