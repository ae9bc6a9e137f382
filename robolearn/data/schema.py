"""What the demonstration store holds: key specs, episode metadata, errors.

Kept apart from the store so that recorders, policies and tests can speak about the schema
without touching Zarr.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from robolearn.errors import UserError

SCHEMA_VERSION = 1
FORMAT_NAME = "robolearn.demo"

# The control stream carries actions, proprioception and per-step columns; every other stream
# (cameras, force sensors, ...) is aligned onto its ticks at read time.
CONTROL_STREAM = "control"

KINDS = ("lowdim", "rgb", "depth")
SOURCES = ("expert", "teleop", "policy", "rl")


class StoreError(UserError):
    """Any problem with a store the user can act on; the message says what and where."""


class SchemaError(StoreError):
    """Data that does not match the store's schema (version, key, shape, dtype)."""


class CorruptionError(StoreError):
    """A chunk or metadata file that cannot be read back."""


@dataclass(frozen=True)
class Feature:
    """One per-sample array: what a rig produces, the store keeps and a policy reads.

    ``shape`` excludes the time axis and is the layout as captured and stored: (D, ...) for low-dim,
    (H, W, C) for rgb, (H, W) for depth. Policies see images channel-first (``tensor_shape``).
    """

    shape: tuple[int, ...]
    dtype: str = "float32"
    kind: str = "lowdim"
    # Metres per unit for depth; None elsewhere.
    depth_scale: float | None = None
    codec: str | None = None
    # Optional per-dimension names of a low-dim vector (joint names, "x", "y", "z", ...).
    names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SchemaError(f"unknown key kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "dtype", np.dtype(self.dtype).name)
        if self.names is not None:
            object.__setattr__(self, "names", tuple(str(n) for n in self.names))
            if self.kind != "lowdim" or len(self.shape) != 1 or len(self.names) != self.shape[0]:
                raise SchemaError(f"names {list(self.names)} need a 1-D low-dim feature of that many entries, "
                                  f"got {self.kind} {self.shape}")
        if self.kind == "rgb" and (self.dtype != "uint8" or len(self.shape) != 3 or self.shape[-1] not in (3, 4)):
            raise SchemaError(f"rgb keys must be uint8 (H, W, 3|4), got {self.dtype} {self.shape}")
        if self.kind == "depth" and (self.dtype != "uint16" or len(self.shape) != 2):
            raise SchemaError(f"depth keys must be uint16 (H, W), got {self.dtype} {self.shape}")
        if self.kind == "depth" and not self.depth_scale:
            raise SchemaError("depth keys need depth_scale (metres per unit)")

    @property
    def tensor_shape(self) -> tuple[int, ...]:
        """Per-step shape as the training loader yields it: (C, H, W) rgb, (1, H, W) depth."""
        if self.kind == "rgb":
            h, w, c = self.shape
            return (c, h, w)
        if self.kind == "depth":
            return (1, *self.shape)
        return self.shape

    def to_json(self) -> dict[str, Any]:
        d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}
        if d["names"] is None:
            del d["names"]  # stores written before names existed read back equal
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Feature:
        return cls(**{**d, "shape": tuple(d["shape"])})

    @classmethod
    def infer(cls, value: np.ndarray, kind: str | None = None, depth_scale: float | None = None) -> Feature:
        """Spec of one sample; images are recognised by dtype and shape unless told."""
        value = np.asarray(value)
        if kind is None:
            if value.dtype == np.uint8 and value.ndim == 3 and value.shape[-1] in (3, 4):
                kind = "rgb"
            elif value.dtype == np.uint16 and value.ndim == 2:
                kind = "depth"
            else:
                kind = "lowdim"
        dtype = value.dtype.name
        if kind == "lowdim" and value.dtype.kind == "f":  # low-dim data is float32 by design
            dtype = "float32"
        return cls(shape=value.shape, dtype=dtype, kind=kind, depth_scale=depth_scale)


# The store's name for a feature (one per-sample array of a stream).
KeySpec = Feature


@dataclass
class EpisodeInfo:
    """Per-episode metadata, stored as one JSON document per episode."""

    task: str = ""
    success: bool = False
    source: str = "expert"
    rig: str = ""
    fps: float = 0.0
    length: int = 0  # control ticks
    dropped_frames: dict[str, int] = field(default_factory=dict)
    seed: int | None = None
    started_at: float | None = None  # host wall-clock, seconds since the epoch
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise SchemaError(f"episode source must be one of {', '.join(SOURCES)}, got {self.source!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EpisodeInfo:
        d = json.loads(text)
        known = {f for f in cls.__dataclass_fields__}
        extra = {k: v for k, v in d.items() if k not in known}
        info = cls(**{k: v for k, v in d.items() if k in known})
        if extra:  # written by a newer minor version: keep, don't fail
            info.notes = {**info.notes, "_extra": extra}
        return info
