"""Perturbed scripted experts: failures on demand, as negatives for reward and progress models.

A progress model trained only on successes rates a stalled near-miss as "almost done", and RL then
learns to stall. The cure is data that looks like a success for a while and then is not one. The
experts of ``experts.py`` almost never fail, so these wrappers make them fail in three seeded,
parameterised ways:

``noise``
    Gaussian noise of ``noise_std`` on every arm action (the gripper is left alone). The experts are
    closed-loop and retry after a drop, so this fails mostly through time-outs; milder than the others.
``early_release``
    Once the object is carried (``delay`` steps into the expert's transport phases), open the
    gripper and keep it open: the object drops short of the goal. The attempt is given up
    ``settle_steps`` later, when the object has come to rest.
``stall``
    Shortly before the end of the script (``delay`` steps into the final approach) the arm stops
    where it is, gripper unchanged: a near-miss that never completes. Given up after ``stall_steps``.

The wrapper keeps the expert API (``reset(env)``, ``act(env, obs)``, ``done``, ``phase``) and adds
``gave_up`` (the recorder ends the attempt early rather than rendering a long stall) and
``describe()`` (what was done, for the episode's notes). A perturbation that comes too late (the
task already succeeded) simply yields a success; the recorder stores the env's true success.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from robolearn.sim.env import SimEnv
from robolearn.sim.experts import OPEN, Expert

PERTURBATIONS = ("noise", "early_release", "stall")

# Phases of each expert's script in which the perturbation may start, per kind. Lift succeeds a few
# centimetres into its lift, so its window is short; the carry tasks release or stall over the goal.
_PHASES: dict[str, dict[str, tuple[str, ...]]] = {
    "early_release": {"lift": ("lift",), "default": ("move", "lower")},
    "stall": {"lift": ("lift",), "default": ("lower",)},
}
# (low, high) of the uniform draw of the steps spent in those phases before the perturbation starts.
_DELAYS: dict[str, dict[str, tuple[int, int]]] = {
    "early_release": {"lift": (0, 40), "default": (0, 30)},
    "stall": {"lift": (0, 40), "default": (0, 6)},
}
# Lift succeeds 2 cm into a lift that covers centimetres per step, too coarse a clock for a near-miss:
# there the arm creeps (translation scaled by CREEP) and the perturbation starts once the object has
# risen a drawn height (metres) short of success, or after the drawn delay.
CREEP = {"lift": 0.25}
_RISE = {"lift": (0.0, 0.012)}


class PerturbedExpert:
    """A scripted expert made to fail in one of :data:`PERTURBATIONS` ways (seeded by ``rng``)."""

    def __init__(self, expert: Expert, kind: str, rng: np.random.Generator, *, noise_std: float = 0.6,
                 delay: tuple[int, int] | None = None, stall_steps: int = 40, settle_steps: int = 20) -> None:
        if kind not in PERTURBATIONS:
            raise ValueError(f"unknown perturbation {kind!r}; expected one of {', '.join(PERTURBATIONS)}")
        if noise_std < 0 or stall_steps < 1 or settle_steps < 1:
            raise ValueError("noise_std must be >= 0, stall_steps and settle_steps >= 1")
        self.expert = expert
        self.kind = kind
        self.rng = rng
        self.noise_std = float(noise_std)
        self.stall_steps = int(stall_steps)
        self.settle_steps = int(settle_steps)
        table = _DELAYS.get(kind, {})
        self.delay_range = delay or table.get(expert.name, table.get("default", (0, 0)))
        phases = _PHASES.get(kind, {})
        self.phases = phases.get(expert.name, phases.get("default", ()))
        self.creep = CREEP.get(expert.name, 1.0) if kind != "noise" else 1.0
        self.rise_range = _RISE.get(expert.name) if kind != "noise" else None
        self._reset_state()

    def _reset_state(self) -> None:
        self.gave_up = False
        self.triggered_at: int | None = None  # control step at which the perturbation started
        self._delay = 0
        self._in_phase = 0
        self._step = 0
        self._hold: np.ndarray | None = None
        self._rise: float | None = None
        self._z0 = 0.0

    # ------------------------------------------------------------------ the expert API
    @property
    def name(self) -> str:
        return self.expert.name

    @property
    def done(self) -> bool:
        return self.expert.done

    @property
    def phase(self) -> str:
        return self.expert.phase

    def reset(self, env: SimEnv) -> None:
        self.expert.reset(env)
        self._reset_state()
        lo, hi = self.delay_range
        self._delay = int(self.rng.integers(lo, hi + 1))
        if self.rise_range is not None:
            self._rise = float(self.rng.uniform(*self.rise_range))

    def _object_z(self, env: SimEnv) -> float:
        return float(env.privileged().objects[self.expert.obj].pos[2])

    def act(self, env: SimEnv, obs: dict) -> np.ndarray:
        self._step += 1
        if self.kind == "noise":
            action = np.asarray(self.expert.act(env, obs), dtype=np.float32).copy()
            if self.triggered_at is None:
                self.triggered_at = self._step - 1
            action[:6] = np.clip(action[:6] + self.rng.normal(0.0, self.noise_std, 6), -1.0, 1.0)
            return action
        if self.triggered_at is None:
            action = np.asarray(self.expert.act(env, obs), dtype=np.float32).copy()
            # Count steps in the window after the expert planned this one (its phase may just have changed).
            if self.expert.phase in self.phases:
                action[:3] *= self.creep
                if self._in_phase == 0 and self._rise is not None:
                    self._z0 = self._object_z(env)  # where it rests, once grasped
                self._in_phase += 1
                risen = self._rise is not None and self._object_z(env) - self._z0 >= self._rise
                if self._in_phase > self._delay or risen:
                    self.triggered_at = self._step
                    self._hold = action.copy()
            return action
        since = self._step - self.triggered_at
        if self.kind == "early_release":
            self.gave_up = since >= self.settle_steps
            # Hold the arm still and open the fingers: the object drops where it is.
            return np.array([0, 0, 0, 0, 0, 0, OPEN], dtype=np.float32)
        # stall: no motion, the gripper as it was, until the attempt is given up.
        self.gave_up = since >= self.stall_steps
        grip = float(self._hold[6]) if self._hold is not None else OPEN
        return np.array([0, 0, 0, 0, 0, 0, grip], dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        """The perturbation of the last attempt, for the episode's notes."""
        d: dict[str, Any] = {"kind": self.kind, "triggered_at": self.triggered_at}
        if self.kind == "noise":
            d["noise_std"] = self.noise_std
        else:
            d.update(delay=self._delay, phases=list(self.phases))
            if self._rise is not None:
                d["rise"] = round(self._rise, 4)
            d["stall_steps" if self.kind == "stall" else "settle_steps"] = (
                self.stall_steps if self.kind == "stall" else self.settle_steps)
        return d


def perturb(expert: Expert, kind: str, rng: np.random.Generator, **params: Any) -> PerturbedExpert:
    """Wrap ``expert`` so it fails by ``kind`` (``noise``, ``early_release`` or ``stall``)."""
    return PerturbedExpert(expert, kind, rng, **params)
