"""The deployment loop: a trained policy drives a rig, with inference off the control loop.

It extends the one rollout loop (:mod:`robolearn.rollout`: the observation history, the episode
builder, the policy/rig feature check are its) with what a real robot needs:

- **Asynchronous inference.** A chunk is requested from a backend (:mod:`robolearn.deploy.inference`:
  a thread, a local server process, or ``robolearn serve`` on another host) and the loop keeps
  ticking; it only ever polls. A request goes out when the actions scheduled ahead cover no more
  than the expected inference time (``lead`` ticks, from the measured round trips), so the next chunk
  lands before the arm runs dry.
- **Time-stamped chunks.** A chunk computed from an observation of time ``t_obs`` holds the action for
  ``t_obs`` and then one per control period (the training data's alignment: chunk index
  ``n_obs_steps - 1`` is the action for the latest observation). Each action is put on the timeline
  at ``t_obs + i * dt`` and sent ``action_latency`` earlier, so that it *acts* when it was meant to.
- **Latency compensation** (as UMI does): ``t_obs`` is the observation's device time minus the
  latency its clock does not show (``latency.camera_s`` of a rig file for camera streams, the
  injected delay in simulation); ``action_latency`` is the arm's (``latency.action_s``). Without
  compensation (``compensate=False``) both are taken as zero: the chunk is executed as if the world
  were as observed now and commands acted at once.
- **Late actions are dropped**: those whose time has passed when the chunk arrives (counted per
  episode: ``late_dropped``).
- **Blending overlapping chunks** (``blend``): ``none`` (the newer chunk replaces the older from its
  first usable action), ``ensemble`` (temporal ensembling: every prediction for a time step averaged
  with weights ``exp(-decay * j)``, j = 0 the oldest, as in ACT), ``inpaint`` (the new chunk is sampled
  to agree with the actions still to come, :mod:`robolearn.deploy.inpaint`). A flow policy trained with
  ``prefix_actions`` is given, instead, the actions that fill its chunk up to where it can act: those
  executed since its observation and those due before it lands; it continues them (training-time RTC).
- **A shaper** (optional; on-robot RL, :mod:`robolearn.rl.robot`): every tick, what the schedule gives
  passes through ``shaper.act`` (a residual correction, or a teleoperator taking over: an intervention,
  flagged in the record) before the safety checks; ``shaper.after`` sees what was executed and
  ``shaper.end`` the finished episode. The rig's limits bound whatever it proposes.
- **Safety**: every action is clipped to the rig's action range (the arm's controller then clips
  poses to its workspace and speed limits); a NaN, an action beyond the range by more than
  ``range_tolerance``, a stalled camera or a failed inference stops the arm with one line
  (:class:`DeployStop`).

Clocks. On a real-time rig (a robot, the MuJoCo twin) ticks are paced on the wall clock and every
time is ``time.monotonic()``. A simulator advances one tick per action, so there time is *virtual*:
``t = tick * dt``. Its latencies are injected by :class:`~robolearn.rigs.delayed.DelayedRig`
(observations delivered late, actions acting late, whole ticks); inference still runs in the
backend but the loop waits for it, and the reply counts as arriving ``inference_s`` later (default:
the measured wall time of the call; 0 reproduces ``robolearn eval`` exactly, a test checks it), so
virtual time moves as it would have on a robot while the call was running.
"""

from __future__ import annotations

import math
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from robolearn.errors import UserError
from robolearn.features import CONTROL_STREAM
from robolearn.rigs.base import Observation, Rig, RigError, StepResult
from robolearn.rollout import EpisodeBuilder, ObsHistory, _policy_values, policy_features

BLENDS = ("none", "ensemble", "inpaint")
POLICY_STREAM = "policy"  # the store stream of proposed chunks: one row per chunk received


def wait_until(t: float, spin_s: float = 0.0) -> None:
    """Return at ``time.monotonic() >= t``: a sleep to ``spin_s`` before it, a busy wait for the rest."""
    left = t - time.monotonic()
    if left > spin_s:
        time.sleep(left - spin_s)
    while time.monotonic() < t:
        pass


class DeployStop(RuntimeError):
    """A safety stop: the arm was stopped; the message is one line."""


@dataclass
class DeployConfig:
    blend: str = "none"
    compensate: bool = True
    # Injected latencies (simulated rigs; on the twin: observations held back, the world's action delay).
    inject_obs_latency_s: float = 0.0
    inject_action_latency_s: float = 0.0
    # Simulated rigs: how long a policy call counts as taking (virtual seconds); None: as measured.
    inference_s: float | None = None
    # Request a chunk at least this often (ticks). None: as soon as the last one has landed when a latency is
    # compensated (the freshest observation is worth most then: lift at 100 + 60 ms, 50 ms inference: 0.92
    # success against 0.64 replanning every n_action_steps, bench_deploy.py), else every n_action_steps.
    replan_every: int | None = None
    ensemble_decay: float = 0.01
    inpaint_decay: float = 2.0
    range_tolerance: float = 0.5  # beyond the action range by more than this: a safety stop
    stall_s: float = 1.0  # a camera stream with no new frame for this long: a safety stop
    # Real-time rigs: sleep until this long before a tick, then spin to it. The kernel's wake-up from a sleep
    # comes late now and then (ms on a loaded VM); spinning the last stretch trades that CPU for the rate.
    spin_s: float = 0.001
    max_steps: int | None = None

    def validate(self) -> None:
        if self.blend not in BLENDS:
            raise UserError(f"unknown blend {self.blend!r}; use one of {', '.join(BLENDS)}")
        if self.inject_obs_latency_s < 0 or self.inject_action_latency_s < 0:
            raise UserError("latencies must be >= 0 s")
        if self.spin_s < 0:
            raise UserError(f"spin_s must be >= 0 s, got {self.spin_s}")
        if self.replan_every is not None and self.replan_every < 1:
            raise UserError(f"replan_every must be >= 1 tick, got {self.replan_every}")


@dataclass
class ChunkRecord:
    """One chunk received: for the store's ``policy`` stream and the episode's latency figures."""

    id: int
    t_obs: float  # the observation time it was computed for (compensated)
    t_request: float  # loop time the request went out
    t_arrive: float  # loop time it was merged into the schedule
    actions: np.ndarray  # (n_action_steps, A) raw, as proposed
    compute_ms: float
    round_trip_ms: float
    late: int  # actions dropped because their time had passed


@dataclass
class TickTrace:
    """Per tick: what the loop saw and did (benchmarks read it)."""

    t: float
    wall: float
    obs_to_command_ms: float | None  # when a new chunk's first action was sent: obs read -> command sent
    held: bool


class Schedule:
    """Actions on the timeline, one slot per control tick (slot = round((t - t0) / dt))."""

    def __init__(self, blend: str, decay: float) -> None:
        self.blend, self.decay = blend, decay
        self.slots: dict[int, list[tuple[int, np.ndarray]]] = {}

    def clear(self) -> None:
        self.slots.clear()

    def merge(self, chunk_id: int, first_slot: int, actions: np.ndarray, earliest: int) -> int:
        """Put ``actions`` at slots ``first_slot, first_slot + 1, ...``; those before ``earliest`` are
        late and dropped. Returns how many were dropped."""
        late = 0
        new: dict[int, np.ndarray] = {}
        for i, a in enumerate(actions):
            s = first_slot + i
            if s < earliest:
                late += 1
            else:
                new[s] = a
        if not new:
            return late
        if self.blend == "ensemble":
            for s, a in new.items():
                self.slots.setdefault(s, []).append((chunk_id, a))
        else:  # none / inpaint: the newer chunk takes over from its first usable action
            start = min(new)
            for s in [s for s in self.slots if s >= start]:
                del self.slots[s]
            for s, a in new.items():
                self.slots[s] = [(chunk_id, a)]
        return late

    def action(self, slot: int) -> tuple[np.ndarray, int] | None:
        """The action for ``slot`` and the newest chunk contributing to it."""
        entries = self.slots.get(slot)
        if not entries:
            return None
        if len(entries) == 1:
            return entries[0][1], entries[0][0]
        w = np.exp(-self.decay * np.arange(len(entries)))
        a = np.sum([wi * e[1] for wi, e in zip(w, entries, strict=True)], axis=0) / w.sum()
        return a.astype(np.float32), entries[-1][0]

    def remaining(self, slot: int) -> int:
        """Slots from ``slot`` on that hold an action."""
        return sum(1 for s in self.slots if s >= slot)

    def known(self, first_slot: int, n: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(mask (n,), actions (n, A)) of what is scheduled at ``first_slot + i``."""
        rows = [self.action(first_slot + i) for i in range(n)]
        if not any(r is not None for r in rows):
            return None
        dim = next(r for r in rows if r is not None)[0].shape
        acts = np.stack([r[0] if r is not None else np.zeros(dim, np.float32) for r in rows])
        return np.array([r is not None for r in rows]), acts

    def prune(self, before: int) -> None:
        for s in [s for s in self.slots if s < before]:
            del self.slots[s]


def action_bounds(rig: Rig) -> tuple[np.ndarray, np.ndarray] | None:
    """The range a rig's actions live in: [-1, 1] for the 7-d delta-pose actions of the sim tasks and of
    arms in delta_pose mode (what the controllers clip to); None where the rig states none."""
    inner = getattr(rig, "rig", rig)
    names = getattr(rig.action_feature, "names", None) or ()
    cfg = getattr(inner, "config", None)
    arm = getattr(cfg, "arm", None)
    if (arm is not None and getattr(arm, "action", "") == "delta_pose") or (names and names[0] == "dx"):
        n = rig.action_feature.shape[0]
        return -np.ones(n, np.float32), np.ones(n, np.float32)
    return None


class Operator:
    """Operator keys on a terminal while a policy drives a real rig.

    enter start, p pause / resume (the arm holds), space E-STOP (the arm stops, the run ends),
    y / n mark success / failure (and end the episode), k end and keep, x discard, r reset, esc quit."""

    KEYS = {"enter": "start", "p": "pause", "space": "estop", "y": "success", "n": "failure", "k": "keep",
            "x": "discard", "backspace": "discard", "r": "reset", "esc": "quit", "ctrl-c": "quit"}

    def __init__(self, tty: str | int = "/dev/tty") -> None:
        from robolearn.teleop.devices import TerminalKeys

        self._events: deque[str] = deque()
        self._keys = TerminalKeys(tty, self._on_key)
        self._keys.start()

    def _on_key(self, key: str) -> None:
        ev = self.KEYS.get(key)
        if ev is not None:
            self._events.append(ev)

    def push(self, event: str) -> None:
        self._events.append(event)

    def events(self) -> list[str]:
        out = list(self._events)
        self._events.clear()
        return out

    def close(self) -> None:
        self._keys.close()


@dataclass
class DeployEpisode:
    """An :class:`~robolearn.rollout.Episode` plus the deployment's own record."""

    episode: Any
    chunks: list[ChunkRecord]
    trace: list[TickTrace]
    info: dict[str, Any] = field(default_factory=dict)
    # Real-time rigs: per tick, how late (ms) the loop woke for it against its schedule (cyclictest's latency).
    tick_late_ms: np.ndarray | None = None


class DeployLoop:
    """Runs episodes of a policy (through ``backend``) on ``rig`` (see the module docstring)."""

    def __init__(self, rig: Rig, backend: Any, policy_info: Any, cfg: DeployConfig,
                 operator: Operator | None = None, view: Any = None,
                 log: Callable[[str], None] | None = None, shaper: Any = None) -> None:
        cfg.validate()
        self.rig, self.backend, self.cfg = rig, backend, cfg
        self.operator, self.view = operator, view
        self.log = log or (lambda s: print(s, file=sys.stderr, flush=True))
        self.features = policy_features(policy_info, rig)
        self.n_obs_steps = int(policy_info.n_obs_steps)
        self.horizon = int(policy_info.horizon)
        self.n_action_steps = int(policy_info.n_action_steps)
        self.prefix_actions = int(getattr(policy_info, "prefix_actions", 0) or 0)
        self.action_dim = int(policy_info.action_dim)
        want = tuple(rig.action_feature.shape)
        if want != (self.action_dim,):
            raise UserError(f"the policy gives {self.action_dim}-d actions, rig {rig.name} takes {list(want)}")
        self.dt = 1.0 / rig.control_hz
        self.virtual = not rig.realtime
        self.bounds = action_bounds(rig)
        self.obs_latency, self.action_latency = self._latencies()
        # Streams whose time stamps the policy's observation (the ones it reads).
        self.streams = sorted({s for s, keys in rig.features.items() if any(k in self.features for k in keys)})
        self._ema_s: float | None = cfg.inference_s if self.virtual else None
        self.paused = False
        self.shaper = shaper

    # ------------------------------------------------------------ latencies
    def _latencies(self) -> tuple[dict[str, float], float]:
        """Per stream, the observation latency its device clock does not show; and the action latency.
        Zero without compensation."""
        streams = list(self.rig.features)
        if not self.cfg.compensate:
            return dict.fromkeys(streams, 0.0), 0.0
        eff = getattr(self.rig, "effective_latency", None)
        injected_obs = eff["obs_s"] if eff else 0.0
        injected_act = eff["action_s"] if eff else 0.0
        inner = getattr(self.rig, "rig", self.rig)
        lat = getattr(getattr(inner, "config", None), "latency", None)
        cam = float(getattr(lat, "camera_s", 0.0) or 0.0)
        act = float(getattr(lat, "action_s", 0.0) or 0.0)
        obs = {s: injected_obs + (cam if s != CONTROL_STREAM else 0.0) for s in streams}
        return obs, act + injected_act

    def latency_info(self) -> dict[str, Any]:
        return {"compensate": self.cfg.compensate, "obs_s": self.obs_latency, "action_s": self.action_latency,
                "injected": getattr(self.rig, "effective_latency", None)}

    # ------------------------------------------------------------ helpers
    def _now(self, step: int, t0: float) -> float:
        return t0 + step * self.dt if self.virtual else time.monotonic()

    def _slot(self, t: float, t0: float) -> int:
        return int(round((t - t0) / self.dt))

    def _lead(self) -> int:
        """Ticks a request takes to come back, from the measured round trips."""
        if self._ema_s is None:
            return 1
        return max(0, math.ceil(self._ema_s / self.dt - 1e-9))

    def _check_obs(self, obs: Observation, now: float) -> None:
        """A camera stream whose frame has not changed for ``stall_s`` (counted from the episode's start:
        a recording may hand over an old frame first) stops the arm."""
        if self.virtual:
            return
        for s, sample in obs.items():
            if s == CONTROL_STREAM:
                continue
            last = self._seen.get(s)
            if last is None or last[0] != sample.t_host:
                self._seen[s] = (sample.t_host, now)
                continue
            age = now - last[1]
            if age > self.cfg.stall_s:
                raise DeployStop(f"camera {s} delivered no frame for {age:.2f} s (stall_s {self.cfg.stall_s:g}): "
                                 f"stalled or unplugged; arm stopped")

    def _check_action(self, a: np.ndarray, step: int) -> np.ndarray:
        if not np.all(np.isfinite(a)):
            raise DeployStop(f"the policy gave a non-finite action at tick {step} ({np.round(a, 3).tolist()}); "
                             f"arm stopped")
        if self.bounds is None:
            return a
        lo, hi = self.bounds
        tol = self.cfg.range_tolerance
        if np.any(a < lo - tol) or np.any(a > hi + tol):
            i = int(np.argmax(np.maximum(lo - a, a - hi)))
            raise DeployStop(f"the policy gave an out-of-range action at tick {step}: dimension {i} = {a[i]:.3f}, "
                             f"range [{lo[i]:g}, {hi[i]:g}] (tolerance {tol:g}); arm stopped")
        return np.clip(a, lo, hi).astype(np.float32)

    def _prefix(self, first: int, until: int, sched: Schedule, sent: dict[int, np.ndarray]
                ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The given actions of a chunk whose index 0 acts at slot ``first`` (a prefix policy): at each slot
        before ``until`` (where the chunk lands, plus the action latency), the action sent to act there or
        else the one scheduled; stops at the first gap and at the policy's ``prefix_actions``."""
        acts = np.zeros((self.horizon, self.action_dim), np.float32)
        w = np.zeros(self.horizon, np.float32)
        for j in range(min(self.prefix_actions, self.horizon)):
            s = first + j
            if s >= until:
                break
            a = sent.get(s)
            if a is None:
                got = sched.action(s)
                if got is None:
                    break
                a = got[0]
            acts[j], w[j] = a, 1.0
        return (acts, w) if w.any() else (None, None)

    def _noop(self, last: np.ndarray | None) -> np.ndarray | None:
        """What to send when no action is scheduled: no motion for delta actions, else the last target."""
        if self.bounds is not None:
            a = np.zeros(self.action_dim, np.float32)
            if last is not None:
                a[-1] = last[-1]  # keep the gripper where it was commanded
            return a
        return last

    def _stop_arm(self) -> None:
        stop = getattr(self.rig, "stop", None)
        if stop is not None:
            try:
                stop()
            except Exception as e:  # noqa: BLE001 - the stop reason is already being reported
                self.log(f"robolearn deploy: stopping the arm failed: {e}")

    # ------------------------------------------------------------ one episode
    def run_episode(self, seed: int | None = None) -> DeployEpisode:
        import torch

        from robolearn.deploy.inference import Request
        from robolearn.deploy.inpaint import overlap_weights

        cfg = self.cfg
        limit = cfg.max_steps or self.rig.max_steps
        if limit is None:
            raise UserError(f"rig {self.rig.name} sets no episode limit; pass max_steps")
        # A real rig's camera frames are not kept (deploy records the control and policy streams): holding
        # every 640x480 RGB-D frame of an episode would take gigabytes.
        ep = EpisodeBuilder(limit, 0, None if self.virtual else (CONTROL_STREAM,))
        sched = Schedule(cfg.blend, cfg.ensemble_decay)
        hist = ObsHistory(self.features, self.n_obs_steps)
        obs = self.rig.reset(seed)
        self._seen: dict[str, tuple[float, float]] = {}
        seed_used = getattr(self.rig, "last_seed", seed)
        gen = torch.Generator()
        gen.manual_seed(int(seed_used)) if seed_used is not None else gen.seed()
        if self.shaper is not None:
            self.shaper.reset(seed_used)
        d_act = self._slot(self.action_latency, 0.0)
        compensating = self.action_latency > 0 or any(v > 0 for v in self.obs_latency.values())
        replan = cfg.replan_every or (1 if compensating else self.n_action_steps)
        chunks: list[ChunkRecord] = []
        trace: list[TickTrace] = []
        ticks: list[float] = []
        late_ms: list[float] = []
        sent: dict[int, np.ndarray] = {}  # slot -> the action sent to act at it (policies with a prefix)
        in_flight: dict[str, Any] | None = None
        ready: list[tuple[float, Any, dict[str, Any]]] = []  # virtual clock: replies and when they land
        last_request_step = -(10**9)
        n_requests = 0  # this episode's: seeds the per-step noise of samplers that draw it (DDPM)
        last_sent: np.ndarray | None = None
        held = 0
        stop_reason: str | None = None
        mark: bool | None = None
        discard = False
        t0 = next(iter(obs.values())).t_device if self.virtual else time.monotonic()
        t_next = time.monotonic()
        # What the tick reads: the policy's streams and the control stream; every stream for a live view.
        want = None if self.view is not None else {CONTROL_STREAM, *self.streams}
        new_chunk_pending: float | None = None  # wall time the newest merged chunk's observation was read

        def merge(reply: Any, req: dict[str, Any], t_now: float, slot: int) -> None:
            nonlocal new_chunk_pending
            first = self._slot(req["t_obs"], t0)
            late = sched.merge(reply.id, first, reply.chunk, earliest=slot + d_act)
            chunks.append(ChunkRecord(reply.id, req["t_obs"], req["t_request"], t_now, reply.chunk.copy(),
                                      reply.compute_ms, reply.round_trip_ms, late))
            took = (req["t_request_wall"], reply.round_trip_ms / 1e3)
            if not self.virtual:
                a = 0.3
                self._ema_s = took[1] if self._ema_s is None else (1 - a) * self._ema_s + a * took[1]
            new_chunk_pending = req["obs_wall"]
            if self.view is not None:
                self.view.log_chunk(t_now, "executing", reply.chunk)

        try:
            for step in range(limit):
                if not self.virtual:  # pace the loop on the wall clock; an overrun does not burst
                    now_w = time.monotonic()
                    if t_next > now_w:
                        wait_until(t_next, cfg.spin_s)
                    elif now_w - t_next > self.dt:
                        t_next = now_w
                    if step:
                        late_ms.append((time.monotonic() - t_next) * 1e3)
                        obs = self.rig.observe(want)
                    t_next += self.dt
                wall_obs = time.perf_counter()
                now = self._now(step, t0)
                # The timeline slot of this tick: its count in simulation; from the wall clock on a real rig,
                # where a tick that overran its slot is skipped (the count would fall behind the time).
                cur = step if self.virtual else self._slot(now, t0)
                ticks.append(time.monotonic())
                self._check_obs(obs, now if not self.virtual else 0.0)
                hist.push(_policy_values(self.rig, obs, self.features))
                t_obs = min(obs[s].t_device - self.obs_latency.get(s, 0.0) for s in self.streams) \
                    if self.streams else now

                # 1. Replies that have arrived.
                if self.virtual:
                    while ready and ready[0][0] <= now + 1e-9:
                        _, reply, req = ready.pop(0)
                        merge(reply, req, now, cur)
                elif in_flight is not None:
                    reply = self.backend.poll()
                    if reply is not None and reply.id == in_flight["id"]:  # else a stale reply: dropped
                        merge(reply, in_flight, now, cur)
                        in_flight = None
                if self.virtual and not ready:
                    in_flight = None
                sched.prune(cur + d_act)

                # 2. A new request when what is scheduled ahead covers no more than the round trip.
                busy = in_flight is not None
                if not busy and not self.paused and (sched.remaining(cur + d_act) <= self._lead()
                                                     or step - last_request_step >= replan):
                    noise = torch.randn((1, self.horizon, self.action_dim), generator=gen)[0].numpy()
                    req_obs = {k: v.numpy() for k, v in hist.tensors().items()}
                    known = weights = None
                    if cfg.blend == "inpaint":
                        # Chunk index n_obs_steps - 1 acts at t_obs; index j at slot first + j - (n_obs - 1).
                        first = self._slot(t_obs, t0) - (self.n_obs_steps - 1)
                        frozen_until = cur + d_act + self._lead()  # due before the new chunk lands
                        k = None if self.prefix_actions else sched.known(first, self.horizon)
                        if self.prefix_actions:
                            known, weights = self._prefix(first, frozen_until, sched, sent)
                        elif k is not None:
                            mask, acts = k
                            idx = np.flatnonzero(mask)
                            n_frozen = int(np.sum(first + idx < frozen_until))
                            w = overlap_weights(self.horizon, int(idx[0]), n_frozen, int(idx[-1] - idx[0] + 1),
                                                cfg.inpaint_decay)
                            known, weights = acts, w * mask
                    # Request ids run on across episodes: a late reply to the last episode is told apart.
                    self._next_id = getattr(self, "_next_id", 0) + 1
                    req = Request(self._next_id, req_obs, noise.astype(np.float32),
                                  seed=int(seed_used or 0) * 1000 + n_requests, known=known, weights=weights)
                    n_requests += 1
                    meta = {"id": req.id, "t_obs": t_obs, "t_request": now, "t_request_wall": time.perf_counter(),
                            "obs_wall": wall_obs}
                    last_request_step = step
                    self.backend.submit(req)
                    in_flight = meta
                    if self.view is not None and known is not None:  # what the new chunk is held to
                        self.view.log_chunk(now, "computing", known[weights > 0])
                    if self.virtual:  # the loop waits; virtual time moves by the inference time
                        reply = None
                        while reply is None or reply.id != req.id:
                            reply = self.backend.poll(timeout=0.05)
                        dur = reply.round_trip_ms / 1e3 if cfg.inference_s is None else cfg.inference_s
                        if cfg.inference_s is None:
                            self._ema_s = dur if self._ema_s is None else 0.7 * self._ema_s + 0.3 * dur
                        land = now + math.ceil(dur / self.dt - 1e-9) * self.dt
                        if land <= now + 1e-9:
                            merge(reply, meta, now, cur)
                            in_flight = None
                        else:
                            ready.append((land, reply, meta))

                # 3. This tick's action: the one scheduled to act action_latency from now.
                got = None if self.paused else sched.action(cur + d_act)
                proposed = None if got is None else np.asarray(got[0], np.float32)
                intervening = False
                if self.shaper is not None and not self.paused:  # a residual, or the operator taking over
                    proposed, intervening = self.shaper.act(step, obs, proposed)
                if proposed is None:
                    action = self._noop(last_sent)
                    held += 1
                else:
                    action = self._check_action(np.asarray(proposed, np.float32), step)
                o2c = None
                if got is not None and new_chunk_pending is not None:
                    o2c = (time.perf_counter() - new_chunk_pending) * 1e3
                    new_chunk_pending = None
                if action is None:
                    result = StepResult()
                    action = np.full(self.action_dim, np.nan, np.float32)
                else:
                    result = self.rig.send_action(action)
                    last_sent = action
                    if self.prefix_actions:  # what acts at which slot: the given actions of later chunks
                        sent[cur + d_act] = action
                        sent.pop(cur + d_act - 2 * self.horizon, None)
                trace.append(TickTrace(now, time.perf_counter(), o2c, got is None))
                ep.add(obs, action, intervening)
                if self.shaper is not None:
                    self.shaper.after(step, None if proposed is None else action, result)
                if self.view is not None:
                    measured = obs[CONTROL_STREAM].values.get("robot0_eef_pos") if CONTROL_STREAM in obs else None
                    self.view.log_tick(now, obs, action=action, measured=measured, scalars={
                        "lead_ticks": float(self._lead()), "held": float(got is None)})
                ended = ep.after(result)
                if self.virtual:
                    obs = self.rig.observe(want)
                if ended:
                    break
                if self.operator is not None:
                    evs = self.operator.events()
                    if "estop" in evs:
                        self._stop_arm()
                        raise DeployStop("E-STOP pressed; arm stopped")
                    if "pause" in evs:
                        self.paused = not self.paused
                        if self.paused:
                            self._stop_arm()
                            sched.clear()
                        self.log(f"robolearn deploy: {'paused (p resumes)' if self.paused else 'resumed'}")
                    if "success" in evs or "failure" in evs:
                        mark = "success" in evs
                        break
                    if "keep" in evs:
                        break
                    if "discard" in evs or "reset" in evs or "quit" in evs:
                        discard = True
                        if "quit" in evs:
                            stop_reason = "quit"
                        break
        except (DeployStop, RigError) as e:
            stop_reason = str(e)
            self._stop_arm()
            raise_after: BaseException | None = e if isinstance(e, DeployStop) else DeployStop(f"{e}; arm stopped")
        except Exception as e:
            from robolearn.deploy.inference import InferenceError

            if not isinstance(e, InferenceError):
                self._stop_arm()
                raise
            stop_reason = str(e)
            self._stop_arm()
            raise_after = DeployStop(f"{e}; arm stopped")
        else:
            raise_after = None
        if in_flight is not None and not self.virtual:
            # Let a reply still on its way not be mistaken for the next episode's.
            try:
                self.backend.poll(timeout=min(2.0, 3 * (self._ema_s or 0.2)))
            except Exception:  # noqa: BLE001
                pass
        if ep.steps == 0:
            ep.add(obs, np.zeros(self.action_dim, np.float32), False)
        success = ep.success if mark is None else mark
        info = {
            "blend": cfg.blend, "latency": self.latency_info(), "late_dropped": int(sum(c.late for c in chunks)),
            "held_ticks": held, "chunks": len(chunks),
            "inference_ms": [round(c.compute_ms, 3) for c in chunks],
            "round_trip_ms": [round(c.round_trip_ms, 3) for c in chunks],
            "backend": getattr(self.backend, "kind", "?"), "stop_reason": stop_reason, "discard": discard,
            "clock": "virtual" if self.virtual else "wall", "chunk_actions": self.horizon - self.n_obs_steps + 1,
            "marked": mark,  # the operator's success (True) or failure (False) mark, None without one
        }
        if late_ms:
            info["tick_late_ms"] = {f"p{q}": round(float(np.percentile(late_ms, q)), 3) for q in (50, 99, 100)}
        episode = ep.build(seed_used, stopped=stop_reason is not None, info=info, tick_times=ticks)
        episode.success = success
        out = DeployEpisode(episode, chunks, trace, info, np.asarray(late_ms) if late_ms else None)
        if self.shaper is not None:  # also after a safety stop: what was collected is kept
            self.shaper.end(out)
        if raise_after is not None:
            out.info["error"] = str(raise_after)
            self.last_episode = out
            raise raise_after
        self.last_episode = out
        return out
