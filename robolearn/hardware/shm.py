"""A shared-memory ring of fixed-size samples: one writer process, any number of readers.

A device process (a camera, an arm's state publisher) writes each sample straight into the next
slot; readers in other processes read the latest sample, the one nearest a timestamp, or every
sample since one they already have, without pickling or pipes: a copy out of the ring, or a
zero-copy view.

Layout of the segment (all little-endian, 64-byte aligned)::

    header   4 KiB: counters (published count, reader's ack, state, dropped frames), the producer's
             heartbeat, the layout as JSON, the producer's info JSON and its last error
    per-slot meta arrays: seq (seqlock) | frame_number | t_device | t_host   (capacity entries each)
    slots    capacity x (one array per key, in layout order)

Consistency: every slot has a sequence counter (a seqlock). Sample ``k`` lives in slot
``k % capacity``; the writer sets the counter to ``2k+1`` before touching the slot and to ``2k+2``
after, then bumps the published count. A reader checks the counter before and after copying, so a
sample overwritten while it was read is detected and never returned torn. Plain aligned 8-byte
stores are ordered on x86-64 (TSO); numpy calls act as compiler barriers.

Back-pressure: a reader may acknowledge what it has consumed (``ack``); a writer in ``blocking``
mode waits while the ring holds ``capacity - 1`` unacknowledged samples instead of overwriting them
(non-real-time playback: no frame is ever skipped). Live devices never block; a reader that falls
behind loses samples and sees the gap.

The creator owns the segment and unlinks it on :meth:`ShmRing.close` (and Python's resource
tracker unlinks it if the creator is killed). Spawned children attach by name.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from multiprocessing import resource_tracker, shared_memory
from typing import Any

import numpy as np

__all__ = ["RingEntry", "ShmRing", "SlotSpec", "retain_heap"]

_MAGIC = 0x524C524E47310001  # "RLRNG1" + layout version
_HEADER = 4096
_ALIGN = 64
# int64 header fields
_I_MAGIC, _I_CAPACITY, _I_COUNT, _I_ACK, _I_STATE, _I_DROPPED, _I_BLOCKING, _I_LAYOUT_LEN, _I_INFO_LEN, \
    _I_ERR_LEN, _I_STOP = range(11)
# float64 header fields (at byte 128)
_F_HEARTBEAT, _F_CREATED = range(2)
_LAYOUT_AT, _LAYOUT_MAX = 256, 1792
_INFO_AT, _INFO_MAX = 2048, 1024
_ERR_AT, _ERR_MAX = 3072, 1024

# Producer states
STARTING, RUNNING, ENDED, FAILED = 0, 1, 2, 3
STATE_NAMES = {STARTING: "starting", RUNNING: "running", ENDED: "ended", FAILED: "failed"}


@dataclass(frozen=True)
class SlotSpec:
    """Shape and dtype of one key's per-sample array."""

    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    @classmethod
    def of(cls, spec: Any) -> SlotSpec:
        """From a ``SlotSpec``, a :class:`~robolearn.features.Feature` or a ``(shape, dtype)`` pair."""
        if isinstance(spec, SlotSpec):
            return spec
        if hasattr(spec, "shape") and hasattr(spec, "dtype"):
            return cls(tuple(int(s) for s in spec.shape), np.dtype(spec.dtype).name)
        shape, dtype = spec
        return cls(tuple(int(s) for s in shape), np.dtype(dtype).name)


@dataclass(frozen=True)
class RingEntry:
    """One sample read from the ring: ``index`` is its position in the write order (0, 1, 2, ...)."""

    index: int
    frame_number: int
    t_device: float
    t_host: float
    values: dict[str, np.ndarray]


def _up(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


class ShmRing:
    """A ring of ``capacity`` samples, each one array per key; see the module docstring."""

    def __init__(self, shm: shared_memory.SharedMemory, owner: bool) -> None:
        self._shm, self.owner = shm, owner
        buf = shm.buf
        self._hi = np.ndarray((16,), np.int64, buf, 0)
        self._hf = np.ndarray((8,), np.float64, buf, 128)
        if int(self._hi[_I_MAGIC]) != _MAGIC:
            raise ValueError(f"shared memory {shm.name!r} is not a robolearn ring (or another version)")
        layout = json.loads(bytes(buf[_LAYOUT_AT:_LAYOUT_AT + int(self._hi[_I_LAYOUT_LEN])]).decode())
        self.specs: dict[str, SlotSpec] = {k: SlotSpec(tuple(v[0]), v[1]) for k, v in layout.items()}
        self.capacity = int(self._hi[_I_CAPACITY])
        cap = self.capacity
        off = _HEADER
        self._seq = np.ndarray((cap,), np.int64, buf, off)
        self._fnum = np.ndarray((cap,), np.int64, buf, off + 8 * cap)
        self._tdev = np.ndarray((cap,), np.float64, buf, off + 16 * cap)
        self._thost = np.ndarray((cap,), np.float64, buf, off + 24 * cap)
        off = _up(off + 32 * cap)
        self._slots: list[dict[str, np.ndarray]] = [{} for _ in range(cap)]
        for i in range(cap):
            for k, s in self.specs.items():
                self._slots[i][k] = np.ndarray(s.shape, np.dtype(s.dtype), buf, off)
                off = _up(off + s.nbytes)

    # ------------------------------------------------------------------ create / attach / close
    @staticmethod
    def nbytes_for(specs: Mapping[str, Any], capacity: int) -> int:
        per_slot = sum(_up(SlotSpec.of(s).nbytes) for s in specs.values())
        return _up(_HEADER + 32 * capacity) + capacity * per_slot

    @classmethod
    def create(cls, specs: Mapping[str, Any], capacity: int, name: str | None = None) -> ShmRing:
        """A new ring holding ``capacity`` samples of ``specs`` (key -> Feature / SlotSpec / (shape, dtype))."""
        if capacity < 2:
            raise ValueError(f"a ring needs at least 2 slots, got {capacity}")
        slot_specs = {str(k): SlotSpec.of(v) for k, v in specs.items()}
        layout = json.dumps({k: [list(s.shape), s.dtype] for k, s in slot_specs.items()}).encode()
        if len(layout) > _LAYOUT_MAX:
            raise ValueError(f"ring layout too large ({len(layout)} bytes of JSON); use fewer or shorter keys")
        shm = shared_memory.SharedMemory(name=name, create=True, size=cls.nbytes_for(slot_specs, capacity))
        buf = shm.buf
        buf[:_HEADER] = bytes(_HEADER)
        hi = np.ndarray((16,), np.int64, buf, 0)
        hf = np.ndarray((8,), np.float64, buf, 128)
        buf[_LAYOUT_AT:_LAYOUT_AT + len(layout)] = layout
        hi[_I_CAPACITY], hi[_I_LAYOUT_LEN] = capacity, len(layout)
        hf[_F_CREATED] = time.time()
        np.ndarray((capacity,), np.int64, buf, _HEADER)[:] = -1  # no slot holds a sample yet
        hi[_I_MAGIC] = _MAGIC  # last: the header is complete
        return cls(shm, owner=True)

    @classmethod
    def attach(cls, name: str, track: bool = True) -> ShmRing:
        """Open an existing ring by name. ``track=False`` for a process that was not spawned by the
        creator: Python 3.11's resource tracker would otherwise unlink the segment when it exits."""
        shm = shared_memory.SharedMemory(name=name, create=False)
        if not track:
            resource_tracker.unregister(shm._name, "shared_memory")  # noqa: SLF001 - see docstring
        return cls(shm, owner=False)

    @property
    def name(self) -> str:
        return self._shm.name

    def close(self) -> None:
        """Drop this process's mapping (views handed out before become invalid). Idempotent."""
        if self._shm is None:
            return
        self._hi = self._hf = self._seq = self._fnum = self._tdev = self._thost = None  # type: ignore[assignment]
        self._slots = []
        shm, self._shm = self._shm, None
        try:
            shm.close()
        except BufferError:  # a caller still holds a zero-copy view: leave the mapping to the GC
            pass
        if self.owner:
            try:
                shm.unlink()
            except FileNotFoundError:
                pass

    # ------------------------------------------------------------------ producer side
    def begin(self) -> dict[str, np.ndarray]:
        """Views of the next slot to fill in place (e.g. ``cv2.cvtColor(..., dst=view)``); marks it
        as being written. Finish with :meth:`commit`."""
        k = int(self._hi[_I_COUNT])
        i = k % self.capacity
        self._seq[i] = 2 * k + 1
        return self._slots[i]

    def commit(self, frame_number: int, t_device: float, t_host: float) -> int:
        """Publish the slot from :meth:`begin`; returns the sample's index."""
        k = int(self._hi[_I_COUNT])
        i = k % self.capacity
        self._fnum[i], self._tdev[i], self._thost[i] = frame_number, t_device, t_host
        self._seq[i] = 2 * k + 2
        self._hi[_I_COUNT] = k + 1
        self._hf[_F_HEARTBEAT] = time.time()
        return k

    def write(self, values: Mapping[str, np.ndarray], frame_number: int, t_device: float, t_host: float) -> int:
        """Copy one sample in and publish it; returns its index."""
        slot = self.begin()
        for k, view in slot.items():
            np.copyto(view, values[k], casting="same_kind")
        return self.commit(frame_number, t_device, t_host)

    def has_room(self) -> bool:
        """False while a blocking writer must wait for the reader's acknowledgement."""
        return not self.blocking or self.count - int(self._hi[_I_ACK]) < self.capacity - 1

    def beat(self) -> None:
        """The producer is alive (waiting for the reader counts as alive)."""
        self._hf[_F_HEARTBEAT] = time.time()

    # ------------------------------------------------------------------ shared control fields
    @property
    def count(self) -> int:
        """Samples published so far (the next sample's index)."""
        return int(self._hi[_I_COUNT])

    @property
    def heartbeat(self) -> float:
        return float(self._hf[_F_HEARTBEAT])

    @property
    def created(self) -> float:
        return float(self._hf[_F_CREATED])

    @property
    def state(self) -> int:
        return int(self._hi[_I_STATE])

    @state.setter
    def state(self, value: int) -> None:
        self._hi[_I_STATE] = value

    @property
    def dropped(self) -> int:
        """Samples the producer knows it lost (gaps in device frame numbers)."""
        return int(self._hi[_I_DROPPED])

    def add_dropped(self, n: int) -> None:
        self._hi[_I_DROPPED] += n

    @property
    def blocking(self) -> bool:
        return bool(self._hi[_I_BLOCKING])

    @blocking.setter
    def blocking(self, value: bool) -> None:
        self._hi[_I_BLOCKING] = int(value)

    def request_stop(self) -> None:
        """Ask the producer to finish (it polls :attr:`stop_requested`)."""
        self._hi[_I_STOP] = 1

    @property
    def stop_requested(self) -> bool:
        return bool(self._hi[_I_STOP])

    def ack(self, upto: int) -> None:
        """The reader has consumed every sample before index ``upto`` (never moves backwards)."""
        if upto > int(self._hi[_I_ACK]):
            self._hi[_I_ACK] = upto

    @property
    def acked(self) -> int:
        return int(self._hi[_I_ACK])

    def _put_text(self, at: int, cap: int, field: int, text: str) -> None:
        data = text.encode()[:cap]
        self._shm.buf[at:at + len(data)] = data
        self._hi[field] = len(data)

    def _get_text(self, at: int, field: int) -> str:
        n = int(self._hi[field])
        return bytes(self._shm.buf[at:at + n]).decode(errors="replace")

    def set_info(self, info: Mapping[str, Any]) -> None:
        """The producer's facts (device serial, depth scale, clock...), as JSON; set before ``RUNNING``."""
        data = json.dumps(dict(info))
        if len(data.encode()) > _INFO_MAX:
            raise ValueError(f"ring info too large ({len(data)} bytes of JSON)")
        self._put_text(_INFO_AT, _INFO_MAX, _I_INFO_LEN, data)

    @property
    def info(self) -> dict[str, Any]:
        text = self._get_text(_INFO_AT, _I_INFO_LEN)
        return json.loads(text) if text else {}

    def fail(self, message: str) -> None:
        """The producer gives up: record one line for the readers and mark the ring failed."""
        self._put_text(_ERR_AT, _ERR_MAX, _I_ERR_LEN, " ".join(message.split()))
        self.state = FAILED

    @property
    def error(self) -> str:
        return self._get_text(_ERR_AT, _I_ERR_LEN)

    # ------------------------------------------------------------------ consumer side
    def read(self, index: int, copy: bool = True) -> RingEntry | None:
        """Sample ``index``, or None when it is not (or no longer) in the ring.

        ``copy=False`` returns read-only views into the slot: valid until the writer wraps around to
        it again (``capacity`` samples later); check with :meth:`still_valid`."""
        if index < 0:
            return None
        i = index % self.capacity
        want = 2 * index + 2
        if int(self._seq[i]) != want:
            return None
        fnum, tdev, thost = int(self._fnum[i]), float(self._tdev[i]), float(self._thost[i])
        if copy:
            values = {k: v.copy() for k, v in self._slots[i].items()}
        else:
            values = {}
            for k, v in self._slots[i].items():
                view = v.view()
                view.flags.writeable = False
                values[k] = view
        if int(self._seq[i]) != want:  # overwritten while we read: torn, drop it
            return None
        return RingEntry(index, fnum, tdev, thost, values)

    def holds(self, index: int) -> bool:
        """Whether sample ``index`` is complete in the ring (not yet overwritten, not being written)."""
        return index >= 0 and int(self._seq[index % self.capacity]) == 2 * index + 2

    def still_valid(self, entry: RingEntry) -> bool:
        """Whether the slot behind a zero-copy ``entry`` still holds that sample."""
        return self.holds(entry.index)

    def latest(self, copy: bool = True) -> RingEntry | None:
        """The newest complete sample (None before the first)."""
        for _ in range(8):  # the writer may lap us between reading the count and the slot; retry
            n = self.count
            if n == 0:
                return None
            e = self.read(n - 1, copy)
            if e is not None:
                return e
        return None

    def available(self) -> range:
        """Indices of the samples the ring may still hold (oldest first)."""
        n = self.count
        return range(max(0, n - self.capacity), n)  # a slot being rewritten fails its seqlock check

    def since(self, index: int, copy: bool = True) -> tuple[list[RingEntry], int]:
        """Every sample from ``index`` on that is still in the ring, oldest first, and how many of
        those were already overwritten (lost to this reader)."""
        out: list[RingEntry] = []
        n = self.count
        missed = 0
        for k in range(max(index, 0), n):
            e = self.read(k, copy)
            if e is None:
                missed += 1
            else:
                out.append(e)
        return out, missed

    def nearest(self, t: float, clock: str = "host", copy: bool = True) -> RingEntry | None:
        """The sample whose ``t_host`` (or ``t_device``) is closest to ``t``."""
        for _ in range(8):
            idx = list(self.available())
            if not idx:
                return None
            slots = np.asarray(idx) % self.capacity
            ts = (self._thost if clock == "host" else self._tdev)[slots]
            valid = self._seq[slots] == 2 * np.asarray(idx) + 2
            if not valid.any():
                continue
            d = np.where(valid, np.abs(ts - t), np.inf)
            e = self.read(idx[int(np.argmin(d))], copy)
            if e is not None:
                return e
        return None

    def __enter__(self) -> ShmRing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def retain_heap(max_block: int = 32 << 20, keep: int = 256 << 20) -> bool:
    """Make glibc's malloc keep freed memory for reuse in a process that moves frames (a camera, the
    store writer): by default every buffer over 128 KiB is a fresh mmap whose pages the kernel zeroes
    on first touch and unmaps on free. For 640x480 RGB-D frames that is half of the page faults and
    ~10 % of the writer's CPU, and the kernel time (not preemptible on many kernels) delays real-time
    loops on the same core. Blocks up to ``max_block`` bytes come from the heap, which keeps up to
    ``keep`` bytes free before trimming. False where not glibc."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
        return bool(libc.mallopt(m_mmap_threshold, max_block) and libc.mallopt(m_trim_threshold, keep)
                    and libc.mallopt(m_top_pad, 16 << 20))
    except (OSError, AttributeError):
        return False
