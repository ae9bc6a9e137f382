"""Teleoperators: who drives a rig while demonstrations are recorded (`Teleoperator`).

``make_teleop("expert")`` is the scripted simulation expert; ``spacemouse``, ``keyboard``, ``gamepad``
and ``leader`` are human devices (settings from the rig file's ``teleop`` section), ``replay:<store>``
replays recorded actions.
"""

from __future__ import annotations

from typing import Any

from robolearn.errors import UserError
from robolearn.teleop.base import Event, Teleoperator

__all__ = ["Event", "Teleoperator", "make_teleop"]

TELEOPS = ("expert", "spacemouse", "keyboard", "gamepad", "leader", "replay:<store>")


def make_teleop(name: str, settings: Any = None, perturb: str | None = None) -> Teleoperator:
    """A teleoperator by name: ``expert`` (scripted, simulation only), a device (``spacemouse``,
    ``keyboard``, ``gamepad``, ``leader``; ``settings`` is a :class:`~robolearn.teleop.devices.TeleopSettings`,
    e.g. a rig file's ``teleop`` section), ``replay:<store>``, or ``package.module:Class`` for one of
    your own (a :class:`Teleoperator` subclass taking no arguments). ``perturb`` makes the expert fail
    on purpose (``noise``, ``early_release``, ``stall``)."""
    if name == "expert":
        from robolearn.teleop.expert import ExpertTeleop

        return ExpertTeleop(perturb=perturb)
    if perturb is not None:
        raise UserError(f"--perturb works with the scripted expert only, not teleoperator {name!r}")
    if name == "spacemouse":
        from robolearn.teleop.spacemouse import SpaceMouseTeleop

        return SpaceMouseTeleop(settings)
    if name == "keyboard":
        from robolearn.teleop.keyboard import KeyboardTeleop

        return KeyboardTeleop(settings)
    if name == "gamepad":
        from robolearn.teleop.gamepad import GamepadTeleop

        return GamepadTeleop(settings)
    if name == "leader":
        from robolearn.teleop.leader import LeaderTeleop

        return LeaderTeleop(settings)
    if name.startswith("replay:"):
        from robolearn.teleop.replay import ReplayTeleop

        return ReplayTeleop(name.split(":", 1)[1])
    if ":" in name:
        from robolearn.resources import load_class

        return load_class(name, Teleoperator, "teleoperator")()
    raise UserError(f"unknown teleoperator {name!r}; available: {', '.join(TELEOPS)} or package.module:Class")
