"""Camera configuration, frames, and the consumer's handle on a camera process.

A camera runs in its own process (see :mod:`robolearn.hardware.cameras.process`) and writes every
frame into a shared-memory ring (:mod:`robolearn.hardware.shm`). :class:`CameraStream` is the
consumer's side: it reads the latest frame, the frame nearest a time, or every frame since one
it already has, counts dropped frames, and turns a camera that stops delivering into a
:class:`~robolearn.rigs.RigError` within ``timeout_s``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from robolearn.errors import ConfigError
from robolearn.features import Feature
from robolearn.hardware.shm import ENDED, FAILED, RUNNING, STARTING, RingEntry, ShmRing
from robolearn.rigs.base import RigError

# RealSense D400 inter-camera sync modes (rs.option.inter_cam_sync_mode).
HW_SYNC_MODES = {"master": 1, "slave": 2, "full_slave": 3}
# Frames thrown away after start while auto-exposure settles; playback keeps every recorded frame.
DEFAULT_WARMUP = {"realsense": 30, "uvc": 5, "playback": 0, "file": 0}


@dataclass
class CameraConfig:
    """One camera of a rig file.

    ``type``: ``realsense`` (a live device, by ``serial``), ``uvc`` (OpenCV: ``path`` is a video device
    such as /dev/video0 or a video file, which then plays like a recording), ``playback`` (a RealSense
    recording, ``.bag`` or ``.db3``, standing in for a camera)."""

    name: str = field(metadata={"nonempty": True})
    type: Literal["realsense", "uvc", "playback"] = "realsense"
    serial: str | None = None
    path: Path | None = None
    width: int = field(default=640, metadata={"min": 1, "max": 8192})
    height: int = field(default=480, metadata={"min": 1, "max": 8192})
    fps: int = field(default=30, metadata={"min": 1, "max": 1000})
    depth: bool = False
    align_depth: bool = True  # depth re-projected onto the colour image (same pixel grid)
    warmup_frames: int | None = field(default=None, metadata={"min": 0})  # None: per type (DEFAULT_WARMUP)
    timeout_s: float = field(default=0.5, metadata={"gt": 0})  # no frame for this long: a stalled camera
    start_timeout_s: float = field(default=15.0, metadata={"gt": 0})  # process start to the first frame
    hw_sync: Literal["master", "slave", "full_slave"] | None = None
    global_time: bool = True  # RealSense: device timestamps mapped onto the host clock
    ring_frames: int = field(default=32, metadata={"min": 4, "max": 4096})  # shared-memory ring size
    # Playback (and video files): never skip a frame; the camera waits for the consumer. ``realtime``
    # plays at the recorded pace and may skip frames the consumer is too slow for, as a live camera.
    realtime: bool = False
    # Non-real-time pacing: 1.0 releases frames at the recorded rate, 2.0 twice as fast, 0 as fast as
    # the consumer takes them.
    playback_speed: float = field(default=1.0, metadata={"min": 0})
    loop: bool = False  # start the recording again at its end (frame numbers and times keep growing)

    def validate(self) -> None:
        if self.type == "playback":
            if self.path is None:
                raise ConfigError("a playback camera needs path: a RealSense recording (.bag or .db3)", key="path")
            if self.path.suffix.lower() not in (".bag", ".db3"):
                raise ConfigError(f"expected a RealSense recording (.bag or .db3), got {str(self.path)!r}",
                                  key="path")
            if self.hw_sync is not None:
                raise ConfigError("hardware sync needs a live camera, not a recording", key="hw_sync")
        if self.type == "uvc":
            if self.path is None:
                raise ConfigError("a uvc camera needs path: a video device (/dev/video0) or a video file",
                                  key="path")
            if self.depth:
                raise ConfigError("a uvc camera has no depth stream; use depth: false", key="depth")
            if self.hw_sync is not None:
                raise ConfigError("hardware sync is a RealSense feature", key="hw_sync")
        if self.type == "realsense" and self.path is not None:
            raise ConfigError("a live realsense camera takes serial, not path (use type: playback for a "
                              "recording)", key="path")

    @property
    def warmup(self) -> int:
        if self.warmup_frames is not None:
            return self.warmup_frames
        is_file = self.type == "uvc" and self.path is not None and not str(self.path).startswith("/dev/")
        return DEFAULT_WARMUP["file" if is_file else self.type]

    @property
    def label(self) -> str:
        """How errors name the camera: ``wrist (123456)`` or ``front (front.db3)``."""
        what = self.serial or (self.path.name if self.path is not None else None)
        return f"{self.name} ({what})" if what else self.name

    @property
    def image_key(self) -> str:
        return f"{self.name}_image"

    @property
    def depth_key(self) -> str:
        return f"{self.name}_depth"

    def ring_specs(self) -> dict[str, tuple[tuple[int, ...], str]]:
        specs = {self.image_key: ((self.height, self.width, 3), "uint8")}
        if self.depth:
            specs[self.depth_key] = ((self.height, self.width), "uint16")
        return specs


@dataclass(frozen=True)
class Frame:
    """One camera frame: ``values`` maps ``<name>_image`` (and ``<name>_depth``) to arrays.

    ``t_device``: the camera's capture time (seconds; RealSense global time is on the host clock);
    ``t_host``: when the camera process received it. ``index`` counts frames written to the ring."""

    values: dict[str, np.ndarray]
    t_device: float
    t_host: float
    frame_number: int
    index: int


class PlaybackEnded(RigError):
    """A recording standing in for a camera has been played to its end."""


class CameraStream:
    r"""The consumer's handle on one camera process; see the module docstring.

    Reads return copies by default (a frame kept by a recorder must not change under it);
    ``copy=False`` gives read-only views into shared memory, valid until the camera wraps around the
    ring (``ring_frames`` frames later; :meth:`still_valid` tells). :meth:`frames_since` is meant for
    one consumer per camera (the recorder); any number may call :meth:`latest` and :meth:`nearest`.

    Another producer (a simulator's rendered camera) plugs in behind the same handle: create the
    ring with ``ShmRing.create(cfg.ring_specs(), cfg.ring_frames)``, start a process that attaches
    to it, calls ``set_info({"depth_scale": ..., "clock": ...})``, sets ``state = RUNNING`` and
    ``write``\ s each frame, and wrap them in ``CameraStream(cfg, ring, process, clock_origin)``."""

    def __init__(self, cfg: CameraConfig, ring: ShmRing, process: Any, clock_origin: float | None) -> None:
        self.cfg, self._ring, self._process = cfg, ring, process
        self.clock_origin = clock_origin
        self.name = cfg.name
        self._dropped_base = 0
        self._overrun = 0  # frames overwritten before frames_since could read them
        # Ring index of recently handed-out frames by frame number: frames_since(n) resumes right after n
        # and counts what the ring overwrote in between.
        self._handed: dict[int, int] = {}
        self._closed = False
        self._info: dict[str, Any] = {}

    # ------------------------------------------------------------------ facts
    @property
    def info(self) -> dict[str, Any]:
        """What the camera process found: serial, model, firmware, depth_scale, clock, fps, file..."""
        if (not self._info or self._info.get("clock") == "pending") and self._ring.state in (RUNNING, ENDED):
            try:
                self._info = self._ring.info
            except ValueError:  # being rewritten (the clock, at the first frame): ask again next time
                pass
        return self._info

    @property
    def serial(self) -> str | None:
        return self.info.get("serial") or self.cfg.serial

    @property
    def label(self) -> str:
        """How errors name the camera: ``wrist (123456789012)``, with the device's (or recording's) serial."""
        serial = self.serial
        return f"{self.name} ({serial})" if serial else self.cfg.label

    @property
    def depth_scale(self) -> float | None:
        """Metres per depth unit, as the device (or the recording) reports it."""
        return self.info.get("depth_scale") if self.cfg.depth else None

    @property
    def clock(self) -> str:
        """Where ``t_device`` comes from: realsense-global, realsense-hardware, recording, host..."""
        return self.info.get("clock", "host")

    @property
    def features(self) -> dict[str, Feature]:
        cfg = self.cfg
        out = {cfg.image_key: Feature((cfg.height, cfg.width, 3), "uint8", "rgb")}
        if cfg.depth:
            out[cfg.depth_key] = Feature((cfg.height, cfg.width), "uint16", "depth", depth_scale=self.depth_scale)
        return out

    @property
    def dropped_frames(self) -> int:
        """Frames lost since the last :meth:`reset_dropped`: gaps in the camera's frame numbers plus
        frames the ring overwrote before :meth:`frames_since` read them."""
        return self._ring.dropped + self._overrun - self._dropped_base

    def reset_dropped(self) -> None:
        """Start counting dropped frames from zero (at the start of an episode)."""
        self._dropped_base = self._ring.dropped + self._overrun

    @property
    def pid(self) -> int | None:
        return getattr(self._process, "pid", None)

    # ------------------------------------------------------------------ health
    def check(self) -> None:
        """Raise :class:`RigError` if the camera failed, died, ended or stalled."""
        if self._closed:
            raise RigError(f"camera {self.label} is closed")
        ring = self._ring
        state = ring.state
        if state == FAILED:
            raise RigError(f"camera {self.label}: {ring.error}")
        if state == ENDED:
            if ring.acked >= ring.count:
                raise PlaybackEnded(f"camera {self.label}: the recording ended after {ring.count} frames")
            return
        alive = self._process is None or self._process.is_alive()
        if not alive:
            code = self._process.exitcode
            detail = f": {ring.error}" if ring.error else ""
            raise RigError(f"camera {self.label}: its process exited (code {code}){detail}")
        if state == RUNNING:
            age = time.time() - ring.heartbeat
            if age > self.cfg.timeout_s:
                raise RigError(f"camera {self.label} delivered no frame for {age:.2f} s (timeout_s "
                               f"{self.cfg.timeout_s:g}): unplugged, stalled, or its process is hung")

    def _frame(self, e: RingEntry) -> Frame:
        self._handed[e.frame_number] = e.index
        if len(self._handed) > 4 * self._ring.capacity:
            for k in list(self._handed)[: len(self._handed) // 2]:
                del self._handed[k]
        return Frame(e.values, e.t_device, e.t_host, e.frame_number, e.index)

    # ------------------------------------------------------------------ reads
    def latest(self, copy: bool = True) -> Frame:
        """The newest frame."""
        self.check()
        e = self._ring.latest(copy)
        if e is None:
            raise RigError(f"camera {self.label} has delivered no frame yet")
        self._ring.ack(e.index + 1)
        return self._frame(e)

    def nearest(self, t: float, clock: Literal["host", "device"] = "host", copy: bool = True) -> Frame:
        """The frame whose ``t_host`` (or ``t_device``) is closest to ``t``, among those in the ring."""
        self.check()
        e = self._ring.nearest(t, clock, copy)
        if e is None:
            raise RigError(f"camera {self.label} has delivered no frame yet")
        self._ring.ack(e.index + 1)
        return self._frame(e)

    def frames_since(self, frame_number: int | None = None, copy: bool = True) -> list[Frame]:
        """Every frame newer than ``frame_number`` (None: every frame still in the ring), oldest first.

        Called at least once per ``ring_frames`` frames, it returns each frame exactly once; frames the
        camera overwrote in between are counted in :attr:`dropped_frames`."""
        ring = self._ring
        self.check()
        known = self._handed.get(frame_number) if frame_number is not None else None
        start = known + 1 if known is not None else ring.available().start
        entries, missed = ring.since(start, copy)
        if frame_number is not None:
            entries = [e for e in entries if e.frame_number > frame_number]
        if known is not None:
            self._overrun += missed
        if entries:
            ring.ack(entries[-1].index + 1)
        return [self._frame(e) for e in entries]

    def still_valid(self, frame: Frame) -> bool:
        """Whether the slot behind a ``copy=False`` frame still holds it."""
        return self._ring.holds(frame.index)

    # ------------------------------------------------------------------ lifecycle
    def close(self, timeout: float = 5.0) -> None:
        """Stop the camera process and free the ring. Idempotent."""
        if self._closed:
            return
        self._closed = True
        p = self._process
        if p is not None:
            self._ring.request_stop()
            p.join(timeout)
            if p.is_alive():
                p.terminate()
                p.join(2.0)
            if p.is_alive():
                p.kill()
                p.join(2.0)
        self._ring.close()

    def __enter__(self) -> CameraStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close(timeout=1.0)
        except Exception:  # noqa: BLE001 - interpreter teardown
            pass


def open_camera(cfg: CameraConfig, clock_origin: float | None = None, wait_first_frame: bool = True) -> CameraStream:
    """Start ``cfg``'s camera in its own (spawned) process writing into a new shared-memory ring.

    Returns once the camera delivers (its first frame, or only its start with ``wait_first_frame=False``),
    or raises :class:`RigError` naming the camera and the cause within ``cfg.start_timeout_s``.
    ``clock_origin`` (host ``time.time()`` seconds) is subtracted from ``t_host`` and from device times
    that are on the host clock (RealSense global time), so every stream of a rig shares one zero."""
    import multiprocessing as mp

    from robolearn.config import check_config
    from robolearn.hardware.cameras.process import camera_main

    check_config(cfg)
    if cfg.type in ("playback", "uvc") and cfg.path is not None and not str(cfg.path).startswith("/dev/"):
        if not cfg.path.is_file():
            from robolearn.errors import MissingFileError

            raise MissingFileError(f"camera {cfg.name}: {cfg.type} file not found: {cfg.path}")
    ring = ShmRing.create(cfg.ring_specs(), cfg.ring_frames)
    ctx = mp.get_context("spawn")
    proc = ctx.Process(target=camera_main, args=(cfg, ring.name, clock_origin, os.getpid()),
                       name=f"camera-{cfg.name}", daemon=True)
    proc.start()
    stream = CameraStream(cfg, ring, proc, clock_origin)
    deadline = time.time() + cfg.start_timeout_s
    try:
        while True:
            state = ring.state
            if state == FAILED:
                stream.check()
            if state == ENDED or (state == RUNNING and (not wait_first_frame or ring.count > 0)):
                break
            if not proc.is_alive():
                raise RigError(f"camera {cfg.label}: its process exited while starting (code {proc.exitcode})"
                               + (f": {ring.error}" if ring.error else ""))
            if time.time() > deadline:
                what = "start" if state == STARTING else "deliver a first frame"
                raise RigError(f"camera {cfg.label} did not {what} within {cfg.start_timeout_s:g} s "
                               "(start_timeout_s)")
            time.sleep(0.005)
    except BaseException:
        stream.close()
        raise
    return stream
