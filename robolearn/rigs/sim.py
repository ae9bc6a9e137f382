"""The simulated rig: a robosuite task behind the `Rig` interface.

Two ways to produce camera streams: ``online`` renders every tick (what a policy needs), and
``deferred`` rolls out without cameras and renders an episode afterwards from its saved MuJoCo
states (bit-identical images; failed attempts that are dropped cost no rendering at all).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from robolearn.errors import UserError
from robolearn.features import CONTROL_STREAM, Feature
from robolearn.rigs.base import Observation, Rig, Sample, StepResult

SIM_STATE_KEY = "sim_state"


@dataclass(frozen=True)
class SimRigConfig:
    """Everything a worker process needs to build the same rig (picklable)."""

    task: str  # task name or YAML path
    cameras: tuple[str, ...] = ()
    image_size: int = 84
    depth: bool = False
    defer_cameras: bool = False  # render cameras from saved states after the episode
    seed: int | None = None  # seeds the reset seeds drawn when reset() gets none
    extra: Mapping[str, Any] = field(default_factory=dict)


class SimRig(Rig):
    """A :class:`~robolearn.sim.env.SimEnv` as a rig. The one clock is simulated time."""

    supports_parallel_attempts = True

    def __init__(self, config: SimRigConfig) -> None:
        from robolearn.sim.env import make_env
        from robolearn.sim.tasks import load_task

        self.config = config
        self.task = load_task(config.task)
        self.name = f"sim:{self.task.name}"
        cams = tuple(config.cameras)
        if len(set(cams)) != len(cams):
            raise UserError(f"cameras list a camera twice: {','.join(cams)}")
        # Deferred cameras are rendered by a second env that never steps (render_state).
        live = () if config.defer_cameras else cams
        self.env = make_env(self.task, cameras=live, image_size=config.image_size,
                            depth=config.depth and bool(live), seed=config.seed)
        self._render_env = None
        if config.defer_cameras and cams:
            self._render_env = make_env(self.task, cameras=cams, image_size=config.image_size, depth=config.depth)
        self._features = self._declare()
        self._obs: dict[str, np.ndarray] | None = None
        self._closed = False

    # ------------------------------------------------------------ declaration
    def _declare(self) -> dict[str, dict[str, Feature]]:
        spaces = self.env.observation_space.spaces
        control = {k: Feature(tuple(spaces[k].shape), "float32") for k in self.lowdim_keys}
        nstate = len(self.env.get_state())
        control[SIM_STATE_KEY] = Feature((nstate,), "float64")  # exact state, so images can be re-rendered
        out = {CONTROL_STREAM: control}
        s = self.config.image_size
        for cam in self.config.cameras:
            keys = {f"{cam}_image": Feature((s, s, 3), "uint8", "rgb")}
            if self.config.depth:
                keys[f"{cam}_depth"] = Feature((s, s), "uint16", "depth", depth_scale=self.env.depth_scale)
            out[cam] = keys
        return out

    @property
    def lowdim_keys(self) -> tuple[str, ...]:
        from robolearn.sim.env import LOWDIM_KEYS

        return LOWDIM_KEYS

    @property
    def features(self) -> dict[str, dict[str, Feature]]:
        if self.config.defer_cameras:
            return {CONTROL_STREAM: self._features[CONTROL_STREAM]}
        return self._features

    @property
    def deferred_streams(self) -> dict[str, dict[str, Feature]]:
        if not self.config.defer_cameras:
            return {}
        return {k: v for k, v in self._features.items() if k != CONTROL_STREAM}

    @property
    def action_feature(self) -> Feature:
        return Feature((self.env.action_dim,), "float32", names=("dx", "dy", "dz", "droll", "dpitch", "dyaw", "grip"))

    @property
    def control_hz(self) -> float:
        return self.env.control_freq

    @property
    def clocks(self) -> dict[str, str]:
        return {s: "sim" for s in self._features}

    @property
    def task_text(self) -> str:
        return self.task.instruction

    @property
    def max_steps(self) -> int:
        return self.task.horizon

    @property
    def depth_scale(self) -> float:
        return self.env.depth_scale

    def spec(self) -> str:
        return self.name

    def episode_notes(self) -> dict[str, Any]:
        return {"task_name": self.task.name}

    # ------------------------------------------------------------ lifecycle
    def reset(self, seed: int | None = None) -> Observation:
        obs, info = self.env.reset(seed=seed)
        self.last_seed = int(info["seed"])
        self._obs = obs
        return self.observe()

    def observe(self, streams: Collection[str] | None = None) -> Observation:
        del streams  # the step rendered what it renders; handing it over costs nothing
        if self._obs is None:
            raise RuntimeError(f"{self.name}: reset() the rig before observing")
        t = self.env.sim_time
        control = {k: self._obs[k] for k in self.lowdim_keys}
        control[SIM_STATE_KEY] = self.env.get_state()
        out = {CONTROL_STREAM: Sample(control, t, t)}
        if not self.config.defer_cameras:
            for cam, keys in self._features.items():
                if cam != CONTROL_STREAM:
                    out[cam] = Sample({k: self._obs[k] for k in keys}, t, t)
        return out

    def send_action(self, action: np.ndarray) -> StepResult:
        obs, _, terminated, truncated, info = self.env.step(action)
        self._obs = obs
        return StepResult(success=bool(info["success"]), truncated=bool(truncated or terminated),
                          info={"steps": info["steps"]})

    def fill_deferred(self, control: Mapping[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
        if self._render_env is None:
            return {}
        frames: dict[str, list[np.ndarray]] = {}
        for state in control[SIM_STATE_KEY]:
            for k, v in self._render_env.render_state(state).items():
                frames.setdefault(k, []).append(v)
        return {cam: {k: np.stack(frames[k]) for k in keys} for cam, keys in self.deferred_streams.items()}

    def render_state(self, state: np.ndarray) -> dict[str, np.ndarray]:
        """Camera images at a saved state (for videos and checks)."""
        return (self._render_env or self.env).render_state(state)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.env.close()
        if self._render_env is not None:
            self._render_env.close()

    def __repr__(self) -> str:
        return f"SimRig({self.config})"
