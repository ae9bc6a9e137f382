"""Random-access frame reads for training, without zarr-python's per-call overhead.

zarr-python spends ~0.3-1 ms of Python and asyncio bookkeeping per chunk, which is far more than
decoding a small frame costs (~40 us with QOI). A training loader reads a handful of random frames
per window, so it reads the Zarr v3 shard files directly: the shard index sits at the end of each
file (offset, length per frame, CRC32C-checked), and one ``pread`` fetches a frame. Anything this
reader does not understand falls back to zarr itself, so correctness never depends on it.

Safe against a concurrent writer: every shard read opens the file and reads index and frame from
the same descriptor, and the writer replaces shard files by rename, so a reader always sees one
whole version. Indexes of shards that lie wholly inside the committed rows never change again and
are cached.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import google_crc32c
import imagecodecs
import numcodecs
import numpy as np
import zarr

from robolearn.data.schema import CorruptionError

_EMPTY = np.uint64(2**64 - 1)


def _decoder(inner: list[dict], shape: tuple[int, ...], dtype: np.dtype) -> Callable[[bytes], np.ndarray] | None:
    names = [c["name"] for c in inner]
    if names and names[-1] == "crc32c":
        decode = _decoder(inner[:-1], shape, dtype)
        if decode is None:
            return None

        def checked(b: bytes) -> np.ndarray:
            if google_crc32c.value(b[:-4]) != int.from_bytes(b[-4:], "little"):
                raise ValueError("checksum mismatch")
            return decode(b[:-4])

        return checked
    if names == ["robolearn.qoi"]:
        return lambda b: imagecodecs.qoi_decode(b).reshape(shape)
    if names == ["robolearn.jpeg"]:
        import cv2

        def jpeg(b: bytes) -> np.ndarray:
            img = cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_UNCHANGED)
            if img is None:
                raise ValueError("corrupt JPEG frame")
            return np.ascontiguousarray(img[..., ::-1] if img.ndim == 3 else img).reshape(shape)

        return jpeg
    if names == ["bytes", "blosc"] and inner[0].get("configuration", {}).get("endian", "little") == "little":
        return lambda b: np.frombuffer(numcodecs.blosc.decompress(b), dtype=dtype.newbyteorder("<")).reshape(shape)
    if names == ["bytes"]:
        return lambda b: np.frombuffer(b, dtype=dtype.newbyteorder("<")).reshape(shape)
    return None


class FrameReader:
    """Reads single frames of one sharded image/depth array by global row index."""

    def __init__(self, array: zarr.Array, committed_rows: int, cache_shards: int = 4096) -> None:
        self.array = array
        self.committed_rows = committed_rows
        meta = array.metadata.to_dict()
        self.shape = tuple(array.shape[1:])
        self.dtype = np.dtype(array.dtype)
        self._decode: Callable[[bytes], np.ndarray] | None = None
        codecs = meta["codecs"]
        sep = meta.get("chunk_key_encoding", {}).get("configuration", {}).get("separator", "/")
        if (
            len(codecs) == 1
            and codecs[0]["name"] == "sharding_indexed"
            and meta.get("chunk_key_encoding", {}).get("name") == "default"
            and sep == "/"
        ):
            cfg = codecs[0]["configuration"]
            index_ok = [c["name"] for c in cfg["index_codecs"]] == ["bytes", "crc32c"] and cfg.get("index_location", "end") == "end"
            if index_ok and cfg["chunk_shape"][0] == 1 and list(cfg["chunk_shape"][1:]) == list(self.shape):
                self._decode = _decoder(cfg["codecs"], self.shape, self.dtype)
        store_root = getattr(array.store, "root", None)
        self.shard_len = int(array.metadata.chunk_grid.chunk_shape[0]) if self._decode else 0
        self._dir = Path(store_root) / array.path if store_root is not None else None
        if self._dir is None:
            self._decode = None
        self._zeros = "/".join("0" * 1 for _ in self.shape)
        self._index_cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_max = cache_shards

    @property
    def fast(self) -> bool:
        return self._decode is not None

    def _shard_path(self, shard: int) -> str:
        return f"{self._dir}/c/{shard}/{self._zeros}"

    def _read_index(self, fd: int, size: int, shard: int) -> np.ndarray:
        nbytes = self.shard_len * 16 + 4
        if size < nbytes:
            raise CorruptionError(f"{self.array.path}: shard {shard} is truncated ({size} bytes)")
        raw = os.pread(fd, nbytes, size - nbytes)
        body, crc = raw[:-4], int.from_bytes(raw[-4:], "little")
        if google_crc32c.value(body) != crc:
            raise CorruptionError(f"{self.array.path}: shard {shard} has a corrupt index (checksum mismatch)")
        return np.frombuffer(body, dtype="<u8").reshape(self.shard_len, 2)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Frames at global row indices ``rows`` (any order, repeats allowed), stacked."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), *self.shape), dtype=self.dtype)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.committed_rows):
            raise IndexError(f"{self.array.path}: rows outside the {self.committed_rows} committed rows")
        if not self.fast:
            uniq, inv = np.unique(rows, return_inverse=True)
            out[:] = self.array.get_orthogonal_selection((uniq,))[inv]
            return out
        order = np.argsort(rows, kind="stable")
        i = 0
        while i < len(order):
            shard = int(rows[order[i]] // self.shard_len)
            j = i
            while j < len(order) and rows[order[j]] // self.shard_len == shard:
                j += 1
            self._read_shard(shard, rows, order[i:j], out)
            i = j
        return out

    def _read_shard(self, shard: int, rows: np.ndarray, which: np.ndarray, out: np.ndarray) -> None:
        path = self._shard_path(shard)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise CorruptionError(f"{self.array.path}: shard file c/{shard} is missing") from None
        try:
            index = self._index_cache.get(shard)
            if index is None:
                index = self._read_index(fd, os.fstat(fd).st_size, shard)
                if (shard + 1) * self.shard_len <= self.committed_rows:
                    self._index_cache[shard] = index
                    if len(self._index_cache) > self._cache_max:
                        self._index_cache.popitem(last=False)
            last, prev = -1, -1  # consecutive repeats of a row (edge padding) decode once
            for k in which:
                row = int(rows[k])
                if row == last:
                    out[k] = out[prev]
                    continue
                off, n = index[row - shard * self.shard_len]
                if off == _EMPTY:
                    raise CorruptionError(f"{self.array.path}: frame {row} is missing from shard {shard}")
                data = os.pread(fd, int(n), int(off))
                if len(data) != n:
                    raise CorruptionError(f"{self.array.path}: frame {row} is truncated")
                try:
                    out[k] = self._decode(data)
                except Exception as e:  # noqa: BLE001 - codec libraries raise assorted types
                    raise CorruptionError(f"{self.array.path}: frame {row} does not decode ({e})") from None
                last, prev = row, k
        finally:
            os.close(fd)
