"""A recorded episode into Rerun: every stream on its own clocks, as the store keeps it.

Entity paths, per episode N (``episode_N/``):

- ``<camera>/<key>``: ``rr.Image`` for RGB, ``rr.DepthImage`` with its metres per unit for depth, one
  row per stored frame at the frame's own device and host timestamps;
- ``control/<key>``: proprioception and object state as time series (names from the store's features);
- ``action``: the executed actions, one series per dimension with its name;
- ``columns/<name>``: per-step columns (reward, progress, intervention, ...);
- ``scene/eef``: the end-effector path in 3-D where the store has an ``*eef_pos`` key;
- ``info``: a text document with the episode's success, task, source, seed, dropped frames, notes.

Timelines: ``t_device`` and ``t_host`` (the two clocks, seconds, as durations; exactly the store's
values at nanosecond resolution) and ``step`` (control tick; a camera frame takes the latest tick at or
before its device time). Pick one in the viewer's timeline menu.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from robolearn.data.schema import CONTROL_STREAM
from robolearn.data.store import DemoStore
from robolearn.errors import UserError
from robolearn.viz import APP_ID, open_sink, require_rerun

# Low-dim vectors wider than this (MuJoCo's full state) are not plotted: nobody reads 70 curves.
MAX_PLOT_DIMS = 32
# Exact simulator states are kept to re-render images, not to be looked at.
SKIP_KEYS = ("sim_state",)
FRAME_BATCH = 64  # frames read from the store at a time: long episodes never sit in memory whole


def ns(t: np.ndarray | float) -> np.ndarray:
    """Seconds -> integer nanoseconds (rounded), the resolution Rerun keeps times at."""
    return np.round(np.asarray(t, np.float64) * 1e9).astype(np.int64)


def _td(t: np.ndarray) -> np.ndarray:
    return ns(t).astype("timedelta64[ns]")


@dataclass
class ViewSummary:
    """What was logged: per episode, per entity path, how many rows."""

    where: str
    rows: dict[int, dict[str, int]] = field(default_factory=dict)


def _names(spec: Any, dim: int, key: str) -> list[str]:
    if spec is not None and getattr(spec, "names", None):
        return list(spec.names)
    return [f"{key}[{i}]" for i in range(dim)]


def _series(rec: Any, rr: Any, path: str, values: np.ndarray, times: dict[str, np.ndarray],
            names: list[str]) -> int:
    """Rows (T, D) as D named series, all at once (``send_columns``)."""
    values = np.asarray(values, np.float64).reshape(len(values), -1)
    indexes = [rr.TimeColumn(tl, sequence=t) if tl == "step" else rr.TimeColumn(tl, duration=_td(t))
               for tl, t in times.items()]
    rec.log(path, rr.SeriesLines(names=names), static=True)
    rec.send_columns(path, indexes=indexes, columns=rr.Scalars.columns(scalars=values))
    return len(values)


def log_episode(rec: Any, store: DemoStore, episode: int, prefix: str | None = None) -> dict[str, int]:
    """Log one episode of ``store`` into recording stream ``rec``; returns rows per entity path."""
    rr = require_rerun()
    prefix = f"episode_{episode}" if prefix is None else prefix
    info = store.episode_info(episode)
    rows: dict[str, int] = {}
    ctrl_t = {"dev": store.timestamps(CONTROL_STREAM, episode, "device"),
              "host": store.timestamps(CONTROL_STREAM, episode, "host")}
    steps = np.arange(len(ctrl_t["dev"]), dtype=np.int64)
    times = {"t_device": ctrl_t["dev"], "t_host": ctrl_t["host"], "step": steps}

    for key, spec in store.streams[CONTROL_STREAM].items():
        if spec.kind != "lowdim" or int(np.prod(spec.shape)) > MAX_PLOT_DIMS or key in SKIP_KEYS:
            continue
        values = store.read(key, episode)
        path = f"{prefix}/action" if key == "action" else f"{prefix}/control/{key}"
        rows[path] = _series(rec, rr, path, values, times, _names(spec, int(np.prod(spec.shape)), key))
        if key.endswith("eef_pos") and spec.shape == (3,):
            # The path so far at every tick would cost O(T^2); one strip (static) plus a moving point.
            rec.log(f"{prefix}/scene/eef_path", rr.LineStrips3D([values.astype(np.float32)]), static=True)
            rec.send_columns(f"{prefix}/scene/eef",
                             indexes=[rr.TimeColumn("t_device", duration=_td(ctrl_t["dev"])),
                                      rr.TimeColumn("t_host", duration=_td(ctrl_t["host"])),
                                      rr.TimeColumn("step", sequence=steps)],
                             columns=rr.Points3D.columns(positions=values.astype(np.float32)))
    for name in store.columns:
        values, provenance = store.read_column(name, episode)
        if provenance is None and np.all(np.isnan(values.astype(np.float64))):
            continue  # this episode is unlabelled
        path = f"{prefix}/columns/{name}"
        rows[path] = _series(rec, rr, path, values, times, [name])

    for stream, keys in store.streams.items():
        if stream == CONTROL_STREAM:
            continue
        t_dev = store.timestamps(stream, episode, "device")
        t_host = store.timestamps(stream, episode, "host")
        # The tick a frame belongs to: the latest control tick at or before its capture (causal).
        step_of = np.clip(np.searchsorted(ctrl_t["dev"], t_dev, side="right") - 1, 0, None)
        a, b = store.episode_range(stream, episode)
        for key, spec in keys.items():
            path = f"{prefix}/{stream}/{key}"
            arr = store.array(key)
            for start in range(a, b, FRAME_BATCH):
                block = arr[start:min(b, start + FRAME_BATCH)]
                for j, frame in enumerate(block):
                    i = start - a + j
                    rec.set_time("t_device", duration=np.timedelta64(int(ns(t_dev[i])), "ns"))
                    rec.set_time("t_host", duration=np.timedelta64(int(ns(t_host[i])), "ns"))
                    rec.set_time("step", sequence=int(step_of[i]))
                    if spec.kind == "depth":
                        rec.log(path, rr.DepthImage(frame, meter=1.0 / float(spec.depth_scale)))
                    elif spec.kind == "rgb":
                        rec.log(path, rr.Image(frame, color_model="RGBA" if frame.shape[-1] == 4 else "RGB"))
                    else:
                        rec.log(path, rr.Scalars(np.asarray(frame, np.float64).ravel()))
            rows[path] = b - a
        rec.reset_time()

    rec.log(f"{prefix}/info", rr.TextDocument(_info_markdown(store, episode, info), media_type=rr.MediaType.MARKDOWN),
            static=True)
    return rows


def _info_markdown(store: DemoStore, episode: int, info: Any) -> str:
    lines = [f"# {store.path.name}, episode {episode}", "",
             f"- success: **{info.success}**", f"- task: {info.task or '-'}", f"- source: {info.source}",
             f"- rig: {info.rig or '-'}", f"- seed: {info.seed}", f"- fps: {info.fps:g}",
             f"- length: {info.length} control ticks"]
    if info.dropped_frames:
        lines.append("- dropped frames: " + ", ".join(f"{k} {v}" for k, v in info.dropped_frames.items()))
    streams = {s: len(store.timestamps(s, episode)) for s in store.streams}
    lines.append("- samples per stream: " + ", ".join(f"{s} {n}" for s, n in streams.items()))
    if info.notes:
        lines += ["", "```json", json.dumps(info.notes, indent=2, sort_keys=True, default=str), "```"]
    return "\n".join(lines)


def view_store(store_path: str | os.PathLike, episodes: Sequence[int] | None = None, sink: str = "spawn",
               on_ready: Any = None) -> ViewSummary:
    """Log ``episodes`` (default: the first) of a store to ``sink`` (see :func:`robolearn.viz.open_sink`).

    A ``serve`` sink keeps serving until interrupted (Ctrl-C); ``on_ready(line)`` is called once the
    data is logged."""
    rr = require_rerun()
    store = DemoStore.open(store_path)
    try:
        if store.n_episodes == 0:
            raise UserError(f"{store_path} holds no episodes yet")
        eps = list(episodes) if episodes else [0]
        for e in eps:
            if not 0 <= e < store.n_episodes:
                raise UserError(f"episode {e} is not in {store_path}: it holds episodes 0-{store.n_episodes - 1}")
        rec = rr.RecordingStream(APP_ID, recording_id=f"{store.path.resolve()}:{','.join(map(str, eps))}")
        where = open_sink(rec, sink)
        rec.send_recording_name(f"{store.path.name} episode{'s' if len(eps) > 1 else ''} {','.join(map(str, eps))}")
        summary = ViewSummary(where)
        for e in eps:
            summary.rows[e] = log_episode(rec, store, e)
        rec.flush()

        def announce() -> None:
            if on_ready is not None:
                on_ready(where)

        if sink.startswith("serve"):
            serve_forever(on_ready=announce)
            # Stopping the servers can wait on a client that is gone; Ctrl-C must end the process regardless.
            import threading

            t = threading.Thread(target=rec.disconnect, daemon=True)
            t.start()
            t.join(5.0)
            return summary
        announce()
        rec.disconnect()
        return summary
    finally:
        store.close()


def serve_forever(on_ready: Callable[[], None] | None = None) -> None:
    """Keep this process (and the servers it runs) alive until Ctrl-C; ``on_ready()`` announces it.

    The announcement runs inside the Ctrl-C guard: a user (or a script) who reads it and presses Ctrl-C
    at once stops the serving cleanly, not with a KeyboardInterrupt from the code between the two."""
    import signal
    import time

    # A parent that ignores SIGINT (a test runner, a launcher) passes that on: Ctrl-C must still stop this.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if on_ready is not None:
            on_ready()
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
