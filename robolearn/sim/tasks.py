"""Task definitions: one user-editable YAML file per simulated task under ``sim/tasks/``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import robolearn

ENV_VAR = "ROBOLEARN_SIM_DIR"


@dataclass(frozen=True)
class TaskConfig:
    """A simulated task: which robosuite environment, what to say to the policy, how long to run."""

    name: str
    env_name: str  # robosuite environment class, e.g. "Lift"
    instruction: str  # natural-language task text given to language-conditioned policies
    horizon: int  # max control steps (20 Hz) per episode
    cameras: tuple[str, ...] = ("agentview", "robot0_eye_in_hand")  # default cameras for collection
    env_kwargs: dict[str, Any] = field(default_factory=dict)  # extra robosuite.make kwargs
    # Scripted expert that demonstrates the task (a name from robolearn.sim.experts.EXPERTS, or
    # "package.module:Class"); None for tasks recorded only by teleoperation.
    expert: str | None = None
    # Short name -> MuJoCo body of each task object (privileged state for experts, grasp checks).
    objects: dict[str, str] = field(default_factory=dict)
    source: Path | None = field(default=None, compare=False)  # YAML file it was loaded from

    @property
    def text(self) -> str:
        """Alias of ``instruction``."""
        return self.instruction


# Expected YAML type per field; `source` is filled in by the loader, never read from YAML.
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "env_name": (str,),
    "instruction": (str,),
    "horizon": (int,),
    "cameras": (list, tuple),
    "env_kwargs": (dict,),
    "expert": (str,),
    "objects": (dict,),
}
_REQUIRED = ("name", "env_name", "instruction", "horizon")


def tasks_dir() -> Path:
    """Directory holding the task YAML files: ``$ROBOLEARN_SIM_DIR/tasks`` or the repo's ``sim/tasks``."""
    root = os.environ.get(ENV_VAR)
    sim_dir = Path(root) if root else Path(robolearn.__file__).resolve().parents[1] / "sim"
    return sim_dir / "tasks"


def list_tasks() -> list[str]:
    """Names of the tasks defined in :func:`tasks_dir` (sorted)."""
    d = tasks_dir()
    if not d.is_dir():
        return []
    return sorted(p.stem for p in d.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def _looks_like_path(name_or_path: str) -> bool:
    return os.sep in name_or_path or "/" in name_or_path or name_or_path.endswith((".yaml", ".yml"))


def _resolve(name_or_path: str) -> Path:
    if _looks_like_path(name_or_path):
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise ValueError(f"task file not found: {path}")
        return path
    for suffix in (".yaml", ".yml"):
        path = tasks_dir() / f"{name_or_path}{suffix}"
        if path.is_file():
            return path
    available = ", ".join(list_tasks()) or "(none)"
    raise ValueError(f"unknown task {name_or_path!r}; available: {available} (in {tasks_dir()})")


def _validate(raw: Any, path: Path) -> TaskConfig:
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of task fields, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(_FIELD_TYPES))
    if unknown:
        raise ValueError(
            f"{path}: unknown field(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(_FIELD_TYPES)}"
        )
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise ValueError(f"{path}: missing required field(s) {', '.join(map(repr, missing))}")
    for key, value in raw.items():
        types = _FIELD_TYPES[key]
        # bool is an int subclass; `horizon: true` is a typo, not a horizon of 1.
        if not isinstance(value, types) or isinstance(value, bool):
            want = " or ".join(t.__name__ for t in types)
            raise ValueError(f"{path}: field {key!r} must be {want}, got {type(value).__name__} ({value!r})")
    for key in ("name", "env_name", "instruction"):
        if not raw[key].strip():
            raise ValueError(f"{path}: field {key!r} must not be empty")
    if raw["horizon"] <= 0:
        raise ValueError(f"{path}: field 'horizon' must be positive, got {raw['horizon']}")
    cameras = raw.get("cameras", TaskConfig.cameras)
    if not all(isinstance(c, str) and c for c in cameras):
        raise ValueError(f"{path}: field 'cameras' must be a list of non-empty strings, got {cameras!r}")
    env_kwargs = raw.get("env_kwargs", {})
    if not all(isinstance(k, str) for k in env_kwargs):
        raise ValueError(f"{path}: field 'env_kwargs' must have string keys")
    return TaskConfig(
        name=raw["name"],
        env_name=raw["env_name"],
        instruction=raw["instruction"],
        horizon=raw["horizon"],
        cameras=tuple(cameras),
        env_kwargs=dict(env_kwargs),
        expert=raw.get("expert"),
        objects=dict(raw.get("objects", {})),
        source=path.resolve(),
    )


def load_task(name_or_path: str) -> TaskConfig:
    """Load and validate a task by bare name (``"lift"``) or by path to a YAML file.

    Raises ``ValueError`` for unknown tasks, unreadable or malformed YAML, unknown keys and wrong types.
    """
    path = _resolve(str(name_or_path))
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: invalid YAML: {exc}") from exc
    return _validate(raw, path)
