"""Rigs: a simulated task or a real robot with its sensors, behind one interface (`Rig`).

``make_rig("sim:lift", cameras=[...])`` builds the simulated rig; ``make_rig("hardware/<rig>.yaml")``
builds a real one from its rig file.
"""

from __future__ import annotations

from typing import Any

from robolearn.errors import UserError
from robolearn.rigs.base import ACTION_KEY, Observation, Rig, RigError, Sample, StepResult, flat

__all__ = ["ACTION_KEY", "Observation", "Rig", "RigError", "Sample", "StepResult", "flat", "make_rig", "rig_class"]


def rig_class(spec: str) -> type[Rig]:
    """The class ``make_rig(spec)`` would build, without building it (to ask its capabilities)."""
    if spec.startswith("sim:"):
        from robolearn.rigs.sim import SimRig

        return SimRig
    if spec.endswith((".yaml", ".yml")):
        from robolearn.rigs.hardware import HardwareRig

        return HardwareRig
    return Rig


def make_rig(spec: str, **options: Any) -> Rig:
    """A rig from ``sim:<task name or task YAML>`` or a rig file ``hardware/<rig>.yaml``.

    ``options`` are the simulated rig's settings (``cameras``, ``image_size``, ``depth``,
    ``defer_cameras``, ``seed``); a rig file carries its own, changed by ``overrides=["key=value"]``."""
    if spec.startswith("sim:"):
        from robolearn.rigs.sim import SimRig, SimRigConfig

        task = spec.split(":", 1)[1]
        if not task:
            raise UserError("rig 'sim:' names no task; use sim:<task>, e.g. sim:lift")
        unknown = set(options) - set(SimRigConfig.__dataclass_fields__)
        if unknown:
            raise UserError(f"simulated rigs take no option(s) {sorted(unknown)}")
        if "cameras" in options:
            options["cameras"] = tuple(options["cameras"])
        return SimRig(SimRigConfig(task=task, **options))
    if spec.endswith((".yaml", ".yml")):
        overrides = list(options.pop("overrides", ()))
        if options:
            raise UserError(f"rig files carry their own settings; {sorted(options)} apply to sim:<task> rigs only "
                            "(change a rig file's setting with overrides, e.g. record --set teleop.path=/dev/hidraw3)")
        from robolearn.resources import resolve

        resolve("rig", spec)  # a missing file fails here, before the hardware modules load
        from robolearn.rigs.hardware import HardwareRig, load_rig_config

        return HardwareRig(load_rig_config(spec, overrides), spec)
    raise UserError(f"unknown rig {spec!r}: use sim:<task> (e.g. sim:lift) or a rig file hardware/<rig>.yaml")
