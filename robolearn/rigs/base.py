"""The `Rig` interface: one surface for a simulated task and a real robot.

A rig declares what it observes and accepts (streams of :class:`~robolearn.features.Feature`), its
control rate, and gives the latest sample of every stream with the device's capture time and the
host's receive time. Everything above (recording, evaluation, deployment, RL) drives rigs through
this surface only; rigs know nothing of policies or stores.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from robolearn.features import Feature

ACTION_KEY = "action"


@dataclass(frozen=True)
class Sample:
    """The latest values of one stream, with both clocks (seconds)."""

    values: Mapping[str, np.ndarray]
    t_device: float  # when the device captured it (sim: simulated time)
    t_host: float  # when this process received it (sim: simulated time)


# Stream name -> its latest sample. The control stream holds proprioception (and object state in sim).
Observation = dict[str, Sample]


def flat(obs: Observation) -> dict[str, np.ndarray]:
    """All keys of all streams in one dict (key names are unique across a rig's streams)."""
    out: dict[str, np.ndarray] = {}
    for sample in obs.values():
        out.update(sample.values)
    return out


@dataclass
class StepResult:
    """What the rig knows after an action: success where it can tell (sim), else None."""

    success: bool | None = None
    truncated: bool = False  # the rig's own episode limit was reached
    info: dict[str, Any] = field(default_factory=dict)


class RigError(RuntimeError):
    """A device failed while running (a camera stalled, an arm faulted): the episode cannot go on."""


class Rig(ABC):
    """A robot with its sensors, at a fixed control rate.

    Lifecycle: ``connect()`` -> (``reset(seed)`` -> ``observe()`` / ``send_action()`` ...)* -> ``close()``.
    Also a context manager (``with make_rig(...) as rig:``), which connects and always closes.
    """

    name: str = ""

    # ------------------------------------------------------------ declaration
    @property
    @abstractmethod
    def features(self) -> dict[str, dict[str, Feature]]:
        """Observed streams: stream name -> key -> feature. The control stream is ``"control"``."""

    @property
    @abstractmethod
    def action_feature(self) -> Feature:
        """What ``send_action`` takes (low-dim)."""

    @property
    @abstractmethod
    def control_hz(self) -> float:
        """Control ticks per second."""

    @property
    def clocks(self) -> dict[str, str]:
        """Per stream, where its device timestamps come from (e.g. ``sim``, ``realsense-global``, ``host``)."""
        return {s: "host" for s in self.features}

    @property
    def task_text(self) -> str:
        """What the rig's current task is, in words (empty when the operator says it)."""
        return ""

    @property
    def max_steps(self) -> int | None:
        """Episode limit in control ticks, or None where the operator ends episodes."""
        return None

    @property
    def deferred_streams(self) -> dict[str, dict[str, Feature]]:
        """Streams that ``observe`` leaves out and :meth:`fill_deferred` produces after an episode.

        The simulator's fast path: roll out without cameras, keep the exact state per tick, and render
        only the episodes worth keeping. Real rigs stream everything live and declare none."""
        return {}

    # Whether independent copies of this rig may run attempts in parallel processes (simulators).
    supports_parallel_attempts: bool = False
    # A real rig runs on the wall clock: the rollout loop paces its ticks at ``control_hz``. A
    # simulator advances one tick per action and runs as fast as it can.
    realtime: bool = False

    def spec(self) -> str:
        """A string ``make_rig`` rebuilds this rig from (for worker processes and episode info)."""
        return self.name

    # ------------------------------------------------------------ lifecycle
    def connect(self) -> None:  # noqa: B027 - optional hook
        """Open devices and start their processes. Idempotent."""

    @abstractmethod
    def close(self) -> None:
        """Stop the robot and release every device. Safe to call twice."""

    def reset(self, seed: int | None = None) -> Observation:
        """Begin an episode; a seed picks the initial state where that means something (simulation)."""
        del seed
        return self.observe()

    @abstractmethod
    def observe(self, streams: Collection[str] | None = None) -> Observation:
        """The latest sample of every (non-deferred) stream; with ``streams``, at least of those and the
        control stream (a rig may return more, or skip reading the rest, as cameras whose copy costs time)."""

    @abstractmethod
    def send_action(self, action: np.ndarray) -> StepResult:
        """Apply one control tick's action. A simulator advances one tick; a real rig schedules it."""

    def new_samples(self) -> dict[str, list[Sample]] | None:
        """Every sample of the non-control streams that arrived since the last call (or ``reset``), for
        rigs whose streams run faster than the control loop or on their own clocks (cameras); None
        where ``observe`` already shows every sample (simulators)."""
        return None

    def fill_deferred(self, control: Mapping[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
        """Values of the deferred streams for an episode's control rows (one per tick)."""
        del control
        return {}

    def episode_notes(self) -> dict[str, Any]:
        """Per-episode facts to keep in the store (dropped frames per stream, ...)."""
        return {}

    def __enter__(self) -> Rig:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
