"""The scripted sim expert as a teleoperator: it reads the simulator's privileged state."""

from __future__ import annotations

import numpy as np

from robolearn.errors import UserError
from robolearn.rigs.base import Observation, Rig, flat
from robolearn.teleop.base import Teleoperator


class ExpertTeleop(Teleoperator):
    """Drives a :class:`~robolearn.rigs.sim.SimRig` with the expert its task definition names.

    The expert of episode ``seed`` draws its variation from ``np.random.default_rng(seed)``, so the
    same reset seed gives the same demonstration in any process."""

    name = "expert"

    def __init__(self) -> None:
        self._rig = None
        self._expert = None

    def connect(self, rig: Rig) -> None:
        from robolearn.rigs.sim import SimRig

        if not isinstance(rig, SimRig):
            raise UserError(f"the scripted expert drives only simulated rigs (sim:<task>), not {rig.name}; on a "
                            "rig file use a device (spacemouse, keyboard, gamepad, leader) or replay:<store>")
        if not rig.task.expert:
            raise UserError(f"task {rig.task.name!r} names no expert (field 'expert' in {rig.task.source}); "
                            "record it with a teleoperation device instead")
        from robolearn.sim.experts import make_expert

        missing = [o for o in make_expert(rig.task.expert, np.random.default_rng(0)).required_objects()
                   if o not in rig.task.objects]
        if missing:
            raise UserError(f"expert {rig.task.expert!r} reads object(s) {missing}, which task {rig.task.name!r} "
                            f"does not define; add them to 'objects' in {rig.task.source} (short name: body name)")
        self._rig = rig

    def reset(self, seed: int | None = None) -> None:
        from robolearn.sim.experts import make_expert

        if self._rig is None:
            raise RuntimeError("connect() the expert to a rig first")
        self._expert = make_expert(self._rig.task.expert, np.random.default_rng(seed))
        self._expert.reset(self._rig.env)

    def act(self, observation: Observation) -> tuple[np.ndarray, bool]:
        if self._expert is None:
            raise RuntimeError("reset() the expert before act()")
        return np.asarray(self._expert.act(self._rig.env, flat(observation)), dtype=np.float32), False

    @property
    def done(self) -> bool:
        return bool(self._expert is not None and self._expert.done)
