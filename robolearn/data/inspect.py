"""`robolearn data info` and `robolearn data verify`: summarise a store, and read every chunk of it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from robolearn.data.schema import CONTROL_STREAM, EpisodeInfo, StoreError
from robolearn.data.store import RESERVED, DemoStore, iter_episode_slices


def info(path: str | os.PathLike) -> dict[str, Any]:
    """Episodes, steps, keys with shapes and dtypes, fps, success counts, size on disk."""
    store = DemoStore.open(path)
    eps = store.episodes()
    streams = {}
    for s, specs in store.streams.items():
        rows = store.committed_rows(s)
        t = store.stream_array(s, "t_host")[:rows] if rows else np.zeros(0)
        # per-episode gaps only: the jump between two episodes is not a sample period
        gaps = np.concatenate([np.diff(t[a:b]) for _, a, b in iter_episode_slices(store.ends(s)) if b - a > 1] or [[]])
        streams[s] = {
            "samples": rows,
            "rate_hz": float(1.0 / np.median(gaps)) if len(gaps) and np.median(gaps) > 0 else None,
            "keys": {k: {"shape": list(sp.shape), "dtype": sp.dtype, "kind": sp.kind,
                         **({"depth_scale": sp.depth_scale} if sp.depth_scale else {}),
                         **({"codec": store.array(k).metadata.to_dict()["codecs"][0]["configuration"]["codecs"][0]["name"]}
                            if sp.kind != "lowdim" else {})}
                     for k, sp in specs.items()},
        }
    by_source: dict[str, int] = {}
    for e in eps:
        by_source[e.source] = by_source.get(e.source, 0) + 1
    fps = sorted({e.fps for e in eps})
    return {
        "path": str(store.path),
        "episodes": store.n_episodes,
        "steps": store.committed_rows(CONTROL_STREAM) if CONTROL_STREAM in store.streams else 0,
        "success": sum(e.success for e in eps),
        "failure": sum(not e.success for e in eps),
        "sources": by_source,
        "tasks": sorted({e.task for e in eps}),
        "fps": fps,
        "dropped_frames": int(sum(sum(e.dropped_frames.values()) for e in eps)),
        "streams": streams,
        "columns": sorted(store.columns),
        "size_bytes": store.size_on_disk(),
    }


def format_info(d: dict[str, Any]) -> str:
    lines = [
        f"store     {d['path']}",
        f"episodes  {d['episodes']}  ({d['success']} success, {d['failure']} failure; "
        + ", ".join(f"{k}: {v}" for k, v in sorted(d["sources"].items())) + ")",
        f"steps     {d['steps']}  at {', '.join(f'{f:g}' for f in d['fps']) or '-'} Hz",
        f"tasks     {', '.join(d['tasks']) or '-'}",
        f"size      {d['size_bytes'] / 1e6:.1f} MB on disk",
        f"dropped   {d['dropped_frames']} frames",
        "keys:",
    ]
    for s, sd in d["streams"].items():
        rate = f" at {sd['rate_hz']:.1f} Hz" if sd.get("rate_hz") else ""
        lines.append(f"  [{s}] {sd['samples']} samples{rate}")
        for k, kd in sd["keys"].items():
            extra = "".join(f" {x}={kd[x]}" for x in ("codec", "depth_scale") if x in kd)
            lines.append(f"    {k:28s} {kd['dtype']:8s} {tuple(kd['shape'])!s:16s} {kd['kind']}{extra}")
    if d["columns"]:
        lines.append(f"columns   {', '.join(d['columns'])}")
    return "\n".join(lines)


@dataclass
class VerifyReport:
    path: str
    episodes: int = 0
    chunks_read: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _episode_of(ends: np.ndarray, row: int) -> int:
    return int(np.searchsorted(ends, row, side="right"))


def verify(path: str | os.PathLike, max_problems: int = 20, max_lag: float | None = None) -> VerifyReport:
    """Read every committed chunk and check the schema; problems name the episode and key.

    With ``max_lag`` (seconds), a stream that has no sample within that time of some control tick
    (a stalled or unplugged camera) is a problem too."""
    rep = VerifyReport(str(path))
    try:
        store = DemoStore.open(path)
    except StoreError as e:
        rep.problems.append(str(e))
        return rep
    n = rep.episodes = store.n_episodes

    def problem(msg: str) -> bool:
        rep.problems.append(msg)
        return len(rep.problems) >= max_problems

    try:
        infos = [str(s) for s in store.root["episodes/info"][:n]]
    except Exception as e:  # noqa: BLE001
        problem(f"episodes/info: cannot be read ({type(e).__name__}: {e})")
        return rep
    if len(infos) != n:
        problem(f"episodes/info has {len(infos)} entries for {n} episodes")
    for i, text in enumerate(infos):
        try:
            EpisodeInfo.from_json(text)
        except Exception as e:  # noqa: BLE001
            if problem(f"episode {i}: metadata is not valid ({e})"):
                return rep

    for stream, specs in store.streams.items():
        try:
            ends = np.asarray(store.stream_array(stream, "ends")[:n], dtype=np.int64)
        except Exception as e:  # noqa: BLE001
            if problem(f"{stream}/ends: cannot be read ({type(e).__name__}: {e})"):
                return rep
            continue
        if len(ends) != n or (n and (np.any(np.diff(ends) < 0) or ends[0] < 0)):
            if problem(f"{stream}/ends: not {n} non-decreasing episode ends"):
                return rep
            continue
        rows = int(ends[-1]) if n else 0
        for name in (*[r for r in RESERVED if r != "ends"], *specs):
            arr = store.stream_array(stream, name)
            spec = specs.get(name)
            if arr.shape[0] < rows:
                if problem(f"{stream}/{name}: {arr.shape[0]} rows, episodes need {rows}"):
                    return rep
                continue
            if spec is not None and (tuple(arr.shape[1:]) != spec.shape or np.dtype(arr.dtype).name != spec.dtype):
                if problem(f"{stream}/{name}: array is {arr.dtype}{list(arr.shape[1:])}, schema says {spec.dtype}{list(spec.shape)}"):
                    return rep
                continue
            step = int(arr.metadata.chunk_grid.chunk_shape[0])
            for a in range(0, rows, step):
                b = min(rows, a + step)
                try:
                    block = arr[a:b]
                    rep.chunks_read += 1
                except Exception as e:  # noqa: BLE001 - zarr/codecs raise assorted errors on corrupt bytes
                    bad = _first_bad_row(arr, a, b)
                    ep = _episode_of(ends, bad)
                    if problem(f"episode {ep}, key {stream}/{name}: row {bad} cannot be read ({type(e).__name__}: {e})"):
                        return rep
                    continue
                if name in ("t_device", "t_host"):
                    for e_idx in range(_episode_of(ends, a), min(n, _episode_of(ends, b - 1) + 1)):
                        ea, eb = (int(ends[e_idx - 1]) if e_idx else 0), int(ends[e_idx])
                        lo, hi = max(ea, a), min(eb, b)
                        seg = block[lo - a: hi - a]
                        if len(seg) > 1 and np.any(np.diff(seg) < 0):
                            if problem(f"episode {e_idx}, key {stream}/{name}: timestamps go backwards"):
                                return rep
                elif spec is not None and spec.kind == "lowdim" and block.dtype.kind == "f" and not np.all(np.isfinite(block)):
                    bad = a + int(np.argmax(~np.isfinite(block.reshape(len(block), -1)).all(1)))
                    if problem(f"episode {_episode_of(ends, bad)}, key {stream}/{name}: non-finite values at row {bad}"):
                        return rep
    if CONTROL_STREAM in store.streams:
        lengths = store.episode_lengths(CONTROL_STREAM)
        for i, text in enumerate(infos[:n]):
            length = json.loads(text).get("length", lengths[i])
            if length != lengths[i]:
                if problem(f"episode {i}: metadata says {length} steps, control stream has {lengths[i]}"):
                    return rep
    if max_lag is not None and CONTROL_STREAM in store.streams:
        from robolearn.data.align import align_to_reference

        for i in range(n):
            ref = store.timestamps(CONTROL_STREAM, i)
            for stream in store.streams:
                if stream == CONTROL_STREAM or not len(ref):
                    continue
                try:
                    align_to_reference(ref, store.timestamps(stream, i), max_lag=max_lag)
                except ValueError as e:
                    if problem(f"episode {i}, stream {stream}: stalled: {e}"):
                        return rep
    for name, col in store.columns.items():
        rows = store.committed_rows(CONTROL_STREAM)
        if col["values"].shape[0] < rows:
            problem(f"column {name}: {col['values'].shape[0]} values for {rows} control steps")
    return rep


def _first_bad_row(arr: Any, a: int, b: int) -> int:
    for r in range(a, b):
        try:
            arr[r]
        except Exception:  # noqa: BLE001
            return r
    return a
