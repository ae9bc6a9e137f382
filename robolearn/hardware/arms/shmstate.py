"""A one-writer, many-reader block of float64 numbers in shared memory (a sequence lock).

The writer bumps the sequence number to odd, writes, bumps it to even; a reader copies the block and
keeps the copy only if the number was even and unchanged. Readers never block the writer, which is
what a servo loop needs. A short text field carries a fault message.
"""

from __future__ import annotations

import time
from multiprocessing import resource_tracker, shared_memory

import numpy as np

_TEXT = 512  # bytes for the text field


def _attach(name: str | None) -> shared_memory.SharedMemory:
    """Attach without registering with the resource tracker (Python < 3.13 always does): a tracker
    would unlink the block when this process exits, while the creator still uses it."""
    register = resource_tracker.register
    resource_tracker.register = lambda *a, **k: None  # type: ignore[assignment]
    try:
        return shared_memory.SharedMemory(name=name)
    finally:
        resource_tracker.register = register  # type: ignore[assignment]


class ShmState:
    """``n`` float64 values plus a text field, in a named shared-memory block."""

    def __init__(self, n: int, name: str | None = None, create: bool = False) -> None:
        self.n = int(n)
        size = 8 * (self.n + 2) + _TEXT
        if create:
            self._shm = shared_memory.SharedMemory(create=True, size=size, name=name)
        else:
            self._shm = _attach(name)
        self.owner = create
        self._arr = np.ndarray((self.n + 2,), np.float64, self._shm.buf[: 8 * (self.n + 2)])
        self._text = self._shm.buf[8 * (self.n + 2) : size]
        if create:
            self._arr[:] = 0.0
            self._text[:] = b"\0" * _TEXT

    @property
    def name(self) -> str:
        return self._shm.name

    def write(self, values: np.ndarray, text: str | None = None) -> None:
        a = self._arr
        a[0] += 1.0  # odd: writing
        a[2:] = values
        if text is not None:
            b = text.encode()[: _TEXT - 1]
            self._text[: len(b) + 1] = b + b"\0"
        a[1] = time.monotonic()
        a[0] += 1.0  # even: consistent

    def read(self) -> tuple[np.ndarray, float, int]:
        """(values copy, write time, sequence number); sequence 0 means never written."""
        a = self._arr
        for _ in range(10000):
            s0 = a[0]
            if int(s0) % 2 == 0:
                out = a.copy()
                if a[0] == s0:
                    return out[2:], float(out[1]), int(s0) // 2
            time.sleep(0)
        raise RuntimeError("shared state kept changing while being read")

    def text(self) -> str:
        raw = bytes(self._text)
        return (
            raw[: raw.index(b"\0")].decode(errors="replace") if b"\0" in raw else raw.decode(errors="replace")
        )

    def close(self) -> None:
        try:
            del self._arr
            self._text.release()
            self._shm.close()
        except (BufferError, AttributeError):
            pass
        if self.owner:
            try:
                self._shm.unlink()
            except FileNotFoundError:
                pass
