"""Normalisation statistics and the normaliser that applies them; nothing else.

Statistics are computed once per store and saved in its ``stats`` group, keyed by the number of
episodes they cover, so training runs and evaluation reuse them instead of rescanning the data.
Policies carry the same numbers inside their checkpoints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from robolearn.errors import UserError

MODES = ("minmax", "gaussian", "quantile", "identity")
_EPS = 1e-6


@dataclass
class KeyStats:
    min: np.ndarray
    max: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    q01: np.ndarray
    q99: np.ndarray
    count: int

    @classmethod
    def compute(cls, data: np.ndarray) -> KeyStats:
        x = np.asarray(data, dtype=np.float64).reshape(len(data), -1)
        if len(x) == 0:
            raise ValueError("cannot compute statistics of an empty key")
        q = np.quantile(x, [0.01, 0.99], axis=0)
        shape = np.asarray(data).shape[1:]

        def f(v: np.ndarray) -> np.ndarray:
            return np.asarray(v, dtype=np.float32).reshape(shape)

        return cls(f(x.min(0)), f(x.max(0)), f(x.mean(0)), f(x.std(0)), f(q[0]), f(q[1]), len(x))

    def to_json(self) -> dict[str, Any]:
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> KeyStats:
        return cls(**{k: (np.asarray(v, dtype=np.float32) if k != "count" else int(v)) for k, v in d.items()})


class Normalizer:
    """Maps each key to roughly [-1, 1] (minmax, quantile) or zero mean, unit variance (gaussian).

    Dimensions with no spread (a constant joint, an unused gripper) map to 0 and back to their
    constant instead of dividing by zero."""

    def __init__(self, stats: Mapping[str, KeyStats], modes: Mapping[str, str] | str = "minmax") -> None:
        self.stats = dict(stats)
        self.modes = {k: (modes if isinstance(modes, str) else modes.get(k, "minmax")) for k in self.stats}
        self._params: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for k, st in self.stats.items():
            mode = self.modes[k]
            if mode not in MODES:
                raise UserError(f"unknown normalisation mode {mode!r} for {k!r}; use one of {', '.join(MODES)}")
            if mode in ("minmax", "quantile"):
                lo, hi = (st.min, st.max) if mode == "minmax" else (st.q01, st.q99)
                half = (hi - lo) / 2
                scale = np.where(half > _EPS, 1.0 / np.maximum(half, _EPS), 0.0)
                offset = (hi + lo) / 2
            elif mode == "gaussian":
                scale = np.where(st.std > _EPS, 1.0 / np.maximum(st.std, _EPS), 0.0)
                offset = st.mean
            else:
                scale, offset = np.ones_like(st.mean), np.zeros_like(st.mean)
            inv = np.where(scale != 0, 1.0 / np.where(scale != 0, scale, 1.0), 0.0)
            self._params[k] = (scale.astype(np.float32), inv.astype(np.float32), offset.astype(np.float32))

    def normalize(self, key: str, x: Any) -> Any:
        scale, _, offset = self._cast(key, x)
        return (x - offset) * scale

    def unnormalize(self, key: str, x: Any) -> Any:
        # Dims with no spread have inv == 0 and come back as their constant.
        _, inv, offset = self._cast(key, x)
        return x * inv + offset

    def _cast(self, key: str, x: Any) -> tuple[Any, ...]:
        if key not in self._params:
            raise KeyError(f"no normalisation statistics for {key!r}; have {', '.join(self._params)}")
        params = self._params[key]
        if not isinstance(x, np.ndarray):
            import torch

            if isinstance(x, torch.Tensor):
                return tuple(torch.as_tensor(p, device=x.device, dtype=x.dtype) for p in params)
        return params

    def to_json(self) -> dict[str, Any]:
        return {"modes": self.modes, "stats": {k: s.to_json() for k, s in self.stats.items()}}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Normalizer:
        return cls({k: KeyStats.from_json(v) for k, v in d["stats"].items()}, d["modes"])


def store_stats(store: Any, keys: Sequence[str], recompute: bool = False) -> dict[str, KeyStats]:
    """Statistics of low-dim ``keys`` over all committed episodes, cached in the store."""
    path = str(store.path)
    cached: dict[str, Any] = {}
    try:
        grp = zarr.open_group(path + "/stats", mode="r")
        saved = grp.attrs.asdict()
        if saved.get("n_episodes") == store.n_episodes:
            cached = saved.get("keys", {})
    except Exception:  # noqa: BLE001 - no stats yet
        pass
    out: dict[str, KeyStats] = {}
    missing = [k for k in keys if recompute or k not in cached]
    for k in keys:
        if k not in missing:
            out[k] = KeyStats.from_json(cached[k])
    for k in missing:
        spec = store.keys[k][1] if k in store.keys else None
        if spec is not None and spec.kind != "lowdim":
            raise ValueError(f"{k!r} is an image key; images are scaled to [0, 1], not normalised by statistics")
        stream = store.stream_of(k)
        out[k] = KeyStats.compute(store.array(k)[: store.committed_rows(stream)])
    if missing:
        try:
            grp = zarr.open_group(path + "/stats", mode="a")
            merged = {**cached, **{k: out[k].to_json() for k in missing}}
            grp.attrs.update({"n_episodes": store.n_episodes, "keys": merged})
        except Exception:  # noqa: BLE001 - a read-only store still gets its stats, just not cached
            pass
    return out
