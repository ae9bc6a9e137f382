"""The demonstration store: a Zarr v3 group of episodes, appended atomically.

Layout (diffusion_policy's replay buffer, one per clock)::

    STORE/                      root attrs: robolearn.{format, schema_version, n_episodes}
      episodes/info             one JSON document per episode (EpisodeInfo)
      <stream>/                 one group per clock: "control" (actions, proprio) and one per camera
        t_device, t_host        float64 seconds: the device's capture time and the host's receive time
        ends                    int64, cumulative end of each episode in this stream
        <key>                   per-key array concatenated over time, shape (T, *sample_shape)
      columns/<name>/           optional per-control-step columns added by later stages
        values                  (T_control,) aligned with the control stream, NaN where unlabelled
        provenance              one JSON document per episode ("" where unlabelled)
      stats/                    normalisation statistics, computed once (see normalizer.py)

Streams are never resampled on write; ``align.py`` maps them onto control ticks at read time.

Commit protocol (episode-atomic under SIGKILL): samples are appended to the arrays as they arrive,
past the committed end; ``commit`` then writes each stream's ``ends``, the episode's info and the
columns, and finally bumps ``n_episodes`` in the root attributes. Zarr's local store writes every
file through a temporary name and a rename, so each chunk and metadata file is either old or new,
and both versions hold the committed rows unchanged. Readers trust ``n_episodes`` alone; a writer
opening the store cuts off any uncommitted tail left by a killed process.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ZstdCodec

from robolearn.data import codecs as _codecs
from robolearn.data.schema import (
    CONTROL_STREAM,
    FORMAT_NAME,
    SCHEMA_VERSION,
    EpisodeInfo,
    KeySpec,
    SchemaError,
    StoreError,
)

RESERVED = ("t_device", "t_host", "ends")
SHARD_FRAMES = 128  # frames per shard file: ~1 MB of 84x84 QOI frames, few files, cheap tail rewrites
SHARD_RAW_BYTES = 32 << 20  # larger frames get fewer per shard: a camera's shard is buffered, then written once


def _shard_frames(spec: KeySpec) -> int:
    """Frames per shard: SHARD_FRAMES, fewer (a power of two, at least 8) for large frames (640x480 RGB: 32)."""
    frame = max(1, int(np.prod(spec.shape, dtype=np.int64)) * np.dtype(spec.dtype).itemsize)
    n = SHARD_FRAMES
    while n > 8 and n * frame > SHARD_RAW_BYTES:
        n //= 2
    return n


def _lowdim_rows(shape: Sequence[int], itemsize: int) -> int:
    # ~256 KiB chunks: whole-array loads are fast and the tail rewrite per episode stays small.
    row = max(1, int(np.prod(shape, dtype=np.int64)) * itemsize)
    return int(min(16384, max(256, 2**18 // row)))


def _create_key_array(group: zarr.Group, name: str, spec: KeySpec) -> zarr.Array:
    # Every chunk carries a CRC32C: lossless image codecs happily decode flipped bits into wrong
    # pixels, and corrupt data must fail loudly, never train silently.
    cfg = {"write_empty_chunks": True}  # a missing chunk is then always an error, never a silent zero
    attrs = {"robolearn": spec.to_json()}
    if spec.kind in ("rgb", "depth"):
        if spec.kind == "rgb":
            codec = spec.codec or "qoi"
            if codec not in _codecs.IMAGE_CODECS:
                raise SchemaError(f"unknown image codec {codec!r}; expected one of {', '.join(_codecs.IMAGE_CODECS)}")
            serializer, compressors = _codecs.IMAGE_CODECS[codec](), [Crc32cCodec()]
        else:
            serializer = BytesCodec()
            compressors = [BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle", typesize=2), Crc32cCodec()]
        return group.create_array(
            name, shape=(0, *spec.shape), dtype=spec.dtype, chunks=(1, *spec.shape),
            shards=(_shard_frames(spec), *spec.shape), serializer=serializer, compressors=compressors,
            fill_value=0, attributes=attrs, config=cfg,
        )
    rows = _lowdim_rows(spec.shape, np.dtype(spec.dtype).itemsize)
    return group.create_array(
        name, shape=(0, *spec.shape), dtype=spec.dtype, chunks=(rows, *spec.shape),
        compressors=[ZstdCodec(level=3), Crc32cCodec()], fill_value=0, attributes=attrs, config=cfg,
    )


def _append_rows(arr: zarr.Array, start: int, rows: np.ndarray) -> None:
    end = start + len(rows)
    if arr.shape[0] != end:
        arr.resize((end, *arr.shape[1:]))
    if len(rows):
        arr[start:end] = rows


class DemoStore:
    """A demonstration store on local disk. Open read-only with ``open``; write with ``open(mode='a')``."""

    def __init__(self, path: str | os.PathLike, mode: str = "r") -> None:
        self.path = Path(path)
        self.mode = mode
        self._lock_fd: int | None = None
        if mode not in ("r", "a"):
            raise ValueError("mode must be 'r' or 'a'")
        if mode == "r" and not self.path.exists():
            raise StoreError(f"no store at {self.path}: record one first (robolearn record ... --out {self.path})")
        if mode == "a":
            self._acquire_lock()
        self._open()
        if mode == "a":
            self._cut_uncommitted_tail()

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r") -> DemoStore:
        return cls(path, mode)

    def _acquire_lock(self) -> None:
        if self.path.exists() and not (self.path / "zarr.json").exists():
            if any(self.path.iterdir()):
                raise StoreError(f"{self.path} exists and is not a Zarr store; choose another --out")
        self.path.mkdir(parents=True, exist_ok=True)
        # Lock the directory itself: its inode never changes, and no stray file confuses Zarr.
        fd = os.open(self.path, os.O_RDONLY)
        try:
            # flock dies with its process, so a SIGKILLed writer never leaves a stale lock.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(f"{self.path} is being written by another process; wait for it or use another --out") from None
        self._lock_fd = fd

    def _open(self) -> None:
        try:
            if self.mode == "a" and not (self.path / "zarr.json").exists():
                # The root metadata is born with its attributes, so a reader never sees a half-made store.
                meta = {"format": FORMAT_NAME, "schema_version": SCHEMA_VERSION, "n_episodes": 0}
                root = zarr.open_group(str(self.path), mode="a", attributes={"robolearn": meta})
                root.create_group("columns")
                root.create_group("episodes").create_array("info", shape=(0,), chunks=(256,), dtype=str)
            root = zarr.open_group(str(self.path), mode="r" if self.mode == "r" else "r+")
        except StoreError:
            raise
        except Exception as e:  # noqa: BLE001 - zarr raises many types for a non-store
            raise StoreError(f"{self.path} is not a readable Zarr store ({type(e).__name__}: {e})") from None
        meta = root.attrs.asdict().get("robolearn")
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
            raise StoreError(f"{self.path} is a Zarr store but not a robolearn demonstration store")
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise SchemaError(
                f"{self.path} has schema version {meta.get('schema_version')}, this robolearn reads version "
                f"{SCHEMA_VERSION}; use the robolearn release that wrote it or convert the store"
            )
        self.root = root
        self._load_schema()

    def _load_schema(self) -> None:
        self._n = int(self.root.attrs["robolearn"]["n_episodes"])
        self.streams: dict[str, dict[str, KeySpec]] = {}
        self._arrays: dict[str, dict[str, zarr.Array]] = {}
        for name, grp in self.root.groups():
            if name in ("episodes", "columns", "stats"):
                continue
            if "keys" not in grp.attrs:  # being declared right now; its key list is written last
                continue
            specs = {k: KeySpec.from_json(v) for k, v in grp.attrs["keys"].items()}
            self.streams[name] = specs
            self._arrays[name] = {k: grp[k] for k in (*RESERVED, *specs)}
        try:
            self._info = self.root["episodes/info"]
            col_groups = list(self.root["columns"].groups())
        except KeyError:
            if self._n:
                raise StoreError(f"{self.path}: episodes/info is missing but {self._n} episodes are committed") from None
            # a store being created right now by its writer: empty so far
            self._info, col_groups = None, []
        self.columns: dict[str, dict[str, zarr.Array]] = {}
        for name, g in col_groups:
            try:
                self.columns[name] = {"values": g["values"], "provenance": g["provenance"]}
            except KeyError:  # being declared right now by a writer: nothing committed in it yet
                continue
        self._ends_cache: dict[str, np.ndarray] = {}
        self._info_cache: list[EpisodeInfo] | None = None

    def refresh(self) -> DemoStore:
        """Pick up episodes committed by a writer since this reader opened."""
        self.root = zarr.open_group(str(self.path), mode="r" if self.mode == "r" else "r+")
        self._load_schema()
        return self

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> DemoStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ reading
    @property
    def n_episodes(self) -> int:
        return self._n

    @property
    def keys(self) -> dict[str, tuple[str, KeySpec]]:
        """Every data key with the stream it lives in."""
        return {k: (s, spec) for s, specs in self.streams.items() for k, spec in specs.items()}

    def stream_of(self, key: str) -> str:
        for s, specs in self.streams.items():
            if key in specs:
                return s
        raise SchemaError(f"no key {key!r} in {self.path}; keys: {', '.join(sorted(self.keys)) or '(none)'}")

    def ends(self, stream: str) -> np.ndarray:
        """Cumulative committed end index of each episode in ``stream``."""
        if stream not in self._ends_cache:
            self._ends_cache[stream] = np.asarray(self._arrays[stream]["ends"][: self._n], dtype=np.int64)
        return self._ends_cache[stream]

    def episode_range(self, stream: str, episode: int) -> tuple[int, int]:
        self._check_episode(episode)
        ends = self.ends(stream)
        return (int(ends[episode - 1]) if episode else 0), int(ends[episode])

    def episode_lengths(self, stream: str = CONTROL_STREAM) -> np.ndarray:
        return np.diff(self.ends(stream), prepend=0)

    def array(self, key: str) -> zarr.Array:
        """The raw Zarr array of a key (rows past the committed end are not data)."""
        stream = self.stream_of(key)
        return self._arrays[stream][key]

    def stream_array(self, stream: str, name: str) -> zarr.Array:
        return self._arrays[stream][name]

    def committed_rows(self, stream: str) -> int:
        ends = self.ends(stream)
        return int(ends[-1]) if len(ends) else 0

    def read(self, key: str, episode: int) -> np.ndarray:
        stream = self.stream_of(key)
        a, b = self.episode_range(stream, episode)
        return self._arrays[stream][key][a:b]

    def timestamps(self, stream: str, episode: int, clock: str = "host") -> np.ndarray:
        a, b = self.episode_range(stream, episode)
        return self._arrays[stream]["t_host" if clock == "host" else "t_device"][a:b]

    def episode_info(self, episode: int) -> EpisodeInfo:
        return self.episodes()[self._check_episode(episode)]

    def episodes(self) -> list[EpisodeInfo]:
        if self._info_cache is None:
            rows = self._info[: self._n] if self._n else []
            self._info_cache = [EpisodeInfo.from_json(str(s)) for s in rows]
        return self._info_cache

    def read_column(self, name: str, episode: int) -> tuple[np.ndarray, dict[str, Any] | None]:
        """Values of a per-step column for one episode and their provenance (None if unlabelled)."""
        if name not in self.columns:
            raise SchemaError(f"no column {name!r} in {self.path}; columns: {', '.join(self.columns) or '(none)'}")
        a, b = self.episode_range(CONTROL_STREAM, episode)
        col = self.columns[name]
        prov = str(col["provenance"][episode]) if col["provenance"].shape[0] > episode else ""
        vals = col["values"][a:b] if col["values"].shape[0] >= b else np.full(b - a, np.nan, np.float32)
        return vals, (json.loads(prov) if prov else None)

    def read_episode(self, episode: int, keys: Sequence[str] | None = None, align: bool = True,
                     max_lag: float | None = None) -> dict[str, np.ndarray]:
        """All (or some) keys of one episode; other streams aligned onto control ticks unless ``align=False``.

        With ``max_lag`` (seconds), a tick whose newest frame of a stream is older than that raises
        instead of silently repeating a stalled camera's last frame."""
        from robolearn.data.align import align_to_reference

        keys = list(keys) if keys is not None else list(self.keys)
        out: dict[str, np.ndarray] = {}
        ref_t = self.timestamps(CONTROL_STREAM, episode) if CONTROL_STREAM in self.streams else None
        for key in keys:
            stream = self.stream_of(key)
            data = self.read(key, episode)
            if align and ref_t is not None and stream != CONTROL_STREAM:
                try:
                    idx = align_to_reference(ref_t, self.timestamps(stream, episode), max_lag=max_lag)
                except ValueError as e:
                    raise SchemaError(f"episode {episode}, stream {stream!r}: {e}") from None
                data = data[idx]
            out[key] = data
        return out

    def _check_episode(self, episode: int) -> int:
        if not 0 <= episode < self._n:
            raise IndexError(f"episode {episode} out of range: {self.path} has {self._n} episodes")
        return episode

    def size_on_disk(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())

    # ------------------------------------------------------------------ writing
    def _require_writable(self) -> None:
        if self.mode != "a":
            raise StoreError(f"{self.path} is open read-only")

    def _cut_uncommitted_tail(self) -> None:
        """Drop rows a killed writer appended past the committed end, and its temp files."""
        for tmp in self.path.rglob("*.partial"):
            tmp.unlink(missing_ok=True)
        n = self._n
        for stream, arrays in self._arrays.items():
            ends = arrays["ends"]
            if ends.shape[0] < n:
                raise StoreError(f"{self.path}: stream {stream!r} has {ends.shape[0]} episode ends for {n} episodes")
            committed = int(ends[n - 1]) if n else 0
            for name, arr in arrays.items():
                length = n if name == "ends" else committed
                if arr.shape[0] < length:
                    raise StoreError(f"{self.path}: {stream}/{name} is shorter than its committed episodes")
                if arr.shape[0] != length:
                    arr.resize((length, *arr.shape[1:]))
        if self._info.shape[0] != n:
            self._info.resize((n,))
        control_rows = self.committed_rows(CONTROL_STREAM) if CONTROL_STREAM in self.streams else 0
        for col in self.columns.values():
            if col["values"].shape[0] > control_rows:
                col["values"].resize((control_rows,))
            if col["provenance"].shape[0] > n:
                col["provenance"].resize((n,))
        self._ends_cache.clear()

    def declare_stream(self, stream: str, keys: Mapping[str, KeySpec]) -> None:
        """Create a stream's arrays, or check that ``keys`` match the ones it has."""
        self._require_writable()
        for key in keys:
            if key in RESERVED or "/" in key or key.startswith("."):
                raise SchemaError(f"key name {key!r} is reserved or invalid")
            other = next((s for s, sp in self.streams.items() if key in sp and s != stream), None)
            if other:
                raise SchemaError(f"key {key!r} already lives in stream {other!r}; key names are unique per store")
        if stream in self.streams:
            have = self.streams[stream]
            if set(have) != set(keys):
                raise SchemaError(
                    f"stream {stream!r} has keys {sorted(have)}, the new episode has {sorted(keys)}; "
                    "record into a new store to change the key set"
                )
            for k, spec in keys.items():
                if (spec.shape, spec.dtype, spec.kind) != (have[k].shape, have[k].dtype, have[k].kind):
                    raise SchemaError(
                        f"key {stream}/{k}: store has {have[k].dtype}{list(have[k].shape)} ({have[k].kind}), "
                        f"new data is {spec.dtype}{list(spec.shape)} ({spec.kind})"
                    )
            return
        if self._n:
            raise SchemaError(f"stream {stream!r} is new but {self.path} already has {self._n} episodes without it")
        grp = self.root.create_group(stream)
        for t in ("t_device", "t_host"):
            _create_key_array(grp, t, KeySpec(shape=(), dtype="float64"))
        grp.create_array("ends", shape=(0,), chunks=(4096,), dtype="int64", compressors=ZstdCodec(level=3))
        arrays = {name: grp[name] for name in RESERVED}
        for k, spec in keys.items():
            arrays[k] = _create_key_array(grp, k, spec)
        # The key list goes last: a stream without it is ignored by readers, so a crash here is harmless.
        grp.attrs["keys"] = {k: spec.to_json() for k, spec in keys.items()}
        self.streams[stream] = dict(keys)
        self._arrays[stream] = arrays

    def declare_column(self, name: str, dtype: str = "float32") -> None:
        self._require_writable()
        if name in self.columns:
            return
        if "/" in name or not name:
            raise SchemaError(f"invalid column name {name!r}")
        grp = self.root["columns"].create_group(name)
        rows = self.committed_rows(CONTROL_STREAM) if CONTROL_STREAM in self.streams else 0
        fill = np.nan if np.dtype(dtype).kind == "f" else 0
        values = grp.create_array("values", shape=(rows,), chunks=(8192,), dtype=dtype, fill_value=fill,
                                  compressors=ZstdCodec(level=3))
        prov = grp.create_array("provenance", shape=(self._n,), chunks=(1024,), dtype=str)
        if rows:
            values[:] = np.full(rows, fill, dtype=dtype)
        self.columns[name] = {"values": values, "provenance": prov}

    def set_column(self, name: str, episode: int, values: np.ndarray, provenance: Mapping[str, Any]) -> None:
        """Label a committed episode (e.g. VLM progress). Values first, provenance last, so a crash
        in between leaves the episode unlabelled rather than half-labelled."""
        self._require_writable()
        self._check_episode(episode)
        if name not in self.columns:
            self.declare_column(name, dtype=np.asarray(values).dtype.name if np.asarray(values).dtype.kind != "f" else "float32")
        a, b = self.episode_range(CONTROL_STREAM, episode)
        values = np.asarray(values)
        if values.shape != (b - a,):
            raise SchemaError(f"column {name!r} for episode {episode}: expected {b - a} values, got shape {values.shape}")
        col = self.columns[name]
        if col["values"].shape[0] < b:
            col["values"].resize((self.committed_rows(CONTROL_STREAM),))
        col["values"][a:b] = values
        if col["provenance"].shape[0] < self._n:
            col["provenance"].resize((self._n,))
        col["provenance"][episode] = json.dumps(dict(provenance), sort_keys=True)

    def begin_episode(self) -> EpisodeWriter:
        self._require_writable()
        return EpisodeWriter(self)

    def _commit(self, writer: EpisodeWriter, info: EpisodeInfo) -> int:
        n = self._n
        for stream, arrays in self._arrays.items():
            length = writer.written[stream]
            _append_rows(arrays["ends"], n, np.array([length], dtype=np.int64))
        ctrl_a = self.committed_rows(CONTROL_STREAM) if CONTROL_STREAM in self.streams else 0
        ctrl_b = writer.written.get(CONTROL_STREAM, 0)
        for name, col in self.columns.items():
            vals = writer.columns.get(name)
            if vals is None:
                vals = np.full(ctrl_b - ctrl_a, np.nan if col["values"].dtype.kind == "f" else 0, col["values"].dtype)
            if col["values"].shape[0] > ctrl_a:
                col["values"].resize((ctrl_a,))
            _append_rows(col["values"], ctrl_a, vals.astype(col["values"].dtype))
            prov = writer.column_provenance.get(name)
            text = json.dumps(prov, sort_keys=True) if prov is not None else ""
            _append_rows(col["provenance"], n, np.array([text], dtype=object))
        _append_rows(self._info, n, np.array([info.to_json()], dtype=object))
        # The commit point: one atomic rewrite of the root metadata.
        meta = dict(self.root.attrs["robolearn"])
        meta["n_episodes"] = n + 1
        self.root.attrs["robolearn"] = meta
        self._n = n + 1
        self._ends_cache.clear()
        self._info_cache = None
        return n


class EpisodeWriter:
    """Appends one episode's samples; nothing is visible to readers until ``commit``.

    Samples go to disk in small batches while recording, so long episodes with many cameras
    do not have to fit in memory."""

    FLUSH_IMAGES = 32
    FLUSH_LOWDIM = 4096
    FLUSH_IMAGE_BYTES = 64 << 20  # buffered up to a shard's end while below this (raw bytes)

    def __init__(self, store: DemoStore) -> None:
        self.store = store
        self.written = {s: store.committed_rows(s) for s in store.streams}
        self._buf: dict[str, dict[str, list[np.ndarray]]] = {}
        self.columns: dict[str, np.ndarray] = {}
        self.column_provenance: dict[str, dict[str, Any]] = {}
        self.counts: dict[str, int] = {}
        self._done = False

    def add(self, stream: str, t_device: float, t_host: float, **values: np.ndarray) -> None:
        """Append one sample of ``stream`` (a control tick, a camera frame, ...)."""
        self.extend(stream, np.array([t_device]), np.array([t_host]), **{k: np.asarray(v)[None] for k, v in values.items()})

    def extend(self, stream: str, t_device: np.ndarray, t_host: np.ndarray, **values: np.ndarray) -> None:
        """Append a batch of samples of ``stream``; arrays have the time axis first."""
        if self._done:
            raise StoreError("episode already committed or discarded")
        n = len(t_device)
        if len(t_host) != n or any(len(v) != n for v in values.values()):
            raise SchemaError(f"stream {stream!r}: timestamps and values have different lengths")
        if stream not in self.store.streams:
            self.store.declare_stream(stream, {k: KeySpec.infer(np.asarray(v)[0]) for k, v in values.items()})
            self.written[stream] = 0
        specs = self.store.streams[stream]
        if set(values) != set(specs):
            raise SchemaError(f"stream {stream!r} expects keys {sorted(specs)}, got {sorted(values)}")
        buf = self._buf.setdefault(stream, {k: [] for k in (*specs, "t_device", "t_host")})
        for k, v in values.items():
            v = np.asarray(v)
            spec = specs[k]
            if v.shape[1:] != spec.shape:
                raise SchemaError(f"key {stream}/{k}: expected sample shape {spec.shape}, got {v.shape[1:]}")
            if spec.kind != "lowdim" and v.dtype != np.dtype(spec.dtype):
                raise SchemaError(f"key {stream}/{k}: expected {spec.dtype}, got {v.dtype}")
            if v.dtype.kind == "f" and spec.dtype.startswith("float") and not np.all(np.isfinite(v)):
                raise SchemaError(f"key {stream}/{k}: non-finite values")
            buf[k].append(v.astype(spec.dtype, copy=False))
        buf["t_device"].append(np.asarray(t_device, dtype=np.float64))
        buf["t_host"].append(np.asarray(t_host, dtype=np.float64))
        self.counts[stream] = self.counts.get(stream, 0) + n
        pending = sum(len(x) for x in buf["t_host"])
        if pending >= self._flush_rows(stream, specs):
            self._flush(stream)

    def _flush_rows(self, stream: str, specs: Mapping[str, KeySpec]) -> int:
        """Rows to buffer before writing. Image streams write up to their next shard boundary, so that a
        shard file is written once rather than rewritten for every batch (a 640x480 camera's shard is
        ~10 MB of QOI: rewriting it per batch multiplied the bytes written and their kernel time), unless
        that buffers more than FLUSH_IMAGE_BYTES; then every FLUSH_IMAGES rows."""
        images = [k for k, spec in specs.items() if spec.kind != "lowdim"]
        if not images:
            return self.FLUSH_LOWDIM
        arrays = self.store._arrays[stream]
        shard = min(int(arrays[k].shards[0]) if arrays[k].shards else self.FLUSH_IMAGES for k in images)
        row = sum(int(np.prod(specs[k].shape, dtype=np.int64)) * np.dtype(specs[k].dtype).itemsize for k in specs)
        if shard * row > self.FLUSH_IMAGE_BYTES:
            return self.FLUSH_IMAGES
        return shard - self.written[stream] % shard  # rows to the next boundary (the first batch may be short)

    def set_column(self, name: str, values: np.ndarray, provenance: Mapping[str, Any] | None = None,
                   dtype: str = "float32") -> None:
        """A per-control-step column for this episode (reward, intervention, ...)."""
        self.store.declare_column(name, dtype=dtype)
        self.columns[name] = np.asarray(values)
        self.column_provenance[name] = dict(provenance or {})

    def _flush(self, stream: str) -> None:
        buf = self._buf.get(stream)
        if not buf or not buf["t_host"]:
            return
        start = self.written[stream]
        arrays = self.store._arrays[stream]
        for name, chunks in buf.items():
            _append_rows(arrays[name], start, np.concatenate(chunks))
            chunks.clear()
        self.written[stream] = int(arrays["t_host"].shape[0])

    def commit(self, info: EpisodeInfo) -> int:
        """Make the episode visible; returns its index."""
        if self._done:
            raise StoreError("episode already committed or discarded")
        for stream in list(self._buf):
            self._flush(stream)
        n_ctrl = self.written.get(CONTROL_STREAM, 0) - self.store.committed_rows(CONTROL_STREAM) \
            if CONTROL_STREAM in self.store.streams else 0
        for name, vals in self.columns.items():
            if vals.shape != (n_ctrl,):
                raise SchemaError(f"column {name!r}: expected {n_ctrl} values (one per control step), got {vals.shape}")
        for s in self.store.streams:
            self.written.setdefault(s, self.store.committed_rows(s))
        if not info.length:
            info.length = n_ctrl
        if info.started_at is None:
            info.started_at = time.time()
        idx = self.store._commit(self, info)
        self._done = True
        return idx

    def discard(self) -> None:
        """Drop everything appended since ``begin_episode``."""
        if self._done:
            return
        self._done = True
        self._buf.clear()
        for stream, arrays in self.store._arrays.items():
            committed = self.store.committed_rows(stream)
            for name, arr in arrays.items():
                if name != "ends" and arr.shape[0] != committed:
                    arr.resize((committed, *arr.shape[1:]))

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if not self._done:
            self.discard()


def iter_episode_slices(ends: np.ndarray) -> Iterator[tuple[int, int, int]]:
    start = 0
    for i, end in enumerate(ends):
        yield i, start, int(end)
        start = int(end)
