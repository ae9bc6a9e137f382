"""What a policy consumes and produces: observation features (the one ``Feature`` type) and the action size.

Observation features keep the layout as captured and stored (rgb (H, W, C) uint8, depth (H, W)
uint16, low-dim (D,)); the policy sees each step as ``feature.tensor_shape`` ((C, H, W) rgb,
(1, H, W) depth in metres), exactly what the training loader and the rollout's observation history
yield (both through ``robolearn.data.tensors``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from robolearn.features import KINDS, Feature

OBS_KINDS = KINDS
# Checkpoints written before the shared Feature type carried no depth scale; the simulator's was this.
LEGACY_DEPTH_SCALE = 0.001


def feature_from_json(d: Mapping[str, Any] | Feature) -> Feature:
    """A ``Feature`` from its JSON, or from the older ``{"shape": <tensor layout>, "kind": ...}`` form.

    The older form (no ``dtype``) gave the per-step tensor layout: (C, H, W) rgb, (1, H, W) depth."""
    if isinstance(d, Feature):
        return d
    d = dict(d)
    if "dtype" in d:
        return Feature.from_json(d)
    shape, kind = tuple(int(s) for s in d["shape"]), d.get("kind", "lowdim")
    if kind not in KINDS:
        raise ValueError(f"unknown observation kind {kind!r}; use one of {', '.join(KINDS)}")
    if kind == "rgb":
        if len(shape) != 3 or shape[0] not in (3, 4):
            raise ValueError(f"rgb observations are (C, H, W) with C = 3 or 4, got {shape}")
        c, h, w = shape
        return Feature((h, w, c), "uint8", "rgb")
    if kind == "depth":
        if len(shape) != 3 or shape[0] != 1:
            raise ValueError(f"depth observations are (1, H, W), got {shape}")
        return Feature(shape[1:], "uint16", "depth", depth_scale=LEGACY_DEPTH_SCALE)
    if not shape:
        raise ValueError("low-dim observations need at least one dimension")
    return Feature(shape, "float32")


def policy_feature(feature: Feature) -> Feature:
    """What a policy keeps of a store's feature: the codec is a storage detail, not an input property."""
    return dataclasses.replace(feature, codec=None)


@dataclass(frozen=True)
class ShapeMeta:
    """Observation features (in encoder order), the action key and size, and optionally the window sizes
    of the data the policy trains on (used to fill ``n_obs_steps`` / ``horizon`` left unset)."""

    obs: Mapping[str, Feature]
    action_dim: int
    action_key: str = "action"
    n_obs_steps: int | None = None
    horizon: int | None = None

    def __post_init__(self) -> None:
        obs = {k: feature_from_json(v) for k, v in self.obs.items()}
        object.__setattr__(self, "obs", obs)
        if not obs:
            raise ValueError("shape_meta needs at least one observation key")
        for k, f in obs.items():
            if f.kind == "lowdim" and not f.shape:
                raise ValueError(f"low-dim observation {k!r} needs at least one dimension")
        if int(self.action_dim) < 1:
            raise ValueError(f"action_dim must be >= 1, got {self.action_dim}")
        object.__setattr__(self, "action_dim", int(self.action_dim))

    def keys_of(self, kind: str) -> list[str]:
        return [k for k, v in self.obs.items() if v.kind == kind]

    def to_json(self) -> dict[str, Any]:
        return {
            "obs": {k: v.to_json() for k, v in self.obs.items()},
            "action_key": self.action_key,
            "action_dim": self.action_dim,
            "n_obs_steps": self.n_obs_steps,
            "horizon": self.horizon,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ShapeMeta:
        known = {"obs", "action_key", "action_dim", "n_obs_steps", "horizon"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown shape_meta fields {sorted(unknown)}; expected {sorted(known)}")
        return cls(**dict(d))

    @classmethod
    def coerce(cls, x: ShapeMeta | Mapping[str, Any]) -> ShapeMeta:
        return x if isinstance(x, ShapeMeta) else cls.from_json(x)
