"""The scripted sim expert as a teleoperator: it reads the simulator's privileged state.

On the MuJoCo twin (a rig file with ``arm: {type: twin}``) the simulator runs in the twin's world
process; the expert reads a local mirror of the task instead, put into the exact MuJoCo state the
twin publishes with every control tick (``sim_state``)."""

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
        self._task = None
        self._env = None  # the simulator the expert reads: the sim rig's, or a mirror of the twin's
        self._mirror = False

    def connect(self, rig: Rig) -> None:
        from robolearn.rigs.sim import SimRig

        if isinstance(rig, SimRig):
            self._task, self._env = rig.task, rig.env
        elif getattr(getattr(getattr(rig, "config", None), "arm", None), "type", None) == "twin":
            from robolearn.sim.env import make_env
            from robolearn.sim.tasks import load_task

            if "sim_state" not in rig.features["control"]:
                raise UserError(f"rig {rig.name}: the twin publishes no sim_state for the expert to mirror")
            self._task = load_task(rig.config.arm.task)
            self._env, self._mirror = make_env(self._task), True
        else:
            raise UserError(f"the scripted expert drives only simulated rigs (sim:<task>) and the MuJoCo twin, not "
                            f"{rig.name}; use a device (spacemouse, keyboard, gamepad, leader) or replay:<store>")
        task = self._task
        if not task.expert:
            raise UserError(f"task {task.name!r} names no expert (field 'expert' in {task.source}); "
                            "record it with a teleoperation device instead")
        from robolearn.sim.experts import make_expert

        missing = [o for o in make_expert(task.expert, np.random.default_rng(0)).required_objects()
                   if o not in task.objects]
        if missing:
            raise UserError(f"expert {task.expert!r} reads object(s) {missing}, which task {task.name!r} "
                            f"does not define; add them to 'objects' in {task.source} (short name: body name)")
        self._rig = rig

    def reset(self, seed: int | None = None) -> None:
        from robolearn.sim.experts import make_expert

        if self._rig is None:
            raise RuntimeError("connect() the expert to a rig first")
        self._expert = make_expert(self._task.expert, np.random.default_rng(seed))
        if self.perturb:
            from robolearn.sim.perturb import perturb

            # Its own stream, so the expert's demonstration variation stays that of the unperturbed seed.
            self._expert = perturb(self._expert, self.perturb, np.random.default_rng([seed or 0, 1]),
                                   **self.perturb_params)
        if self._mirror:
            self._env.reset(seed=seed)  # the task's own episode setup (robosuite keeps per-episode facts)
            self._env.set_state(flat(self._rig.observe())["sim_state"])
        self._expert.reset(self._env)

    def act(self, observation: Observation) -> tuple[np.ndarray, bool]:
        if self._expert is None:
            raise RuntimeError("reset() the expert before act()")
        obs = flat(observation)
        if self._mirror:
            self._env.set_state(obs["sim_state"])
        return np.asarray(self._expert.act(self._env, obs), dtype=np.float32), False

    def disconnect(self) -> None:
        if self._mirror and self._env is not None:
            self._env.close()
            self._env = None

    @property
    def done(self) -> bool:
        # A perturbed expert gives up a failed attempt early rather than stalling to the horizon.
        e = self._expert
        return bool(e is not None and (e.done or getattr(e, "gave_up", False)))

    def episode_notes(self) -> dict:
        if self.perturb and self._expert is not None:
            return {"perturb": self._expert.describe()}
        return {}
