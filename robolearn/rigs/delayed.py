"""Injected latency: a rig whose observations arrive late and whose actions act late.

Deployment is measured in simulation with the delays a real robot has (``robolearn deploy --rig
sim:lift --obs-latency 0.1 --action-latency 0.06``), and latency calibration is tested against a
known delay. The model, on a simulator (which advances one control tick per action, so its clock is
simulated time, not wall time):

- an observation is delivered ``ceil(obs_latency / dt)`` ticks after the simulator produced it and is
  stamped with its delivery time, as a camera whose timestamps do not show its exposure-to-host delay
  (``latency.camera_s`` of a rig file): only a known latency can compensate it;
- an action sent at tick ``k`` is applied by the simulator's step ``k + ceil(action_latency / dt)``
  (the first step that starts after it arrives); until the first one arrives the simulator gets the
  no-op action (zeros: no motion, gripper as it is commanded by 0).

Delays are quantised up to whole ticks because the simulator can only act at its ticks; the
quantised values are what :attr:`DelayedRig.effective_latency` reports.

On a real-time rig (the MuJoCo twin) observations are held back on the wall clock the same way, and
the action delay is the twin world's own (``arm.action_latency_s``), since only it knows when a
command takes effect.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Collection
from typing import Any

import numpy as np

from robolearn.errors import UserError
from robolearn.rigs.base import Observation, Rig, Sample, StepResult


def delay_ticks(seconds: float, dt: float) -> int:
    """Whole control ticks a delay of ``seconds`` takes to show on a tick grid of ``dt``."""
    return max(0, math.ceil(seconds / dt - 1e-9))


class DelayedRig(Rig):
    """``rig`` with ``obs_latency`` (s) on every stream and ``action_latency`` (s) on its actions."""

    def __init__(self, rig: Rig, obs_latency: float = 0.0, action_latency: float = 0.0) -> None:
        if obs_latency < 0 or action_latency < 0:
            raise UserError(f"latencies must be >= 0 s, got obs {obs_latency}, action {action_latency}")
        self.rig = rig
        self.name = rig.name
        self.obs_latency, self.action_latency = float(obs_latency), float(action_latency)
        self.realtime = rig.realtime
        dt = 1.0 / rig.control_hz
        self.obs_ticks = delay_ticks(obs_latency, dt)
        self.action_ticks = delay_ticks(action_latency, dt)
        self._obs: deque[Observation] = deque()
        self._timed: deque[tuple[float, Observation]] = deque()
        self._actions: deque[np.ndarray] = deque()
        if self.realtime and action_latency:
            arm_cfg = getattr(getattr(rig, "config", None), "arm", None)
            if getattr(arm_cfg, "type", "") != "twin":
                raise UserError(f"rig {rig.name}: action latency can be injected into the MuJoCo twin only "
                                "(a real arm has its own; measure it with `robolearn calibrate latency`)")

    # ------------------------------------------------------------ declaration (the wrapped rig's)
    @property
    def features(self) -> dict[str, Any]:
        return self.rig.features

    @property
    def action_feature(self) -> Any:
        return self.rig.action_feature

    @property
    def control_hz(self) -> float:
        return self.rig.control_hz

    @property
    def clocks(self) -> dict[str, str]:
        return self.rig.clocks

    @property
    def task_text(self) -> str:
        return self.rig.task_text

    @property
    def max_steps(self) -> int | None:
        return self.rig.max_steps

    @property
    def deferred_streams(self) -> dict[str, Any]:
        return self.rig.deferred_streams

    @property
    def last_seed(self) -> int | None:
        return getattr(self.rig, "last_seed", None)

    @property
    def effective_latency(self) -> dict[str, float]:
        """The delays as the rig applies them (simulators: rounded up to whole ticks)."""
        if not self.realtime:
            dt = 1.0 / self.control_hz
            return {"obs_s": self.obs_ticks * dt, "action_s": self.action_ticks * dt}
        return {"obs_s": self.obs_latency, "action_s": self.action_latency}

    def spec(self) -> str:
        return self.rig.spec()

    def connect(self) -> None:
        self.rig.connect()
        if self.realtime and self.action_latency:
            self.rig.arm.set_action_latency(self.action_latency)  # type: ignore[attr-defined]

    def close(self) -> None:
        self.rig.close()

    def episode_notes(self) -> dict[str, Any]:
        return {**self.rig.episode_notes(), "injected_latency": self.effective_latency}

    def fill_deferred(self, control: Any) -> Any:
        return self.rig.fill_deferred(control)

    def stop(self) -> None:
        if hasattr(self.rig, "stop"):
            self.rig.stop()

    # ------------------------------------------------------------ the delays
    def _restamp(self, obs: Observation, t: float) -> Observation:
        return {s: Sample(x.values, t, t) for s, x in obs.items()}

    def reset(self, seed: int | None = None) -> Observation:
        obs = self.rig.reset(seed)
        self._obs.clear()
        self._timed.clear()
        self._actions.clear()
        # Before the first action the scene is at rest: the first observation stands for the ticks
        # before it, so the delay line starts full.
        if not self.realtime:
            self._obs.extend([obs] * (self.obs_ticks + 1))
            self._actions.extend([np.zeros(self.action_feature.shape, np.float32)] * self.action_ticks)
            t0 = next(iter(obs.values())).t_device
            return self._restamp(self._obs[0], t0)
        if self.obs_latency:
            self._timed.append((time.monotonic(), obs))
        return obs

    def observe(self, streams: Collection[str] | None = None) -> Observation:
        obs = self.rig.observe(streams)
        if not self.realtime:
            self._obs.append(obs)
            while len(self._obs) > self.obs_ticks + 1:
                self._obs.popleft()
            t = next(iter(obs.values())).t_device  # now, on the simulated clock
            return self._restamp(self._obs[0], t)
        if not self.obs_latency:
            return obs
        now = time.monotonic()
        self._timed.append((now, obs))
        # The newest observation at least obs_latency old, stamped when it is delivered (now).
        while len(self._timed) > 1 and self._timed[1][0] <= now - self.obs_latency:
            self._timed.popleft()
        # Shifted by the latency rather than stamped "now": a frame that stops changing keeps its stamps,
        # so a stalled camera still shows as one.
        return {st: Sample(x.values, x.t_device + self.obs_latency, x.t_host + self.obs_latency)
                for st, x in self._timed[0][1].items()}

    def send_action(self, action: np.ndarray) -> StepResult:
        if self.realtime:
            return self.rig.send_action(action)
        self._actions.append(np.asarray(action, np.float32))
        return self.rig.send_action(self._actions.popleft())

    def new_samples(self) -> Any:
        return self.rig.new_samples()

    def __getattr__(self, name: str) -> Any:  # the wrapped rig's own extras (arm, cameras, env, ...)
        if name == "rig":
            raise AttributeError(name)
        return getattr(self.rig, name)
