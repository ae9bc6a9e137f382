"""Task definitions: one user-editable YAML file per simulated task under ``sim/tasks/``.

Tasks are found by :mod:`robolearn.resources` (``$ROBOLEARN_SIM_DIR/tasks`` when set, else the current
directory's ``sim/tasks`` and then the built-in ones) and read by the typed loader of
:mod:`robolearn.config`: a new field here is a new YAML key, checked like the others.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robolearn import resources
from robolearn.config import load_yaml_config
from robolearn.errors import ConfigError

ENV_VAR = resources.SIM_DIR_ENV


@dataclass(frozen=True)
class TaskConfig:
    """A simulated task: which robosuite environment, what to say to the policy, how long to run."""

    name: str = field(metadata={"nonempty": True})
    env_name: str = field(metadata={"nonempty": True})  # robosuite environment class, e.g. "Lift"
    # natural-language task text given to language-conditioned policies
    instruction: str = field(metadata={"nonempty": True})
    horizon: int = field(metadata={"min": 1})  # max control steps (20 Hz) per episode
    cameras: tuple[str, ...] = ("agentview", "robot0_eye_in_hand")  # default cameras for collection
    env_kwargs: dict[str, Any] = field(default_factory=dict)  # extra robosuite.make kwargs
    # Scripted expert that demonstrates the task (a name from robolearn.sim.experts.EXPERTS, or
    # "package.module:Class"); None for tasks recorded only by teleoperation.
    expert: str | None = None
    # Short name -> MuJoCo body of each task object (privileged state for experts, grasp checks).
    objects: dict[str, str] = field(default_factory=dict)
    # YAML file it was loaded from; filled in by load_task, never read from YAML.
    source: Path | None = field(default=None, compare=False, metadata={"internal": True})

    @property
    def text(self) -> str:
        """Alias of ``instruction``."""
        return self.instruction

    def validate(self) -> None:
        if not all(c.strip() for c in self.cameras):
            raise ConfigError(f"camera names must not be empty, got {list(self.cameras)}", key="cameras")


def tasks_dir() -> Path:
    """The built-in task folder (``$ROBOLEARN_SIM_DIR/tasks`` when that is set)."""
    return resources.builtin_dir("task")


def list_tasks() -> list[str]:
    """Names of the tasks that :func:`load_task` finds by name (sorted)."""
    return resources.available("task")


def load_task(name_or_path: str | os.PathLike) -> TaskConfig:
    """Load and validate a task by bare name (``"lift"``) or by path to a YAML file.

    Raises :class:`~robolearn.errors.UserError` (a ``ValueError``) for unknown tasks, unreadable or
    malformed YAML, unknown keys, wrong types and out-of-range values."""
    path = resources.resolve("task", name_or_path)
    task = load_yaml_config(TaskConfig, path, "task file")
    return dataclasses.replace(task, source=path.resolve())
