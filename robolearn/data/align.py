"""Aligning streams with their own clocks onto the control ticks, at read time.

Each stream keeps the timestamps it was captured with; nothing is resampled on write. Training
and replay need one sample of every stream per control tick, chosen here.
"""

from __future__ import annotations

import numpy as np


def align_to_reference(
    ref_t: np.ndarray,
    src_t: np.ndarray,
    method: str = "latest",
    max_lag: float | None = None,
) -> np.ndarray:
    """Index into ``src_t`` for every time in ``ref_t``.

    ``latest`` picks the newest sample captured at or before the tick, which is what the robot
    could have seen at that moment (causal); a tick earlier than the first sample takes the first.
    ``nearest`` picks the closest sample in either direction (for offline labels).
    With ``max_lag`` a tick whose chosen sample is further away than that raises, so a stalled
    camera shows up instead of silently repeating one frame.
    """
    ref_t = np.asarray(ref_t, dtype=np.float64)
    src_t = np.asarray(src_t, dtype=np.float64)
    if len(src_t) == 0:
        raise ValueError("cannot align a stream with no samples in this episode")
    if np.any(np.diff(src_t) < 0):
        raise ValueError("stream timestamps go backwards; cannot align")
    if method == "latest":
        idx = np.searchsorted(src_t, ref_t, side="right") - 1
        idx = np.clip(idx, 0, len(src_t) - 1)
    elif method == "nearest":
        right = np.clip(np.searchsorted(src_t, ref_t, side="left"), 0, len(src_t) - 1)
        left = np.clip(right - 1, 0, len(src_t) - 1)
        idx = np.where(np.abs(src_t[left] - ref_t) <= np.abs(src_t[right] - ref_t), left, right)
    else:
        raise ValueError(f"unknown alignment method {method!r}; use 'latest' or 'nearest'")
    if max_lag is not None:
        lag = np.abs(ref_t - src_t[idx])
        worst = int(np.argmax(lag)) if len(lag) else 0
        if len(lag) and lag[worst] > max_lag:
            raise ValueError(f"tick {worst} at t={ref_t[worst]:.3f}s has no sample within {max_lag}s (nearest is {lag[worst]:.3f}s away)")
    return idx.astype(np.int64)
