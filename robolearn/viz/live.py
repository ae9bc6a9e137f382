"""Live views of a running loop (record, finetune, deploy): what the loop sees, streamed to Rerun.

The loop calls :meth:`LiveView.log_tick` / :meth:`LiveView.log_chunk`, which only put references to
the caller's arrays on a bounded queue (no copies: rigs hand out fresh arrays every tick) and return.
A daemon thread drains the queue into a Rerun recording stream. When the viewer or the thread falls
behind and the queue is full, the *view* is dropped and counted (``dropped_views``); the loop's frames
and commands are never touched, and the loop never waits.

Entity paths (``live/``): ``<stream>/<key>`` camera images and depth at each frame's own device and
host time (a frame is logged once, when its device time changes); ``control/<key>`` measured
proprioception; ``action`` the command sent this tick; ``measured`` an explicitly measured arm state;
``scalars/<name>`` reward, progress and the like; ``chunk/<name>`` the action chunk being executed /
computed (a tensor, and a 3-D end-effector path when the observation has an ``*eef_pos``);
``stats/<stream>/fps``, ``stats/dropped_views``. Timelines: ``t`` (the caller's clock, seconds),
``tick`` (every ``log_tick`` call, kept or dropped), and per frame ``t_device`` / ``t_host``.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from robolearn.features import CONTROL_STREAM
from robolearn.viz import APP_ID, open_sink, require_rerun

MAX_PLOT_DIMS = 32
SKIP_KEYS = ("sim_state",)  # exact simulator states: kept to re-render images, not to be looked at
DEFAULT_POS_SCALE = 0.05  # OSC_POSE: metres of end-effector target offset per unit of action


def _td(t: float) -> Any:
    return np.timedelta64(int(round(float(t) * 1e9)), "ns")


class LiveView:
    """A non-blocking Rerun logger for one running loop (see the module docstring)."""

    def __init__(self, rec: Any, where: str, queue_size: int = 64, pos_scale: float | None = DEFAULT_POS_SCALE,
                 stats_every_s: float = 1.0, features: Mapping[str, Mapping[str, Any]] | None = None,
                 action_names: Any = None) -> None:
        self.rec = rec
        # Units and names come from the rig's features: a Sample carries values and times only.
        keys = {k: f for stream in (features or {}).values() for k, f in stream.items()}
        self._depth_scale = {k: f.depth_scale for k, f in keys.items() if getattr(f, "depth_scale", None)}
        self._key_names = {k: f.names for k, f in keys.items() if getattr(f, "names", None)}
        self._key_names["action"] = action_names
        self.where = where
        self.pos_scale = pos_scale
        self.stats_every_s = stats_every_s
        self._q: queue.Queue = queue.Queue(maxsize=queue_size)
        self.dropped_views = 0
        self.logged_ticks = 0
        self.ticks = 0
        self._closed = False
        self._last_dev: dict[str, float] = {}
        self._frames: dict[str, int] = {}
        self._eef: np.ndarray | None = None
        self._named: set[str] = set()
        self._thread = threading.Thread(target=self._drain, name="robolearn-live-view", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the loop's side (never blocks)
    def _put(self, item: tuple) -> None:
        if self._closed:
            return
        try:
            self._q.put_nowait(item)
        except queue.Full:
            self.dropped_views += 1

    def log_tick(self, t: float, obs: Mapping[str, Any] | None = None, *, action: np.ndarray | None = None,
                 measured: np.ndarray | None = None, scalars: Mapping[str, float] | None = None) -> None:
        """This tick's observation (rig ``Observation``: stream -> ``Sample``), command, measured state and
        scalars, at ``t`` seconds on the caller's clock. Returns at once."""
        self.ticks += 1
        self._put(("tick", self.ticks, float(t), obs, action, measured, dict(scalars) if scalars else None))

    def log_chunk(self, t: float, name: str, chunk: np.ndarray) -> None:
        """An action chunk (steps, action dims): ``executing`` or ``computing``. Returns at once."""
        self._put(("chunk", self.ticks, float(t), name, chunk))

    def close(self, timeout: float = 10.0) -> None:
        """Log what is queued, then flush and disconnect the stream (waits up to ``timeout`` seconds)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._q.put(None, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(timeout)
        self.rec.flush()
        self.rec.disconnect()

    def __enter__(self) -> LiveView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the logging thread
    def _drain(self) -> None:
        rr = require_rerun()
        next_stats = time.monotonic() + self.stats_every_s
        t_stats = time.monotonic()
        seen: dict[str, int] = {}
        while True:
            try:
                item = self._q.get(timeout=self.stats_every_s)
            except queue.Empty:
                item = ()
            if item is None:
                break
            try:
                if item and item[0] == "tick":
                    self._log_tick(rr, *item[1:])
                elif item:
                    self._log_chunk(rr, *item[1:])
            except Exception as e:  # noqa: BLE001 - a view must never take the loop down
                self.rec.log("live/errors", rr.TextLog(f"{type(e).__name__}: {e}", level="WARN"))
            now = time.monotonic()
            if now >= next_stats:
                dt = max(now - t_stats, 1e-9)
                for stream, n in self._frames.items():
                    self.rec.log(f"live/stats/{stream}/fps", rr.Scalars((n - seen.get(stream, 0)) / dt))
                    seen[stream] = n
                self.rec.log("live/stats/dropped_views", rr.Scalars(float(self.dropped_views)))
                t_stats, next_stats = now, now + self.stats_every_s

    def _series(self, rr: Any, path: str, values: np.ndarray, names: Any = None) -> None:
        v = np.asarray(values, np.float64).ravel()
        if v.size > MAX_PLOT_DIMS:
            return
        if path not in self._named:
            self._named.add(path)
            names = list(names) if names is not None and len(names) == v.size else None
            if v.size > 1 or names:
                self.rec.log(path, rr.SeriesLines(names=names or [f"{path.rsplit('/', 1)[-1]}[{i}]" for i in range(v.size)]),
                             static=True)
        self.rec.log(path, rr.Scalars(v))

    def _log_tick(self, rr: Any, tick: int, t: float, obs: Any, action: Any, measured: Any, scalars: Any) -> None:
        rec = self.rec
        rec.set_time("tick", sequence=tick)
        rec.set_time("t", duration=_td(t))
        self.logged_ticks += 1
        for stream, sample in (obs or {}).items():
            if stream == CONTROL_STREAM:
                for key, v in sample.values.items():
                    if key in SKIP_KEYS:
                        continue
                    self._series(rr, f"live/control/{key}", v, self._key_names.get(key))
                    if key.endswith("eef_pos") and np.shape(v) == (3,):
                        self._eef = np.asarray(v, np.float32)
                        rec.log("live/scene/eef", rr.Points3D([self._eef]))
                continue
            if self._last_dev.get(stream) == sample.t_device:
                continue  # the same frame as last tick
            self._last_dev[stream] = sample.t_device
            self._frames[stream] = self._frames.get(stream, 0) + 1
            rec.set_time("t_device", duration=_td(sample.t_device))
            rec.set_time("t_host", duration=_td(sample.t_host))
            for key, v in sample.values.items():
                v = np.asarray(v)
                if v.dtype == np.uint8 and v.ndim == 3:
                    rec.log(f"live/{stream}/{key}", rr.Image(v))
                elif v.dtype == np.uint16 and v.ndim == 2:
                    scale = self._depth_scale.get(key, 0.001)
                    rec.log(f"live/{stream}/{key}", rr.DepthImage(v, meter=1.0 / scale))
                else:
                    self._series(rr, f"live/{stream}/{key}", v)
            rec.disable_timeline("t_device")
            rec.disable_timeline("t_host")
        if action is not None:
            self._series(rr, "live/action", action, self._key_names.get("action"))
        if measured is not None:
            self._series(rr, "live/measured", measured)
        for name, value in (scalars or {}).items():
            if value is not None:
                self._series(rr, f"live/scalars/{name}", value)

    def _log_chunk(self, rr: Any, tick: int, t: float, name: str, chunk: Any) -> None:
        rec = self.rec
        rec.set_time("tick", sequence=tick)
        rec.set_time("t", duration=_td(t))
        chunk = np.asarray(chunk, np.float32)
        rec.log(f"live/chunk/{name}", rr.Tensor(chunk, dim_names=("step", "action")))
        if self._eef is not None and self.pos_scale and chunk.ndim == 2 and chunk.shape[1] >= 3:
            path = eef_path(self._eef, chunk, self.pos_scale)
            rec.log(f"live/scene/chunk_{name}", rr.LineStrips3D([path]))


def eef_path(start: np.ndarray, chunk: np.ndarray, pos_scale: float) -> np.ndarray:
    """The end-effector path a chunk of delta-pose actions commands from ``start``: each step moves the
    target by ``action[:3] * pos_scale`` metres (OSC_POSE), so (steps + 1, 3) points."""
    deltas = np.asarray(chunk, np.float32)[:, :3] * np.float32(pos_scale)
    return np.concatenate([np.asarray(start, np.float32)[None], start + np.cumsum(deltas, axis=0)])


def make_view(spec: str | None, **options: Any) -> LiveView | None:
    """A live view from a ``--view`` value: ``spawn`` (the default for a bare ``--view``),
    ``save:FILE.rrd``, ``serve`` or ``serve:PORT``; None without one. ``options`` go to :class:`LiveView`."""
    if spec is None:
        return None
    rr = require_rerun()
    rec = rr.RecordingStream(APP_ID, recording_id=f"live-{time.time_ns()}")
    where = open_sink(rec, spec or "spawn")
    rec.send_recording_name("live view")
    return LiveView(rec, where, **options)
