"""The `Teleoperator` interface: who drives a rig while demonstrations are recorded.

A teleoperator turns the rig's latest observation into an action and says whether it is
intervening (overriding an autonomous policy). Operator decisions (start an episode, keep or
discard it, mark success or failure, reset the scene) arrive as :class:`Event` s, polled between
control ticks. The scripted sim expert, a SpaceMouse, a keyboard or a leader arm all look alike.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Iterable

import numpy as np

from robolearn.rigs.base import Observation, Rig


class Event(enum.Enum):
    START = "start"  # begin recording an episode
    KEEP = "keep"  # stop and keep the episode
    DISCARD = "discard"  # stop and drop the episode
    SUCCESS = "success"  # mark the episode successful (and stop it)
    FAILURE = "failure"  # mark the episode failed (and stop it)
    RESET = "reset"  # the scene is being reset; no recording until START
    QUIT = "quit"  # end the session


class Teleoperator(ABC):
    """``connect`` -> (``reset`` -> ``act`` ... ``events``)* -> ``disconnect``."""

    name: str = ""
    # Whether episodes begin without the operator pressing START: scripted operators start at once,
    # human devices wait for START between episodes (the recorder drives the rig meanwhile).
    autostart: bool = True

    def connect(self, rig: Rig) -> None:  # noqa: B027 - optional hook
        """Open the device; ``rig`` is the rig it will drive (a sim expert reads its privileged state)."""

    def disconnect(self) -> None:  # noqa: B027 - optional hook
        """Release the device. Safe to call twice."""

    def reset(self, seed: int | None = None) -> None:  # noqa: B027 - optional hook
        """A new episode begins (after the rig's reset); ``seed`` makes scripted operators repeatable."""

    @abstractmethod
    def act(self, observation: Observation) -> tuple[np.ndarray, bool]:
        """The action for this tick and whether the operator is intervening."""

    def events(self) -> Iterable[Event]:
        """Operator events since the last call (none for a scripted operator)."""
        return ()

    def episode_notes(self) -> dict:
        """Facts about the last episode to keep in the store (e.g. a scripted perturbation)."""
        return {}

    @property
    def done(self) -> bool:
        """A scripted operator that has finished its script says so; humans end episodes with events."""
        return False
