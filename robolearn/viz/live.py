"""Live views of a running loop (record, finetune, deploy): what the loop sees, streamed to Rerun.

The loop calls :meth:`LiveView.log_tick` / :meth:`LiveView.log_chunk`, which return at once. A separate
*process* owns the Rerun recording and does all the logging: Rerun's Python side (building archetypes,
Arrow conversion) in a thread of the loop's process would hold its GIL for milliseconds at a time and
delay control ticks, and so would a queue's feeder thread. The loop's process has no helper thread:
each new camera frame is copied once into its stream's shared-memory ring
(:class:`robolearn.hardware.shm.ShmRing`, a few slots), and everything small (proprioception, the
command, scalars, chunks, which ring slots hold this tick's frames) goes as one pickled datagram on a
non-blocking Unix socket. When the logging process falls behind, a full ring or socket drops the
*view* and counts it (``dropped_views``); the loop's frames and commands are never touched, and the
loop never waits.

Entity paths (``live/``): ``<stream>/<key>`` camera images and depth at each frame's own device and
host time (a frame is logged once, when its device time changes); ``control/<key>`` measured
proprioception; ``action`` the command sent this tick; ``measured`` an explicitly measured arm state;
``scalars/<name>`` reward, progress and the like; ``chunk/<name>`` the action chunk being executed /
computed (a tensor, and a 3-D end-effector path once an ``*eef_pos`` has been seen);
``stats/<stream>/fps``, ``stats/dropped_views``. Camera images larger than 320x240 are logged as JPEG
(``image_quality``, 85; None keeps them raw); depth stays exact. Timelines: ``t`` (the caller's clock, seconds),
``tick`` (every ``log_tick`` call, kept or dropped), and per frame ``t_device`` / ``t_host``.
"""

from __future__ import annotations

import errno
import multiprocessing as mp
import os
import pickle
import signal
import socket
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from robolearn.errors import UserError
from robolearn.features import CONTROL_STREAM
from robolearn.viz import APP_ID, open_sink, require_rerun

MAX_PLOT_DIMS = 32
SKIP_KEYS = ("sim_state",)  # exact simulator states: kept to re-render images, not to be looked at
DEFAULT_POS_SCALE = 0.05  # OSC_POSE: metres of end-effector target offset per unit of action
START_TIMEOUT_S = 120.0
NICE = 10  # the logging process's niceness
# Live views JPEG-compress camera images above this size (a 640x480 RGB frame: 0.9 MB raw, ~60 KB as JPEG),
# so a viewer across a network keeps up; smaller ones (simulated cameras) stay exact.
COMPRESS_ABOVE_PIXELS = 320 * 240


def _td(t: float) -> Any:
    return np.timedelta64(int(round(float(t) * 1e9)), "ns")


class LiveView:
    """A non-blocking handle on a logging process (see the module docstring). Build with :func:`make_view`.

    ``log_tick`` belongs to the control loop's thread; ``log_chunk`` may also come from one other thread
    (an inference thread computing the next chunk): each message is one atomic datagram."""

    def __init__(self, spec: str, queue_size: int = 64, pos_scale: float | None = DEFAULT_POS_SCALE,
                 stats_every_s: float = 1.0, features: Mapping[str, Mapping[str, Any]] | None = None,
                 action_names: Any = None, ring_frames: int = 4,
                 camera_rings: Mapping[str, str] | None = None, image_quality: int | None = 85) -> None:
        # Units and names come from the rig's features: a Sample carries values and times only.
        keys = {k: f for stream in (features or {}).values() for k, f in stream.items()}
        # Streams whose frames already live in shared memory (a real rig's camera rings): the logging
        # process reads them there itself, and the loop sends none of their frames.
        self._external = set(camera_rings or ())
        options = {"pos_scale": pos_scale, "stats_every_s": stats_every_s, "camera_rings": dict(camera_rings or {}),
                   "image_quality": image_quality,
                   "depth_scale": {k: f.depth_scale for k, f in keys.items() if getattr(f, "depth_scale", None)},
                   "names": {**{k: tuple(f.names) for k, f in keys.items() if getattr(f, "names", None)},
                             "action": tuple(action_names) if action_names else None}}
        self.ring_frames = ring_frames
        # Datagram semantics: a message goes in whole or not at all, so a full socket drops a view
        # cleanly. The buffer holds about ``queue_size`` small messages (frames travel in the rings).
        self._sock, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, max(queue_size, 2) * 4096)
        self._sock.setblocking(False)
        ctx = mp.get_context("spawn")  # no fork of a process holding MuJoCo, torch or device handles
        self._logged = ctx.Value("q", 0, lock=False)
        parent, ready = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_run, args=(spec, options, child, self._logged, ready),
                                 name="robolearn-live-view", daemon=True)
        self._proc.start()
        child.close()
        ready.close()
        if not parent.poll(START_TIMEOUT_S):
            self._proc.kill()
            raise UserError(f"the live view ({spec}) did not start within {START_TIMEOUT_S:.0f} s")
        try:
            ok, msg = parent.recv()
        except EOFError:  # it died before it could say why
            self._proc.join(5)
            ok, msg = False, f"its process exited at start (exit code {self._proc.exitcode})"
        parent.close()
        if not ok:
            self._proc.join(5)
            raise UserError(f"live view {spec}: {msg}")
        self.where: str = msg
        self.dropped_views = 0
        self.ticks = 0
        self._closed = False
        self._rings: dict[str, Any] = {}
        self._checked: set[str] = set()
        self._last_dev: dict[str, float] = {}
        for stream, feats in (features or {}).items():
            if stream != CONTROL_STREAM and feats and stream not in self._external:
                self._new_ring(stream, {k: (f.shape, f.dtype) for k, f in feats.items()})

    @property
    def logged_ticks(self) -> int:
        """Ticks the logging process has logged so far."""
        return int(self._logged.value)

    # ------------------------------------------------------------------ the loop's side (never blocks)
    def _send(self, item: tuple) -> bool:
        if self._closed:
            return False
        try:
            self._sock.send(pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL))
            return True
        except (BlockingIOError, InterruptedError):
            self.dropped_views += 1
        except OSError as e:
            if e.errno == errno.EMSGSIZE:  # larger than the socket buffer: this view only
                self.dropped_views += 1
            else:  # the logging process is gone: stop viewing, keep running
                self._closed = True
        return False

    def _frame(self, stream: str, sample: Any) -> tuple[str, int] | None:
        """Copy a new frame into its stream's shared-memory ring; None when the ring is full (the logging
        process is behind) or the frame was already sent."""
        if self._last_dev.get(stream) == sample.t_device:
            return None
        ring = self._rings.get(stream)
        if ring is None or stream not in self._checked:
            specs = {k: (tuple(np.shape(v)), np.asarray(v).dtype.name) for k, v in sample.values.items()}
            if ring is None or {k: (s.shape, s.dtype) for k, s in ring.specs.items()} != specs:
                ring = self._new_ring(stream, specs)
            self._checked.add(stream)
        if not ring.has_room():
            self.dropped_views += 1
            return None
        self._last_dev[stream] = sample.t_device
        return ring.name, ring.write(sample.values, ring.count, sample.t_device, sample.t_host)

    def _new_ring(self, stream: str, specs: Mapping[str, Any]) -> Any:
        """A stream's ring, its pages touched now: first writes into fresh shared memory fault in every
        page, milliseconds for a few 640x480 frames, which belong before the loop, not in a tick."""
        from robolearn.hardware.shm import ShmRing

        old = self._rings.pop(stream, None)
        if old is not None:
            old.close()
        ring = ShmRing.create(specs, self.ring_frames)
        ring.blocking = True  # has_room() then tells whether the logging process has caught up
        np.frombuffer(ring._shm.buf, np.uint8)[ShmRing.nbytes_for({}, ring.capacity):] = 0  # noqa: SLF001
        self._rings[stream] = ring
        return ring

    def log_tick(self, t: float, obs: Mapping[str, Any] | None = None, *, action: np.ndarray | None = None,
                 measured: np.ndarray | None = None, scalars: Mapping[str, float] | None = None) -> None:
        """This tick's observation (rig ``Observation``: stream -> ``Sample``), command, measured state and
        scalars, at ``t`` seconds on the caller's clock. Returns at once."""
        self.ticks += 1
        if self._closed:
            return
        control, frames = None, {}
        for stream, sample in (obs or {}).items():
            if stream == CONTROL_STREAM:
                control = _pack({k: v for k, v in sample.values.items() if k not in SKIP_KEYS})
            elif stream not in self._external:
                ref = self._frame(stream, sample)
                if ref is not None:
                    frames[stream] = ref
        self._send(("tick", self.ticks, float(t), self.dropped_views, control, frames,
                    None if action is None else _pack({"": action}), None if measured is None else _pack({"": measured}),
                    {k: float(v) for k, v in scalars.items() if v is not None} if scalars else None))

    def log_chunk(self, t: float, name: str, chunk: np.ndarray) -> None:
        """An action chunk (steps, action dims): ``executing`` or ``computing``. Returns at once."""
        self._send(("chunk", self.ticks, float(t), self.dropped_views, name, np.asarray(chunk)))

    def close(self, timeout: float = 30.0) -> None:
        """Let the logging process log what it was sent, flush and exit (waits up to ``timeout`` seconds)."""
        if self._closed and not self._proc.is_alive():
            self._release()
            return
        self._closed = True
        try:
            self._sock.settimeout(timeout)
            self._sock.send(pickle.dumps(None))
        except OSError:
            pass
        self._proc.join(timeout)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
        self._release()

    def _release(self) -> None:
        self._sock.close()
        for ring in self._rings.values():
            ring.close()
        self._rings.clear()

    def __enter__(self) -> LiveView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _run(spec: str, options: dict[str, Any], sock: socket.socket, logged: Any, conn: Any) -> None:
    """The logging process: open the sink, then log items until the None that ``close`` sends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the loop's; close() ends this process
    try:
        # Below every thread of the loop's process: a normal-priority thread of it that holds the GIL
        # must never wait for a CPU behind the view (the real-time loop would wait on that GIL).
        os.nice(NICE)
    except OSError:
        pass
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: never outlive the loop
    except (OSError, AttributeError):
        pass
    try:
        rr = require_rerun()
        rec = rr.RecordingStream(APP_ID, recording_id=f"live-{time.time_ns()}")
        where = open_sink(rec, spec)
        rec.send_recording_name("live view")
    except Exception as e:  # noqa: BLE001 - reported to the loop's process, in one line
        conn.send((False, str(e)))
        return
    conn.send((True, where))
    conn.close()
    logger = _Logger(rr, rec, logged, **options)
    try:
        logger.drain(sock)
    finally:
        for ring in (*logger.rings.values(), *logger.cameras.values()):
            ring.close()
    rec.flush()
    if spec.startswith("serve"):  # the web viewer lives as long as this process: give it the data first
        time.sleep(0.5)
    rec.disconnect()


class _Logger:
    """Turns queued items into Rerun log calls (in the logging process)."""

    def __init__(self, rr: Any, rec: Any, logged: Any, pos_scale: float | None, stats_every_s: float,
                 depth_scale: dict[str, float], names: dict[str, Any], camera_rings: dict[str, str],
                 image_quality: int | None) -> None:
        self.rr, self.rec, self.logged = rr, rec, logged
        self.pos_scale, self.stats_every_s = pos_scale, stats_every_s
        self.depth_scale, self.names = depth_scale, names
        self._frames: dict[str, int] = {}
        self._eef: np.ndarray | None = None
        self._named: set[str] = set()
        self._dropped = 0
        self.image_quality = image_quality
        self.rings: dict[str, Any] = {}
        self.cameras: dict[str, Any] = {}  # a real rig's camera rings, read here directly
        self._camera_seen: dict[str, int] = {}
        for stream, name in camera_rings.items():
            from robolearn.hardware.shm import ShmRing

            # The rings' creator is the loop's process, which spawned this one: attach as its child.
            self.cameras[stream] = ShmRing.attach(name)
            self._camera_seen[stream] = self.cameras[stream].count

    def drain(self, sock: socket.socket) -> None:
        rr, rec = self.rr, self.rec
        t_stats = time.monotonic()
        seen: dict[str, int] = {}
        # With camera rings to watch, wake up often enough to follow a 30-60 fps camera.
        sock.settimeout(0.01 if self.cameras else self.stats_every_s)
        while True:
            try:
                data = sock.recv(1 << 22)
            except TimeoutError:
                data = b"_"
            except OSError:
                return
            if not data:  # the loop's process is gone
                return
            item = () if data == b"_" else pickle.loads(data)
            if item is None:
                break
            if self.cameras:
                self._poll_cameras()
            try:
                if item:
                    self._dropped = item[3]
                    if item[0] == "tick":
                        self._tick(*item[1:3], *item[4:])
                    else:
                        self._chunk(*item[1:3], *item[4:])
            except Exception as e:  # noqa: BLE001 - a bad item must not end the view
                rec.log("live/errors", rr.TextLog(f"{type(e).__name__}: {e}", level="WARN"))
            now = time.monotonic()
            if now - t_stats >= self.stats_every_s:
                for stream, n in self._frames.items():
                    rec.log(f"live/stats/{stream}/fps", rr.Scalars((n - seen.get(stream, 0)) / (now - t_stats)))
                    seen[stream] = n
                rec.log("live/stats/dropped_views", rr.Scalars(float(self._dropped)))
                t_stats = now

    def _poll_cameras(self) -> None:
        """The newest frame of each watched camera ring, when there is a new one (older ones are views
        this process had no time for: skipped). Its ``t`` is its host time (the loop's clock)."""
        for stream, ring in self.cameras.items():
            n = ring.count
            if n <= self._camera_seen[stream]:
                continue
            e = ring.latest(copy=True)
            self._camera_seen[stream] = n
            if e is None:
                continue
            self.rec.set_time("t", duration=_td(e.t_host))
            self.rec.disable_timeline("tick")
            self._log_frame(stream, e)

    def _log_frame(self, stream: str, sample: Any) -> None:
        rr, rec = self.rr, self.rec
        self._frames[stream] = self._frames.get(stream, 0) + 1
        rec.set_time("t_device", duration=_td(sample.t_device))
        rec.set_time("t_host", duration=_td(sample.t_host))
        for key, v in sample.values.items():
            v = np.asarray(v)
            if v.dtype == np.uint8 and v.ndim == 3:
                image = rr.Image(v)
                if self.image_quality and v.shape[0] * v.shape[1] > COMPRESS_ABOVE_PIXELS:
                    image = image.compress(jpeg_quality=self.image_quality)
                rec.log(f"live/{stream}/{key}", image)
            elif v.dtype == np.uint16 and v.ndim == 2:
                rec.log(f"live/{stream}/{key}", rr.DepthImage(v, meter=1.0 / self.depth_scale.get(key, 0.001)))
            else:
                self._series(f"live/{stream}/{key}", v)
        rec.disable_timeline("t_device")
        rec.disable_timeline("t_host")

    def _series(self, path: str, values: Any, names: Any = None) -> None:
        v = np.asarray(values, np.float64).ravel()
        if v.size > MAX_PLOT_DIMS:
            return
        if path not in self._named:
            self._named.add(path)
            names = list(names) if names is not None and len(names) == v.size else None
            if v.size > 1 or names:
                label = path.rsplit("/", 1)[-1]
                self.rec.log(path, self.rr.SeriesLines(names=names or [f"{label}[{i}]" for i in range(v.size)]),
                             static=True)
        self.rec.log(path, self.rr.Scalars(v))

    def _tick(self, tick: int, t: float, control: Any, frames: Any, action: Any, measured: Any, scalars: Any) -> None:
        rr, rec = self.rr, self.rec
        rec.set_time("tick", sequence=tick)
        rec.set_time("t", duration=_td(t))
        for key, v in _unpack(control).items():
            self._series(f"live/control/{key}", v, self.names.get(key))
            if key.endswith("eef_pos") and np.shape(v) == (3,):
                self._eef = np.asarray(v, np.float32)
                rec.log("live/scene/eef", rr.Points3D([self._eef]))
        for stream, (name, index) in frames.items():
            ring = self.rings.get(stream)
            if ring is None or ring.name != name:
                from robolearn.hardware.shm import ShmRing

                ring = self.rings[stream] = ShmRing.attach(name)
            sample = ring.read(index, copy=True)
            ring.ack(index + 1)
            if sample is None:  # overwritten already (cannot happen while the loop waits for acks)
                continue
            self._log_frame(stream, sample)
        if action is not None:
            self._series("live/action", _unpack(action)[""], self.names.get("action"))
        if measured is not None:
            self._series("live/measured", _unpack(measured)[""])
        for name, value in (scalars or {}).items():
            if value is not None:
                self._series(f"live/scalars/{name}", value)
        self.logged.value += 1

    def _chunk(self, tick: int, t: float, name: str, chunk: Any) -> None:
        rr, rec = self.rr, self.rec
        rec.set_time("tick", sequence=tick)
        rec.set_time("t", duration=_td(t))
        chunk = np.asarray(chunk, np.float32)
        rec.log(f"live/chunk/{name}", rr.Tensor(chunk, dim_names=("step", "action")))
        if self._eef is not None and self.pos_scale and chunk.ndim == 2 and chunk.shape[1] >= 3:
            rec.log(f"live/scene/chunk_{name}", rr.LineStrips3D([eef_path(self._eef, chunk, self.pos_scale)]))


def _pack(values: Mapping[str, Any]) -> tuple:
    """Small arrays as one float64 buffer plus their layout: pickling a dozen tiny NumPy arrays one by one
    costs ~10 us each on the loop's side, one buffer a few."""
    arrays = [np.asarray(v, np.float64) for v in values.values()]
    buf = np.concatenate([a.ravel() for a in arrays]).tobytes() if arrays else b""
    return tuple(values), tuple(a.shape for a in arrays), buf


def _unpack(packed: tuple | None) -> dict[str, np.ndarray]:
    if packed is None:
        return {}
    keys, shapes, buf = packed
    flat, out, i = np.frombuffer(buf, np.float64), {}, 0
    for k, shape in zip(keys, shapes, strict=True):
        n = int(np.prod(shape, dtype=np.int64))
        out[k] = flat[i:i + n].reshape(shape)
        i += n
    return out


def eef_path(start: np.ndarray, chunk: np.ndarray, pos_scale: float) -> np.ndarray:
    """The end-effector path a chunk of delta-pose actions commands from ``start``: each step moves the
    target by ``action[:3] * pos_scale`` metres (OSC_POSE), so (steps + 1, 3) points."""
    deltas = np.asarray(chunk, np.float32)[:, :3] * np.float32(pos_scale)
    return np.concatenate([np.asarray(start, np.float32)[None], start + np.cumsum(deltas, axis=0)])


def make_view(spec: str | None, **options: Any) -> LiveView | None:
    """A live view from a ``--view`` value: ``spawn`` (the default for a bare ``--view``),
    ``save:FILE.rrd``, ``serve`` or ``serve:PORT``; None without one. ``options`` go to :class:`LiveView`
    (``features`` and ``action_names`` of the rig give depth units and series names)."""
    if spec is None:
        return None
    require_rerun()  # a missing extra fails here, in one line, before a process starts
    kind = (spec or "spawn").partition(":")[0]
    if kind not in ("spawn", "save", "serve"):
        raise UserError(f"unknown view {spec!r}: use spawn, save:FILE.rrd, serve or serve:PORT")
    return LiveView(spec or "spawn", **options)
