"""The teleop data-collection loop behind `robolearn record`.

A rig (``sim:<task>`` here; real rigs come from ``hardware/``) is driven by a teleoperator (the
scripted ``expert`` in simulation) and every attempt becomes one episode of the store.

Simulation records fast: the expert runs in an environment without cameras, keeping the MuJoCo
state of every tick, and only attempts worth keeping are rendered afterwards from those states
(as robomimic does), so failed attempts cost no rendering at all.

Determinism: attempt k uses reset seed ``seed + k``, and a run appending to an existing store
continues after the highest seed it already holds, so a run that was killed and restarted
produces the same episodes as one that never stopped.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from robolearn.data.schema import CONTROL_STREAM, EpisodeInfo, KeySpec, SchemaError
from robolearn.data.store import DemoStore

LOWDIM_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "robot0_joint_pos", "object")


@dataclass
class RecordConfig:
    rig: str
    out: str
    episodes: int = 10
    teleop: str = "expert"
    cameras: Sequence[str] = ()
    image_size: int = 84
    depth: bool = False
    seed: int = 0
    keep_failures: bool = False
    codec: str = "qoi"
    # Control ticks kept after the task first succeeds, so policies also learn what "done" looks like.
    hold_steps: int = 5
    max_attempts: int | None = None
    # Processes running attempts; 0 picks one per core (at most 4). The writer is always this process.
    workers: int = 0
    # A perturbed expert (robolearn.sim.perturb: noise, early_release, stall) to record failures on
    # demand; its attempts are kept whatever their outcome and count towards ``episodes``.
    perturb: str | None = None

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise ValueError(f"--episodes must be at least 1, got {self.episodes}")
        if not 8 <= self.image_size <= 1024:
            raise ValueError(f"--image-size must be between 8 and 1024, got {self.image_size}")
        if not self.rig.startswith("sim:"):
            raise ValueError(f"unknown rig {self.rig!r}: use sim:<task> (e.g. sim:lift)")
        if self.teleop != "expert":
            raise ValueError(f"teleoperator {self.teleop!r} is not available for the simulated rig; use --teleop expert")
        if self.perturb is not None:
            from robolearn.sim.perturb import PERTURBATIONS

            if self.perturb not in PERTURBATIONS:
                raise ValueError(f"unknown --perturb {self.perturb!r}; expected one of {', '.join(PERTURBATIONS)}")
        cams = [c.strip() for c in self.cameras if c.strip()]
        if len(set(cams)) != len(cams):
            raise ValueError(f"--cameras lists a camera twice: {','.join(cams)}")
        self.cameras = cams


@dataclass
class RecordSummary:
    out: str
    committed: int = 0
    successes: int = 0
    failures_kept: int = 0
    attempts: int = 0
    steps: int = 0
    seconds: float = 0.0
    rollout_seconds: float = 0.0
    render_seconds: float = 0.0
    write_seconds: float = 0.0
    interrupted: bool = False
    episode_indices: list[int] = field(default_factory=list)

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds else 0.0


def _raise_interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def check_store_matches(store: DemoStore, cfg: RecordConfig) -> None:
    """Fail before any work when the store was recorded with other cameras or image sizes."""
    have = set(store.streams) - {CONTROL_STREAM}
    if store.n_episodes and have != set(cfg.cameras):
        raise SchemaError(
            f"{store.path} holds cameras [{','.join(sorted(have)) or 'none'}], this run records "
            f"[{','.join(cfg.cameras) or 'none'}]; use the same --cameras or another --out"
        )
    for cam in cfg.cameras:
        spec = store.streams.get(cam, {}).get(f"{cam}_image")
        if spec is not None and spec.shape[:2] != (cfg.image_size, cfg.image_size):
            raise SchemaError(
                f"{store.path} holds {cam} images of {spec.shape[1]}x{spec.shape[0]}, this run records "
                f"{cfg.image_size}x{cfg.image_size}; use --image-size {spec.shape[0]} or another --out"
            )
    for cam in cfg.cameras:
        keys = store.streams.get(cam)
        if keys is not None and (f"{cam}_depth" in keys) != cfg.depth:
            had = "with" if f"{cam}_depth" in keys else "without"
            raise SchemaError(f"{store.path} was recorded {had} depth; match it with --depth or use another --out")


def check_control_matches(store: DemoStore, task: str) -> None:
    """Fail when the store's low-dim keys have other shapes than the task's env gives (a store
    recorded by an older robolearn with another observation layout). Builds an env: for tools that
    decide whether to reuse a store; `record` itself checks the first episode it writes instead."""
    if CONTROL_STREAM not in store.streams or not store.n_episodes:
        return
    from robolearn.sim.env import lowdim_shapes

    _check_lowdim_shapes(store, lowdim_shapes(task), task)


def _check_lowdim_shapes(store: DemoStore, shapes: dict[str, tuple[int, ...]], task: str) -> None:
    have = store.streams[CONTROL_STREAM]
    for key, shape in shapes.items():
        if key in have and tuple(have[key].shape) != tuple(shape):
            raise SchemaError(
                f"{store.path} holds {key!r} of shape {list(have[key].shape)}, task {task!r} now gives "
                f"{list(shape)}: the store was recorded with another observation layout; "
                f"record into another --out"
            )


def _next_seed(store: DemoStore, seed: int) -> int:
    seeds = [e.seed for e in store.episodes() if e.seed is not None]
    return max(seed, max(seeds) + 1) if seeds else seed


class _Collector:
    """Runs attempts: the expert in a camera-less env, then renders kept attempts from their states."""

    def __init__(self, cfg: RecordConfig) -> None:
        from robolearn.sim import load_task, make_env

        self.cfg = cfg
        self.task = load_task(cfg.rig.split(":", 1)[1])
        self.roll_env = make_env(self.task, cameras=(), seed=cfg.seed)
        self.render_env = (make_env(self.task, cameras=cfg.cameras, image_size=cfg.image_size, depth=cfg.depth)
                           if cfg.cameras else None)

    def attempt(self, seed: int) -> tuple[dict, dict, float, float]:
        from robolearn.sim.experts import make_expert

        t0 = time.perf_counter()
        expert = make_expert(self.task.name, np.random.default_rng(seed))
        if self.cfg.perturb:
            from robolearn.sim.perturb import perturb

            # Its own stream, so the expert's demonstration variation stays that of the unperturbed seed.
            expert = perturb(expert, self.cfg.perturb, np.random.default_rng([seed, 1]))
        ep = _rollout(self.roll_env, expert, seed, self.cfg.hold_steps)
        if self.cfg.perturb:
            ep["perturb"] = expert.describe()
        t1 = time.perf_counter()
        keep = ep["success"] or self.cfg.keep_failures or bool(self.cfg.perturb)
        frames = _render(self.render_env, ep["sim_state"]) if keep and self.render_env else {}
        return ep, frames, t1 - t0, time.perf_counter() - t1

    def close(self) -> None:
        self.roll_env.close()
        if self.render_env:
            self.render_env.close()


_COLLECTOR: _Collector | None = None


def _init_worker(cfg: RecordConfig, parent_pid: int) -> None:
    global _COLLECTOR
    # Ctrl-C is the parent's to handle; and a worker must not outlive a parent killed with SIGKILL.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    # A parent that died while this process was still starting up sends no death signal: leave now,
    # before spending seconds building environments for nobody.
    if os.getppid() != parent_pid:
        os._exit(0)
    _COLLECTOR = _Collector(cfg)


def _worker_attempt(seed: int) -> tuple[dict, dict, float, float]:
    assert _COLLECTOR is not None
    return _COLLECTOR.attempt(seed)


def _attempts(cfg: RecordConfig, first_seed: int, workers: int) -> Iterator[tuple[int, tuple]]:
    """(seed, result) for seeds first_seed, first_seed + 1, ... in order, computed by ``workers``
    processes a few seeds ahead; the caller stops iterating when it has enough."""
    if workers <= 1:
        collector = _Collector(cfg)
        try:
            seed = first_seed
            while True:
                yield seed, collector.attempt(seed)
                seed += 1
        finally:
            collector.close()
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                               initargs=(cfg, os.getpid()))
    pending: deque = deque()
    next_seed = first_seed
    try:
        while True:
            while len(pending) < 2 * workers:  # a bounded look-ahead keeps memory flat
                pending.append((next_seed, pool.submit(_worker_attempt, next_seed)))
                next_seed += 1
            seed, fut = pending.popleft()
            yield seed, fut.result()
    finally:
        for _, fut in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def record(cfg: RecordConfig, progress: Callable[[RecordSummary], None] | None = None) -> RecordSummary:
    """Record ``cfg.episodes`` successful episodes (plus kept failures) into ``cfg.out``.

    Attempts run in ``cfg.workers`` processes; only this process writes, in seed order, so the
    store is the same whatever the number of workers."""
    from robolearn.sim import load_task

    task = load_task(cfg.rig.split(":", 1)[1])
    store = DemoStore.open(cfg.out, mode="a")
    try:
        check_store_matches(store, cfg)
    except Exception:
        store.close()
        raise
    summary = RecordSummary(out=str(cfg.out))
    max_attempts = cfg.max_attempts or 3 * cfg.episodes + 20
    workers = cfg.workers or min(os.cpu_count() or 1, 4)
    workers = max(1, min(workers, max_attempts))
    t_start = time.perf_counter()

    # SIGTERM (e.g. from a supervisor) ends the run like Ctrl-C: the episode in flight is dropped,
    # everything committed stays.
    in_main = threading.current_thread() is threading.main_thread()
    old_term = signal.signal(signal.SIGTERM, _raise_interrupt) if in_main else None
    attempts = _attempts(cfg, _next_seed(store, cfg.seed), workers)
    try:
        for seed, (ep, frames, t_roll, t_render) in attempts:
            summary.attempts += 1
            summary.rollout_seconds += t_roll
            summary.render_seconds += t_render
            summary.steps += len(ep["action"])
            if ep["success"] or cfg.keep_failures or cfg.perturb:
                t0 = time.perf_counter()
                notes = {"task_name": task.name, "teleop": cfg.teleop, "image_size": cfg.image_size}
                if cfg.perturb:
                    notes["perturb"] = ep["perturb"]
                info = EpisodeInfo(
                    task=task.text, success=bool(ep["success"]), source="expert", rig=cfg.rig,
                    fps=float(ep["fps"]), seed=seed, notes=notes,
                )
                summary.episode_indices.append(_write_episode(store, ep, frames, info, task.name, cfg))
                summary.write_seconds += time.perf_counter() - t0
                summary.committed += 1
                if ep["success"]:
                    summary.successes += 1
                else:
                    summary.failures_kept += 1
            if progress:
                progress(summary)
            done = summary.committed if cfg.perturb else summary.successes
            if done >= cfg.episodes or summary.attempts >= max_attempts:
                break
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        attempts.close()
        if in_main:
            signal.signal(signal.SIGTERM, old_term)
        summary.seconds = time.perf_counter() - t_start
        store.close()
    return summary


def _rollout(env, expert, seed: int, hold_steps: int) -> dict[str, np.ndarray]:  # noqa: ANN001 - SimEnv
    obs, _ = env.reset(seed=seed)
    expert.reset(env)
    rows: dict[str, list] = {k: [] for k in (*LOWDIM_KEYS, "action", "sim_state", "t", "reward")}
    success_at = None
    for _ in range(env.horizon):
        action = np.asarray(expert.act(env, obs), dtype=np.float32)
        rows["t"].append(env.sim_time)
        rows["sim_state"].append(env.get_state())
        for k in LOWDIM_KEYS:
            rows[k].append(obs[k])
        rows["action"].append(action)
        obs, reward, terminated, truncated, info = env.step(action)
        rows["reward"].append(float(reward))
        if success_at is None and info.get("success"):
            success_at = len(rows["action"])
        if (success_at is not None and len(rows["action"]) >= success_at + hold_steps) or terminated or truncated:
            break
        if getattr(expert, "gave_up", False):  # a perturbed expert ends its failed attempt early
            break
    out = {k: np.asarray(v) for k, v in rows.items()}
    out["success"] = success_at is not None
    out["fps"] = float(env.control_freq)
    return out


def _render(env, states: np.ndarray) -> dict[str, np.ndarray]:  # noqa: ANN001 - SimEnv
    frames: dict[str, list] = {}
    for s in states:
        for k, v in env.render_state(s).items():
            frames.setdefault(k, []).append(v)
    return {k: np.stack(v) for k, v in frames.items()}


def _write_episode(store: DemoStore, ep: dict, frames: dict[str, np.ndarray], info: EpisodeInfo,
                   task_name: str, cfg: RecordConfig) -> int:
    if CONTROL_STREAM in store.streams:
        # Checked on the episode itself: building an env up front would slow every resumed run.
        _check_lowdim_shapes(store, {k: ep[k].shape[1:] for k in LOWDIM_KEYS}, task_name)
    else:
        specs = {k: KeySpec.infer(ep[k][0]) for k in (*LOWDIM_KEYS, "action")}
        # Exact MuJoCo state, so images can be re-rendered later at any size or camera.
        specs["sim_state"] = KeySpec(shape=ep["sim_state"].shape[1:], dtype="float64")
        store.declare_stream(CONTROL_STREAM, specs)
    for cam in cfg.cameras:
        if cam not in store.streams:
            keys = {f"{cam}_image": KeySpec(shape=frames[f"{cam}_image"].shape[1:], dtype="uint8", kind="rgb", codec=cfg.codec)}
            if cfg.depth:
                keys[f"{cam}_depth"] = KeySpec(shape=frames[f"{cam}_depth"].shape[1:], dtype="uint16", kind="depth",
                                               depth_scale=0.001)
            store.declare_stream(cam, keys)
    t = ep["t"].astype(np.float64)
    with store.begin_episode() as w:
        # The sim has one clock: it stamps both the "device" capture time and the host receive time.
        w.extend(CONTROL_STREAM, t, t, **{k: ep[k] for k in (*LOWDIM_KEYS, "action", "sim_state")})
        for cam in cfg.cameras:
            vals = {f"{cam}_image": frames[f"{cam}_image"]}
            if cfg.depth:
                vals[f"{cam}_depth"] = frames[f"{cam}_depth"]
            w.extend(cam, t, t, **vals)
        w.set_column("reward", ep["reward"].astype(np.float32), provenance={"source": "sim", "task": task_name})
        return w.commit(info)
