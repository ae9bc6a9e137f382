"""The one rollout loop: a controller (teleoperator, policy, policy + residual) drives a rig.

``run_episode`` is what recording, evaluation, deployment and RL share: reset, then per control tick
observe -> act -> send the action, keeping every stream's new samples with both clocks, the executed
actions and intervention flags, until success (plus ``hold_steps``), the rig's limit, the controller
finishing, or a stop request.

A real-time rig (``rig.realtime``) is paced at its ``control_hz`` on the wall clock; a simulator runs
as fast as it can. A rig whose streams run on their own clocks gives every new sample through
``rig.new_samples()`` (all camera frames, not only the one seen at a tick); a recorder that stores
them itself as they arrive (from the cameras' shared memory) runs the loop with ``collect=False``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from robolearn.rigs.base import Observation, Rig, Sample, StepResult


class Controller(Protocol):
    """Anything that acts on a rig: teleoperators and policy agents alike."""

    def reset(self, seed: int | None = None) -> None: ...

    def act(self, observation: Observation) -> tuple[np.ndarray, bool]: ...


@dataclass
class StreamRows:
    """One stream's samples over an episode, in arrival order."""

    t_device: list[float] = field(default_factory=list)
    t_host: list[float] = field(default_factory=list)
    values: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def add(self, t_device: float, t_host: float, values: dict[str, np.ndarray]) -> None:
        self.t_device.append(t_device)
        self.t_host.append(t_host)
        for k, v in values.items():
            self.values.setdefault(k, []).append(np.asarray(v))

    def arrays(self) -> dict[str, np.ndarray]:
        out = {k: np.stack(v) for k, v in self.values.items()}
        out["t_device"] = np.asarray(self.t_device, np.float64)
        out["t_host"] = np.asarray(self.t_host, np.float64)
        return out


@dataclass
class Episode:
    """What happened in one episode. ``streams[s]`` holds arrays plus ``t_device``/``t_host``; the
    control stream has one row per tick, with the ``action`` executed at that tick."""

    streams: dict[str, dict[str, np.ndarray]]
    intervention: np.ndarray  # (steps,) bool
    success: bool | None  # None where the rig cannot tell (the operator marks it)
    success_at: int | None  # first tick after which the task was done
    step_success: np.ndarray | None  # (steps,) the rig's success check after each tick, where it has one
    steps: int
    seed: int | None
    truncated: bool
    stopped: bool  # ended by the stop callback (an operator event, a safety stop)
    info: dict[str, Any] = field(default_factory=dict)
    # Wall-clock start of every tick (time.monotonic), for the loop's period and jitter.
    tick_times: np.ndarray | None = None

    @property
    def control(self) -> dict[str, np.ndarray]:
        return self.streams["control"]


def run_episode(
    rig: Rig,
    controller: Controller,
    seed: int | None = None,
    max_steps: int | None = None,
    hold_steps: int = 0,
    stop: Callable[[int, StepResult], bool] | None = None,
    on_step: Callable[[int, Observation, np.ndarray, StepResult], None] | None = None,
    realtime: bool | None = None,
    on_reset: Callable[[Observation], None] | None = None,
    collect: bool = True,
) -> Episode:
    """Run one episode of ``controller`` on ``rig`` (see the module docstring).

    ``hold_steps``: ticks kept after the task first succeeds, so demonstrations also show what "done"
    looks like. ``stop(step, result)`` is polled after every tick. A camera sample is kept only when it
    is new (its device time changed), so streams keep their own rates; rigs with ``new_samples`` give
    every sample. ``realtime`` (default: ``rig.realtime``) paces ticks at ``rig.control_hz``; a tick that overruns
    its slot is not made up for with a burst: the next one starts at the next slot. ``on_reset(obs)``
    runs right after the rig's reset; ``collect=False`` keeps only the control rows (another process
    stores the other streams, e.g. straight from the cameras' shared memory)."""
    from robolearn.features import CONTROL_STREAM

    limit = max_steps if max_steps is not None else rig.max_steps
    if limit is None:
        raise ValueError(f"{rig.name}: the rig sets no episode limit; pass max_steps")
    obs = rig.reset(seed)
    if on_reset is not None:
        on_reset(obs)
    controller.reset(getattr(rig, "last_seed", seed))
    rows: dict[str, StreamRows] = {s: StreamRows() for s in obs if collect or s == CONTROL_STREAM}
    last_t: dict[str, float] = {}
    actions: list[np.ndarray] = []
    interventions: list[bool] = []
    step_success: list[bool] = []
    success: bool | None = None
    success_at: int | None = None
    truncated = stopped = False
    result = StepResult()
    paced = rig.realtime if realtime is None else realtime
    period = 1.0 / rig.control_hz if paced else 0.0
    ticks: list[float] = []
    t_next = time.monotonic()

    def keep(stream: str, sample: Sample) -> None:
        rows.setdefault(stream, StreamRows()).add(sample.t_device, sample.t_host, dict(sample.values))

    for step in range(limit):
        if paced:
            now = time.monotonic()
            if t_next > now:
                time.sleep(t_next - now)
            elif now - t_next > period:  # overran by more than a slot: skip ahead, no burst
                t_next = now
            t_next += period
            if step:  # observe at the start of the slot: the freshest state, not one a period old
                obs = rig.observe()
        ticks.append(time.monotonic())
        action, intervening = controller.act(obs)
        action = np.asarray(action, dtype=np.float32)
        fresh = rig.new_samples() if collect else None
        for s, sample in obs.items():
            # Control rows are one per tick; other streams only when a new sample arrived.
            if s == CONTROL_STREAM:
                rows[s].add(sample.t_device, sample.t_host, dict(sample.values))
            elif collect and fresh is None and last_t.get(s) != sample.t_device:
                keep(s, sample)
                last_t[s] = sample.t_device
        for s, samples in (fresh or {}).items():
            for sample in samples:
                keep(s, sample)
        actions.append(action)
        interventions.append(bool(intervening))
        result = rig.send_action(action)
        if on_step is not None:
            on_step(step, obs, action, result)
        if result.success is not None:
            step_success.append(result.success)
            success = bool(success) or result.success
            if result.success and success_at is None:
                success_at = step + 1
        if not paced:
            obs = rig.observe()
        if success_at is not None and step + 1 >= success_at + hold_steps:
            break
        if result.truncated:
            truncated = True
            break
        if getattr(controller, "done", False) and success_at is None:
            break
        if stop is not None and stop(step, result):
            stopped = True
            break
    streams = {s: r.arrays() for s, r in rows.items() if r.t_device}
    streams[CONTROL_STREAM]["action"] = np.stack(actions)
    return Episode(streams=streams, intervention=np.asarray(interventions, bool), success=success,
                   success_at=success_at, steps=len(actions),
                   step_success=np.asarray(step_success, bool) if len(step_success) == len(actions) else None, seed=getattr(rig, "last_seed", seed),
                   truncated=truncated, stopped=stopped, info=dict(result.info),
                   tick_times=np.asarray(ticks, np.float64))
