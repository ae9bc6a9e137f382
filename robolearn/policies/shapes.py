"""What a policy consumes and produces: observation keys with their shapes, and the action size."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

OBS_KINDS = ("lowdim", "rgb", "depth")


@dataclass(frozen=True)
class ObsSpec:
    """One observation key, per time step, as the dataset yields it.

    ``shape`` is (D, ...) for low-dim, (C, H, W) for rgb (C = 3 or 4) and (1, H, W) for depth."""

    shape: tuple[int, ...]
    kind: str = "lowdim"

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if self.kind not in OBS_KINDS:
            raise ValueError(f"unknown observation kind {self.kind!r}; use one of {', '.join(OBS_KINDS)}")
        if self.kind == "rgb" and (len(self.shape) != 3 or self.shape[0] not in (3, 4)):
            raise ValueError(f"rgb observations are (C, H, W) with C = 3 or 4, got {self.shape}")
        if self.kind == "depth" and (len(self.shape) != 3 or self.shape[0] != 1):
            raise ValueError(f"depth observations are (1, H, W), got {self.shape}")
        if self.kind == "lowdim" and len(self.shape) == 0:
            raise ValueError("low-dim observations need at least one dimension")


@dataclass(frozen=True)
class ShapeMeta:
    """Observation keys (in encoder order), the action key and size, and optionally the window sizes
    of the data the policy trains on (used to fill ``n_obs_steps`` / ``horizon`` left unset)."""

    obs: Mapping[str, ObsSpec]
    action_dim: int
    action_key: str = "action"
    n_obs_steps: int | None = None
    horizon: int | None = None

    def __post_init__(self) -> None:
        obs = {k: (v if isinstance(v, ObsSpec) else ObsSpec(tuple(v["shape"]), v.get("kind", "lowdim")))
               for k, v in self.obs.items()}
        object.__setattr__(self, "obs", obs)
        if not obs:
            raise ValueError("shape_meta needs at least one observation key")
        if int(self.action_dim) < 1:
            raise ValueError(f"action_dim must be >= 1, got {self.action_dim}")
        object.__setattr__(self, "action_dim", int(self.action_dim))

    def keys_of(self, kind: str) -> list[str]:
        return [k for k, v in self.obs.items() if v.kind == kind]

    def to_json(self) -> dict[str, Any]:
        return {
            "obs": {k: {"shape": list(v.shape), "kind": v.kind} for k, v in self.obs.items()},
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
