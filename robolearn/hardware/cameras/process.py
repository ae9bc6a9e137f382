"""The camera process: one per camera, spawned by :func:`~robolearn.hardware.cameras.open_camera`.

It opens the camera's source (a RealSense device or recording, an OpenCV capture), drops the
warm-up frames, counts gaps in the device's frame numbers as dropped frames, and writes every
frame into the shared-memory ring the consumer created. A recording played non-real-time waits
for the consumer (ring back-pressure) and, with ``playback_speed`` > 0, for the recorded time
to come, so no frame is ever skipped. Whatever goes wrong is written into the ring as one line
for the consumer to raise.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from robolearn.hardware.cameras.base import CameraConfig
from robolearn.hardware.shm import ENDED, RUNNING, ShmRing, retain_heap

ORPHAN_CLOSE_S = 2.0  # an orphaned camera process gives the SDK this long to close, then exits


@dataclass
class Captured:
    """One frame as a source hands it over: arrays may be views of the driver's buffers (copied once,
    into the ring). ``t_device`` is in the source's own clock, ``t_host`` on the host's (seconds)."""

    arrays: dict[str, np.ndarray]
    frame_number: int
    t_device: float
    t_host: float


class EndOfStream(Exception):
    """A recording or video file has no more frames."""


class SourceError(Exception):
    """The source cannot go on; the message is what the consumer will see."""


class Source(ABC):
    """A camera as the camera process drives it."""

    # A recording played non-real-time: the producer waits for the consumer instead of overwriting.
    blocking: bool = False
    # Whether device times come from a recording (then paced by ``playback_speed``).
    recorded: bool = False

    @abstractmethod
    def open(self) -> dict:
        """Open the device; returns its facts (serial, model, depth_scale, clock, ...)."""

    @abstractmethod
    def read(self, timeout: float) -> Captured | None:
        """The next frame, None if none came within ``timeout`` s; raises :class:`EndOfStream`."""

    @abstractmethod
    def close(self) -> None:
        """Release the device. Safe to call twice."""


def make_source(cfg: CameraConfig, clock_origin: float | None) -> Source:
    if cfg.type in ("realsense", "playback"):
        from robolearn.hardware.cameras.realsense import RealSenseSource

        return RealSenseSource(cfg, clock_origin)
    from robolearn.hardware.cameras.uvc import UvcSource

    return UvcSource(cfg, clock_origin)


def camera_main(cfg: CameraConfig, ring_name: str, clock_origin: float | None, parent_pid: int) -> None:
    """Entry point of the camera process."""
    # Ctrl-C reaches the whole process group; the consumer decides when its cameras stop (close()).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    retain_heap()  # the SDK hands over a new frame buffer per frame
    if hasattr(os, "sched_setscheduler"):
        try:  # never a real-time policy by inheritance: a spinning SDK thread at SCHED_FIFO starves the machine
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        except OSError:
            pass
    try:  # a camera is a device: on a busy machine it must not lag behind its frame rate (root or CAP_SYS_NICE)
        os.setpriority(os.PRIO_PROCESS, 0, -5)
    except OSError:
        pass
    ring = ShmRing.attach(ring_name)
    holder: list[Source] = []
    try:
        src = make_source(cfg, clock_origin)
        holder.append(src)
        try:
            info = src.open()
        except (SourceError, EndOfStream) as e:
            ring.fail(str(e))
            return
        ring.set_info(info)
        ring.blocking = src.blocking
        ring.beat()
        ring.state = RUNNING
        _stream(cfg, ring, holder, clock_origin, parent_pid, info)
    except SourceError as e:
        ring.fail(str(e))
    except Exception as e:  # noqa: BLE001 - whatever it is, the consumer gets one line, the log the rest
        traceback.print_exc()
        ring.fail(f"{type(e).__name__}: {e}")
    finally:
        orphaned = os.getppid() != parent_pid
        if holder:
            if orphaned:  # nobody waits for this process: close the SDK, but never hang in it
                t = threading.Thread(target=_close_quietly, args=(holder[0],), daemon=True)
                t.start()
                t.join(ORPHAN_CLOSE_S)
            else:
                _close_quietly(holder[0])
        ring.close()
        if orphaned:  # an SDK thread left spinning must not outlive us either
            os._exit(0)


def _close_quietly(src: Source) -> None:
    try:
        src.close()
    except Exception:  # noqa: BLE001 - closing must not hide why the camera stopped
        traceback.print_exc()


@contextmanager
def _beating(ring: ShmRing, every_s: float = 0.05) -> Iterator[None]:
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every_s):
            ring.beat()

    t = threading.Thread(target=beat, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()


def _stream(cfg: CameraConfig, ring: ShmRing, holder: list[Source], clock_origin: float | None,
            parent_pid: int, info: dict) -> None:
    """Stream until stopped or the recording ends. ``holder[0]`` is the source in use (a loop reopens
    it), for the caller to close."""
    src = holder[0]
    warmup = cfg.warmup
    last_fn: int | None = None
    pace = src.recorded and src.blocking and cfg.playback_speed > 0
    pace_zero: tuple[float, float] | None = None  # (device time, host time) of the first paced frame
    fn_offset, t_offset, last_t = 0, 0.0, 0.0
    period = 1.0 / cfg.fps

    def should_stop() -> bool:
        return ring.stop_requested or os.getppid() != parent_pid

    while not should_stop():
        try:
            cap = src.read(0.05)
        except EndOfStream:
            if not cfg.loop or last_fn is None:
                ring.state = ENDED
                return
            # Start the recording again, continuing its frame numbers and times. Reopening takes a
            # while; the process is busy, not stalled, so it keeps its heartbeat meanwhile.
            with _beating(ring):
                src.close()
                src = holder[0] = make_source(cfg, clock_origin)
                src.open()
                fn_offset, t_offset = last_fn + 1, last_t + period
                first = None
                while first is None and not should_stop():
                    first = src.read(0.05)
            if first is None:
                return
            fn_offset -= first.frame_number
            t_offset -= first.t_device
            cap = first
        if cap is None:
            continue  # no heartbeat: the consumer sees a stall after timeout_s
        if warmup > 0:
            warmup -= 1
            ring.beat()
            continue
        cap.frame_number += fn_offset
        cap.t_device += t_offset
        if last_fn is not None and cap.frame_number > last_fn + 1:
            ring.add_dropped(cap.frame_number - last_fn - 1)
        if pace:
            now = time.time()
            due = None if pace_zero is None else pace_zero[1] + (cap.t_device - pace_zero[0]) / cfg.playback_speed
            if due is None or now - due > max(0.5, 2 * period):
                # First frame, or far behind: release frames at the recorded rate from here on rather than
                # in a long burst. A short lag (a busy CPU, a loop restart) is caught up, so the recorded
                # rate holds on average; a consumer that held us up re-anchors below.
                pace_zero, due = (cap.t_device, now), now
            while time.time() < due and not should_stop():  # no heartbeat: a recorded silence is one
                time.sleep(min(0.002, max(0.0, due - time.time())))
        while not ring.has_room():  # non-real-time: wait for the consumer rather than overwrite
            if should_stop():
                return
            ring.beat()
            time.sleep(0.0005)
            pace_zero = None  # held up: re-anchor the pacing at the next frame
        if src.recorded:  # a recording is "received" when it is handed over, as a live frame would be
            cap.t_host = time.time() - (clock_origin or 0.0)
        if last_fn is None and info.get("clock") == "pending":  # known from the first frame; before it is out
            ring.set_info({**info, "clock": getattr(src, "clock", "") or "unknown"})
        ring.write(cap.arrays, cap.frame_number, cap.t_device, cap.t_host)
        last_fn, last_t = cap.frame_number, cap.t_device
