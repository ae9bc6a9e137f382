"""Teleoperators: who drives a rig while demonstrations are recorded (`Teleoperator`).

``make_teleop("expert")`` is the scripted simulation expert; devices (SpaceMouse, keyboard,
gamepad, leader arm) plug in beside it.
"""

from __future__ import annotations

from robolearn.errors import UserError
from robolearn.teleop.base import Event, Teleoperator

__all__ = ["Event", "Teleoperator", "make_teleop"]

TELEOPS = ("expert",)


def make_teleop(name: str) -> Teleoperator:
    """A teleoperator by name: ``expert`` (scripted, simulation only)."""
    if name == "expert":
        from robolearn.teleop.expert import ExpertTeleop

        return ExpertTeleop()
    raise UserError(f"unknown teleoperator {name!r}; available: {', '.join(TELEOPS)}")
