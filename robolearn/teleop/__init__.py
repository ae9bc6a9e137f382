"""Teleoperators: who drives a rig while demonstrations are recorded (`Teleoperator`).

``make_teleop("expert")`` is the scripted simulation expert; devices (SpaceMouse, keyboard,
gamepad, leader arm) plug in beside it.
"""

from __future__ import annotations

from robolearn.errors import UserError
from robolearn.teleop.base import Event, Teleoperator

__all__ = ["Event", "Teleoperator", "make_teleop"]

TELEOPS = ("expert",)


def make_teleop(name: str, perturb: str | None = None) -> Teleoperator:
    """A teleoperator by name: ``expert`` (scripted, simulation only; ``perturb`` makes it fail on
    purpose), or ``package.module:Class`` for one of your own (a :class:`Teleoperator` subclass taking
    no arguments)."""
    if name == "expert":
        from robolearn.teleop.expert import ExpertTeleop

        return ExpertTeleop(perturb=perturb)
    if perturb is not None:
        raise UserError(f"--perturb works with the scripted expert only, not teleoperator {name!r}")
    if ":" in name:
        from robolearn.resources import load_class

        return load_class(name, Teleoperator, "teleoperator")()
    raise UserError(f"unknown teleoperator {name!r}; available: {', '.join(TELEOPS)} or package.module:Class")
