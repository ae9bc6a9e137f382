"""The one rollout loop: a controller (teleoperator, policy, policy + residual) drives a rig.

``run_episode`` is what recording, evaluation, deployment and RL share: reset, then per control tick
observe -> act -> send the action, keeping every stream's new samples with both clocks, the executed
actions and intervention flags, until success (plus ``hold_steps``), the rig's limit, the controller
finishing, or a stop request.

Policies act through :class:`PolicyAgent`, the one owner of observation history and action-chunk
execution: it builds the policy's input with the training loader's own conversion
(``robolearn.data.tensors``) and padding, and serves one rig (:class:`PolicyController` in
``run_episode``) or many in one process (:func:`run_batched`, one policy call per chunk boundary for
every environment that needs a new chunk).

A real-time rig (``rig.realtime``) is paced at its ``control_hz`` on the wall clock; a simulator runs
as fast as it can. A rig whose streams run on their own clocks gives every new sample through
``rig.new_samples()`` (all camera frames, not only the one seen at a tick); a recorder that stores
them itself as they arrive (from the cameras' shared memory) runs the loop with ``collect=False``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from robolearn.errors import UserError
from robolearn.features import Feature
from robolearn.rigs.base import Observation, Rig, Sample, StepResult, flat


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


class EpisodeBuilder:
    """One episode's rows and end conditions, shared by ``run_episode`` and ``run_batched``."""

    def __init__(self, limit: int, hold_steps: int = 0, keep_streams: Collection[str] | None = None) -> None:
        self.limit, self.hold_steps, self.keep = limit, hold_steps, keep_streams
        self.rows: dict[str, StreamRows] = {}
        self.last_t: dict[str, float] = {}
        self.actions: list[np.ndarray] = []
        self.interventions: list[bool] = []
        self.step_success: list[bool] = []
        self.success: bool | None = None
        self.success_at: int | None = None
        self.truncated = False
        self.result = StepResult()

    @property
    def steps(self) -> int:
        return len(self.actions)

    def add(self, obs: Observation, action: np.ndarray, intervening: bool,
            fresh: Mapping[str, Sequence[Sample]] | None = None) -> None:
        """Keep this tick's observation (before the action) and the action. ``fresh``: every sample
        that arrived since the last tick, per stream (rigs with ``new_samples``); without it a stream
        keeps the tick's sample when it is new (its device time changed)."""
        from robolearn.features import CONTROL_STREAM

        def keep(stream: str, sample: Sample) -> None:
            if self.keep is None or stream in self.keep:
                self.rows.setdefault(stream, StreamRows()).add(sample.t_device, sample.t_host, dict(sample.values))

        for s, sample in obs.items():
            # Control rows are one per tick; other streams only when a new sample arrived.
            if s == CONTROL_STREAM or (fresh is None and self.last_t.get(s) != sample.t_device):
                keep(s, sample)
                self.last_t[s] = sample.t_device
        for s, samples in (fresh or {}).items():
            for sample in samples:
                keep(s, sample)
        self.actions.append(action)
        self.interventions.append(bool(intervening))

    def after(self, result: StepResult) -> bool:
        """Take the rig's answer to the last action; True when the episode ends here (success plus
        ``hold_steps``, the rig's truncation, or the step limit)."""
        self.result = result
        step = len(self.actions) - 1
        if result.success is not None:
            self.step_success.append(result.success)
            self.success = bool(self.success) or result.success
            if result.success and self.success_at is None:
                self.success_at = step + 1
        if self.success_at is not None and step + 1 >= self.success_at + self.hold_steps:
            return True
        if result.truncated:
            self.truncated = True
            return True
        return step + 1 >= self.limit

    def build(self, seed: int | None, stopped: bool = False, info: dict[str, Any] | None = None,
              tick_times: Sequence[float] | None = None) -> Episode:
        from robolearn.features import CONTROL_STREAM

        streams = {s: r.arrays() for s, r in self.rows.items() if r.t_device}
        streams.setdefault(CONTROL_STREAM, {})["action"] = np.stack(self.actions)
        n = len(self.actions)
        return Episode(streams=streams, intervention=np.asarray(self.interventions, bool), success=self.success,
                       success_at=self.success_at, steps=n,
                       step_success=np.asarray(self.step_success, bool) if len(self.step_success) == n else None,
                       seed=seed, truncated=self.truncated, stopped=stopped,
                       info=dict(self.result.info) if info is None else info,
                       tick_times=None if tick_times is None else np.asarray(tick_times, np.float64))


def _limit(rig: Rig, max_steps: int | None) -> int:
    limit = max_steps if max_steps is not None else rig.max_steps
    if limit is None:
        raise ValueError(f"{rig.name}: the rig sets no episode limit; pass max_steps")
    return limit


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
    every sample. ``realtime`` (default: ``rig.realtime``) paces ticks at ``rig.control_hz``; a tick that
    overruns its slot is not made up for with a burst: the next one starts at the next slot.
    ``on_reset(obs)`` runs right after the rig's reset; ``collect=False`` keeps only the control rows
    (another process stores the other streams, e.g. straight from the cameras' shared memory)."""
    from robolearn.features import CONTROL_STREAM

    ep = EpisodeBuilder(_limit(rig, max_steps), hold_steps, None if collect else (CONTROL_STREAM,))
    obs = rig.reset(seed)
    if on_reset is not None:
        on_reset(obs)
    controller.reset(getattr(rig, "last_seed", seed))
    stopped = False
    paced = rig.realtime if realtime is None else realtime
    period = 1.0 / rig.control_hz if paced else 0.0
    ticks: list[float] = []
    t_next = time.monotonic()
    for step in range(ep.limit):
        if paced:
            now = time.monotonic()
            if t_next > now:
                time.sleep(t_next - now)
            elif now - t_next > period:  # overran by more than a slot: skip ahead, no burst
                t_next = now
            t_next += period
        ticks.append(time.monotonic())  # the tick starts when the loop wakes up, before it observes
        if paced and step:  # observe at the start of the slot: the freshest state, not one a period old
            obs = rig.observe()
        action, intervening = controller.act(obs)
        action = np.asarray(action, dtype=np.float32)
        ep.add(obs, action, intervening, rig.new_samples() if collect else None)
        result = rig.send_action(action)
        if on_step is not None:
            on_step(step, obs, action, result)
        ended = ep.after(result)
        if not paced:
            obs = rig.observe()
        if ended:
            break
        if getattr(controller, "done", False) and ep.success_at is None:
            break
        if stop is not None and stop(step, result):
            stopped = True
            break
    return ep.build(getattr(rig, "last_seed", seed), stopped, tick_times=ticks)


# ---------------------------------------------------------------- policies as controllers


def policy_features(policy: Any, rig: Rig) -> dict[str, Feature]:
    """The rig's feature of every key the policy reads, checked against the policy's own.

    The rig's features (not the policy's) convert samples to tensors, since units such as the depth
    scale belong to the device. Live and deferred streams both count."""
    have: dict[str, Feature] = {}
    for streams in (rig.features, rig.deferred_streams):
        for keys in streams.values():
            have.update(keys)
    out = {}
    for key in policy.obs_keys:
        want = policy.shape_meta.obs[key]
        if key not in have:
            raise UserError(f"the policy reads {key!r}, which rig {rig.name} does not observe; "
                            f"it observes {', '.join(sorted(have))}")
        got = have[key]
        if (got.kind, got.shape) != (want.kind, want.shape) or (got.kind != "lowdim" and got.dtype != want.dtype):
            raise UserError(f"the policy reads {key!r} as {want.kind} {list(want.shape)} {want.dtype}, rig {rig.name} "
                            f"gives {got.kind} {list(got.shape)} {got.dtype}; the store it was trained on was "
                            f"recorded with another observation layout: re-record the demonstrations and retrain")
        out[key] = got
    return out


class ObsHistory:
    """The last ``n_obs_steps`` observations of one episode, stacked the way the training loader stacks
    a window: at the episode start the first observation fills every step (the loader's ``pad_before``
    repeats an episode's first row)."""

    def __init__(self, features: Mapping[str, Feature], n_obs_steps: int) -> None:
        self.features = dict(features)
        self.n_obs_steps = n_obs_steps
        self._steps: deque[dict[str, np.ndarray]] = deque(maxlen=n_obs_steps)

    def reset(self) -> None:
        self._steps.clear()

    def __len__(self) -> int:
        return len(self._steps)

    def push(self, values: Mapping[str, np.ndarray]) -> None:
        step = {k: np.asarray(values[k]) for k in self.features}
        if not self._steps:
            self._steps.extend([step] * self.n_obs_steps)
        else:
            self._steps.append(step)

    def arrays(self) -> dict[str, np.ndarray]:
        """Per key (n_obs_steps, *stored shape)."""
        if not self._steps:
            raise RuntimeError("the observation history is empty: push an observation first")
        return {k: np.stack([s[k] for s in self._steps]) for k in self.features}

    def tensors(self) -> dict[str, Any]:
        """Per key (n_obs_steps, *feature.tensor_shape): exactly one training window's ``obs``."""
        from robolearn.data.tensors import to_tensor

        return {k: to_tensor(self.features[k], v, k) for k, v in self.arrays().items()}


def stack_histories(histories: Sequence[ObsHistory]) -> dict[str, Any]:
    """A batch (B, n_obs_steps, ...) of several histories, as the loader's batches are shaped."""
    from robolearn.data.tensors import to_tensor

    features = histories[0].features
    arrays = [h.arrays() for h in histories]
    return {k: to_tensor(f, np.stack([a[k] for a in arrays]), k) for k, f in features.items()}


@dataclass
class InferenceCall:
    """One policy call: its wall time and how many environments it served."""

    ms: float
    batch: int


class PolicyAgent:
    """A policy driving ``n_envs`` episodes at once with receding-horizon action chunks.

    Per environment: an :class:`ObsHistory` of the last ``n_obs_steps`` observations, a queue of the
    chunk's executable actions (``policy.executable_actions``), and a generator seeded by the
    episode's seed. When queues run empty the policy is called once on the stacked histories of
    exactly those environments; each then executes its actions one tick at a time.

    An observation is kept only when an upcoming policy call will read it (fewer than
    ``n_obs_steps`` actions left in the queue): on a rig whose cameras are deferred
    (``rig.deferred_streams``), ``observation_needed(i)`` tells the loop when to fill them.

    Randomness: each environment's initial noise comes from its own generator, so deterministic
    samplers (flow, DDIM) give an episode the same actions in any batch. Samplers that draw noise at
    every step (DDPM) take it from the first environment's generator in the batch.
    """

    def __init__(self, policy: Any, features: Mapping[str, Feature], n_envs: int = 1) -> None:
        if n_envs < 1:
            raise ValueError(f"n_envs must be >= 1, got {n_envs}")
        self.policy = policy
        self.features = dict(features)
        self.n_envs = n_envs
        self.histories = [ObsHistory(self.features, policy.n_obs_steps) for _ in range(n_envs)]
        self._queues: list[deque[np.ndarray]] = [deque() for _ in range(n_envs)]
        self._generators: list[Any] = [None] * n_envs
        self.calls: list[InferenceCall] = []
        # Per environment: the wall time of every call that produced one of its chunks this episode.
        self.episode_ms: list[list[float]] = [[] for _ in range(n_envs)]
        # Per environment: the executable actions of its latest chunk and the call that made it (live views).
        self.last_chunk: list[np.ndarray | None] = [None] * n_envs
        self.chunk_count: list[int] = [0] * n_envs

    def reset(self, i: int, seed: int | None) -> None:
        """Start a new episode in environment ``i``."""
        import torch

        self.histories[i].reset()
        self._queues[i].clear()
        gen = torch.Generator()
        if seed is None:
            gen.seed()
        else:
            gen.manual_seed(int(seed))
        self._generators[i] = gen
        self.episode_ms[i] = []

    def observation_needed(self, i: int) -> bool:
        """Whether the observation of environment ``i``'s current tick will be read by a policy call."""
        return len(self._queues[i]) < self.policy.n_obs_steps

    def act(self, observations: Mapping[int, Mapping[str, np.ndarray] | None]) -> dict[int, np.ndarray]:
        """This tick's action of every environment in ``observations`` (flat key -> value dicts).

        Pass None for an environment whose observation is not needed (see ``observation_needed``)."""
        import torch

        for i, values in observations.items():
            if self.observation_needed(i):
                if values is None:
                    raise ValueError(f"environment {i}: the policy needs this tick's observation")
                self.histories[i].push(values)
        need = [i for i in observations if not self._queues[i]]
        if need:
            policy = self.policy
            obs = stack_histories([self.histories[i] for i in need])
            shape = (1, policy.horizon, policy.action_dim)
            noise = torch.cat([torch.randn(shape, generator=self._generators[i]) for i in need])
            t0 = time.perf_counter()
            chunk = policy.predict_action(obs, noise=noise, generator=self._generators[need[0]])
            actions = policy.executable_actions(chunk).to("cpu", torch.float32).numpy()
            ms = (time.perf_counter() - t0) * 1e3
            self.calls.append(InferenceCall(ms, len(need)))
            for row, i in enumerate(need):
                self._queues[i].extend(actions[row])
                self.episode_ms[i].append(ms)
                self.last_chunk[i] = actions[row]
                self.chunk_count[i] += 1
        return {i: self._queues[i].popleft() for i in observations}


def _policy_values(rig: Rig, obs: Observation, features: Mapping[str, Feature]) -> dict[str, np.ndarray]:
    """The policy's keys from a rig observation, rendering deferred streams for this one tick if needed."""
    values = flat(obs)
    if any(k not in values for k in features):
        from robolearn.features import CONTROL_STREAM

        control = {k: np.asarray(v)[None] for k, v in obs[CONTROL_STREAM].values.items()}
        for keys in rig.fill_deferred(control).values():
            values.update({k: v[0] for k, v in keys.items()})
    return values


class PolicyController:
    """A policy as a single-rig :class:`Controller` for :func:`run_episode` (a one-env :class:`PolicyAgent`)."""

    def __init__(self, policy: Any, rig: Rig) -> None:
        self.rig = rig
        self.agent = PolicyAgent(policy, policy_features(policy, rig), n_envs=1)

    def reset(self, seed: int | None = None) -> None:
        self.agent.reset(0, seed)

    def act(self, observation: Observation) -> tuple[np.ndarray, bool]:
        values = (_policy_values(self.rig, observation, self.agent.features)
                  if self.agent.observation_needed(0) else None)
        return self.agent.act({0: values})[0], False


def run_batched(
    rigs: Sequence[Rig],
    agent: PolicyAgent,
    seeds: Iterable[int],
    max_steps: int | None = None,
    hold_steps: int = 0,
    keep_streams: Collection[str] | None = None,
    on_episode: Callable[[int, Episode], None] | None = None,
    on_tick: Callable[[], None] | None = None,
) -> list[Episode]:
    """Episodes of ``agent`` on several rigs in lockstep, one policy call per chunk boundary for all.

    Each free rig takes the next seed from ``seeds`` (which may be a generator fed from elsewhere);
    a rig whose episode ended starts the next seed at once, and idles when there is none.
    ``on_episode(env index, episode)`` is called as each episode ends; ``keep_streams`` limits the
    streams kept per episode (None keeps all). ``on_tick()`` runs after every lockstep tick (a
    heartbeat for a supervisor). Returns the episodes in the order they ended."""
    if len(rigs) > agent.n_envs:
        raise ValueError(f"{len(rigs)} rigs but the agent holds {agent.n_envs} environments")
    it = iter(seeds)
    done: list[Episode] = []
    obs: dict[int, Observation] = {}
    builders: dict[int, EpisodeBuilder] = {}
    seed_of: dict[int, int] = {}

    def start(i: int) -> None:
        seed = next(it, None)
        if seed is None:
            return
        o = rigs[i].reset(seed)
        seed_of[i] = int(getattr(rigs[i], "last_seed", seed))
        agent.reset(i, seed_of[i])
        obs[i] = o
        builders[i] = EpisodeBuilder(_limit(rigs[i], max_steps), hold_steps, keep_streams)

    for i in range(len(rigs)):
        start(i)
    while builders:
        values = {i: _policy_values(rigs[i], obs[i], agent.features) if agent.observation_needed(i) else None
                  for i in builders}
        actions = agent.act(values)
        for i, action in actions.items():
            action = np.asarray(action, dtype=np.float32)
            ep = builders[i]
            ep.add(obs[i], action, False)
            ended = ep.after(rigs[i].send_action(action))
            if not ended:
                obs[i] = rigs[i].observe()
                continue
            episode = ep.build(seed_of[i], info={**ep.result.info, "inference_ms": list(agent.episode_ms[i])})
            del builders[i], obs[i]
            done.append(episode)
            if on_episode is not None:
                on_episode(i, episode)
            start(i)
        if on_tick is not None:
            on_tick()
    return done
