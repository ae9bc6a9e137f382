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

    def __init__(self, perturb: str | None = None, perturb_params: dict | None = None) -> None:
        """``perturb`` (``noise``, ``early_release``, ``stall``; see :mod:`robolearn.sim.perturb`) makes
        the expert fail on purpose, for reward models that must tell failures from successes."""
        if perturb is not None:
            from robolearn.sim.perturb import PERTURBATIONS

            if perturb not in PERTURBATIONS:
                raise UserError(f"unknown --perturb {perturb!r}; expected one of {', '.join(PERTURBATIONS)}")
        self.perturb = perturb
        self.perturb_params = dict(perturb_params or {})
        self._rig = None
        self._expert = None

    def connect(self, rig: Rig) -> None:
        from robolearn.rigs.sim import SimRig

        if not isinstance(rig, SimRig):
            raise UserError(f"the scripted expert drives only simulated rigs (sim:<task>), not {rig.name}")
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
        if self.perturb:
            from robolearn.sim.perturb import perturb

            # Its own stream, so the expert's demonstration variation stays that of the unperturbed seed.
            self._expert = perturb(self._expert, self.perturb, np.random.default_rng([seed or 0, 1]),
                                   **self.perturb_params)
        self._expert.reset(self._rig.env)

    def act(self, observation: Observation) -> tuple[np.ndarray, bool]:
        if self._expert is None:
            raise RuntimeError("reset() the expert before act()")
        return np.asarray(self._expert.act(self._rig.env, flat(observation)), dtype=np.float32), False

    @property
    def done(self) -> bool:
        # A perturbed expert gives up a failed attempt early rather than stalling to the horizon.
        e = self._expert
        return bool(e is not None and (e.done or getattr(e, "gave_up", False)))

    def episode_notes(self) -> dict:
        if self.perturb and self._expert is not None:
            return {"perturb": self._expert.describe()}
        return {}
