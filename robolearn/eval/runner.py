"""The evaluation runner behind `robolearn eval`: batched rollouts in supervised worker processes.

``workers`` spawned processes (each with its own offscreen GL context) each step a batch of simulated
rigs through :func:`robolearn.rollout.run_batched`, so a policy is called once per chunk boundary
for all of that process's environments. Seeds come from a fixed list, handed out one at a time, so
two policies evaluated with the same settings meet exactly the same initial states, whatever the
number of processes or environments.

The parent supervises: a worker that raises, dies (SIGKILL, segfault) or reports no progress for
``worker_timeout`` seconds stops the run with :class:`EvalFailed`, naming the seed(s) it was running;
it never waits on a dead worker.

Cameras the policy reads are deferred on the rigs (rendered from the saved MuJoCo state only at the
ticks a policy call will read, bit-identical to live rendering); videos are rendered afterwards from
the episode's saved states.
"""

from __future__ import annotations

import ctypes
import json
import math
import multiprocessing as mp
import os
import queue
import signal
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robolearn.errors import MissingFileError, UserError
from robolearn.eval.report import wilson_interval, write_mp4

EVAL_SEED_BASE = 1_000_000  # far from the recording seeds (0, 1, 2, ...), so eval states are unseen
VIDEO_CAMERA = "agentview"
VIDEO_SIZE = 128
ENVS_PER_WORKER = 4  # default batch per process: amortises a policy call without starving the cores
# Test hook: "raise:SEED", "hang:SEED" or "kill:SEED" makes the worker that starts SEED fail that way,
# so the supervision can be tested with real processes.
FAULT_ENV = "ROBOLEARN_EVAL_FAULT"


class EvalFailed(RuntimeError):
    """A worker raised, died or hung; the message names the seed(s) and the cause in one line."""

    def __init__(self, message: str, seeds: list[int], details: str = "") -> None:
        super().__init__(message)
        self.seeds = seeds
        self.details = details


def eval_seeds(episodes: int, base: int = EVAL_SEED_BASE) -> list[int]:
    return list(range(base, base + episodes))


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint directory, or a training run directory (its newest checkpoint)."""
    p = Path(path)

    def is_ckpt(d: Path) -> bool:  # a policy, or a residual fine-tuned on one (robolearn.rl)
        return (d / "config.json").is_file() or (d / "residual.json").is_file()

    if is_ckpt(p):
        return p
    ckpts = p / "checkpoints"
    if ckpts.is_dir():
        if is_ckpt(ckpts / "last"):
            return ckpts / "last"
        steps = sorted((c for c in ckpts.iterdir() if is_ckpt(c)), key=lambda c: c.name)
        if steps:
            return steps[-1]
    raise MissingFileError(f"no checkpoint at {p}: expected a checkpoint directory or a run with checkpoints/")


def resolve_device(device: str) -> str:
    """``cpu``, ``cuda`` or ``auto`` (CUDA when there is a GPU)."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is available here; use --device cpu or auto")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise UserError(f"unknown --device {device!r}; use cpu, cuda or auto")
    return device


def policy_cameras(shape_meta_obs: dict[str, Any]) -> tuple[list[str], int, bool]:
    """Cameras, image size and depth that a policy's observation features ask for."""
    cams, size, depth = [], 0, False
    for key, feat in shape_meta_obs.items():
        if feat.kind == "rgb" and key.endswith("_image"):
            cam = key[: -len("_image")]
        elif feat.kind == "depth" and key.endswith("_depth"):
            cam, depth = key[: -len("_depth")], True
        else:
            continue
        if cam not in cams:
            cams.append(cam)
        size = feat.shape[0]
    return cams, size or 84, depth


def check_policy_fits_task(checkpoint: str | os.PathLike, task: str) -> None:
    """Refuse, before starting workers, a checkpoint whose low-dim inputs the task does not give."""
    from robolearn.policies.checkpoint import read_checkpoint_meta
    from robolearn.policies.shapes import ShapeMeta
    from robolearn.sim.env import lowdim_shapes

    if (Path(checkpoint) / "residual.json").is_file():  # a fine-tuned residual reads its base's inputs
        checkpoint = json.loads((Path(checkpoint) / "residual.json").read_text())["base"]
    obs = ShapeMeta.from_json(read_checkpoint_meta(checkpoint)["shape_meta"]).obs
    want = {k: f.shape for k, f in obs.items() if f.kind == "lowdim"}
    have = lowdim_shapes(task)
    for key, shape in want.items():
        if key not in have:
            raise UserError(f"{checkpoint}: the policy reads {key!r}, which task {task!r} does not observe; "
                            f"it observes {', '.join(have)}")
        if have[key] != shape:
            raise UserError(
                f"{checkpoint}: the policy reads {key!r} of shape {list(shape)}, task {task!r} gives "
                f"{list(have[key])}; the store it was trained on was recorded with another "
                f"observation layout (older robolearn?): re-record the demonstrations and retrain")


@dataclass
class EpisodeResult:
    seed: int
    success: bool
    length: int
    inference_ms: list[float] = field(default_factory=list)
    video: str | None = None


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process needs (picklable)."""

    checkpoint: str
    task: str
    n_envs: int
    threads: int
    device: str = "cpu"
    inference_steps: int | None = None
    video_dir: str | None = None
    max_steps: int | None = None


# ---------------------------------------------------------------- the worker process


def _fault(seed: int) -> None:
    spec = os.environ.get(FAULT_ENV, "")
    if not spec:
        return
    what, _, at = spec.partition(":")
    if at and int(at) == seed:
        if what == "raise":
            raise RuntimeError(f"injected fault ({FAULT_ENV}={spec})")
        if what == "hang":
            while True:
                time.sleep(3600)
        if what == "kill":
            os.kill(os.getpid(), signal.SIGKILL)


class _ParentGone(Exception):
    """The supervising process died (SIGKILL/SIGTERM skip its clean-up): this worker stops too."""


def _worker_main(wid: int, spec: WorkerSpec, seed_q: Any, msg_q: Any, slots: Any) -> None:
    """Run episodes for seeds taken from ``seed_q`` until its end marker; report through ``msg_q``.

    ``slots`` (shared memory, one per env, -1 when free) holds the seeds in flight: unlike a queued
    message it is there for the parent to read even when this process is killed the next instant.
    A worker whose parent is gone stops within about a second (else it would finish its episodes
    and then wait for seeds forever, holding a core and its memory)."""
    rigs: list[Any] = []
    video_rig = None
    try:  # Linux: the kernel ends this worker the moment its parent dies, even mid-import or mid-episode
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    parent = mp.parent_process()  # elsewhere (and for a parent killed before the line above): polled

    def check_parent() -> None:
        if parent is not None and not parent.is_alive():
            raise _ParentGone

    try:
        import torch

        from robolearn.policies.checkpoint import load_policy
        from robolearn.rigs import make_rig
        from robolearn.rollout import PolicyAgent, policy_features, run_batched

        torch.set_num_threads(spec.threads)
        overrides = {"num_inference_steps": spec.inference_steps} if spec.inference_steps else None
        residual = None
        if (Path(spec.checkpoint) / "residual.json").is_file():  # base + residual (robolearn.rl), as one agent
            from robolearn.rl.residual import ResidualAgent, load_residual

            residual = load_residual(spec.checkpoint, overrides=overrides)
            policy = residual.base.to(spec.device)
        else:
            policy = load_policy(spec.checkpoint, device=spec.device, overrides=overrides)
        cams, size, depth = policy_cameras(policy.shape_meta.obs)
        for _ in range(spec.n_envs):
            rigs.append(make_rig(f"sim:{spec.task}", cameras=cams, image_size=size, depth=depth,
                                 defer_cameras=True))
        if spec.video_dir:
            video_rig = make_rig(f"sim:{spec.task}", cameras=[VIDEO_CAMERA], image_size=VIDEO_SIZE)
        if residual is not None:
            agent = ResidualAgent(residual, policy_features(policy, rigs[0]), spec.n_envs)
        else:
            agent = PolicyAgent(policy, policy_features(policy, rigs[0]), spec.n_envs)
        msg_q.put(("ready", wid, {"inference_steps": getattr(policy.config, "num_inference_steps", None),
                                  "policy_type": (residual or policy).policy_type}))
        video_seeds: set[int] = set()

        def seeds() -> Iterator[int]:
            while True:
                try:
                    item = seed_q.get(timeout=1.0)
                except queue.Empty:
                    check_parent()
                    continue
                if item is None:
                    return
                seed, with_video = item
                if with_video:
                    video_seeds.add(seed)
                slots[list(slots).index(-1)] = seed
                msg_q.put(("start", wid, seed))
                _fault(seed)
                yield seed

        last_beat = [time.monotonic()]

        def on_tick() -> None:
            now = time.monotonic()
            if now - last_beat[0] > 1.0:
                check_parent()
                msg_q.put(("alive", wid, None))
                last_beat[0] = now

        def on_episode(i: int, ep: Any) -> None:
            video = None
            if video_rig is not None and ep.seed in video_seeds:
                frames = [video_rig.render_state(s)[f"{VIDEO_CAMERA}_image"] for s in ep.control["sim_state"]]
                name = f"{spec.task}_seed{ep.seed}_{'success' if ep.success else 'failure'}.mp4"
                video = str(Path(spec.video_dir) / name)  # type: ignore[arg-type]
                write_mp4(video, frames, fps=rigs[i].control_hz)
            res = EpisodeResult(seed=int(ep.seed), success=bool(ep.success), length=ep.steps,
                                inference_ms=list(ep.info.get("inference_ms", [])), video=video)
            msg_q.put(("done", wid, res))
            slots[list(slots).index(res.seed)] = -1

        run_batched(rigs, agent, seeds(), max_steps=spec.max_steps, keep_streams=("control",),
                    on_episode=on_episode, on_tick=on_tick)
        msg_q.put(("exit", wid, None))
    except _ParentGone:
        pass  # nobody to report to
    except BaseException as e:  # noqa: BLE001 - everything goes to the parent, which decides
        msg_q.put(("error", wid, (f"{type(e).__name__}: {' '.join(str(e).split())}", traceback.format_exc())))
    finally:
        for r in [*rigs, video_rig]:
            if r is not None:
                try:
                    r.close()
                except Exception:  # noqa: BLE001 - closing after a failure must not hide it
                    pass


# ---------------------------------------------------------------- the supervising parent


def _supervise(procs: list[Any], slots: list[Any], msg_q: Any, timeout: float,
               startup_timeout: float) -> tuple[dict[int, EpisodeResult], dict[str, Any]]:
    """Results by seed, and what the workers reported of their policy, once every worker has exited;
    raises EvalFailed on an error, a death or a hang."""
    n = len(procs)
    last = dict.fromkeys(range(n), time.monotonic())
    ready: set[int] = set()
    finished: set[int] = set()
    results: dict[int, EpisodeResult] = {}
    policy_info: dict[str, Any] = {}

    def in_flight(w: int) -> list[int]:
        # The shared slots, not the messages: a killed worker's last messages may never arrive.
        return sorted(int(v) for v in slots[w] if v >= 0)

    def seeds_of(w: int) -> str:
        s = in_flight(w)
        return ", ".join(map(str, s)) if s else "none (while starting)"

    def handle(msg: tuple[str, int, Any]) -> None:
        kind, w, payload = msg
        last[w] = time.monotonic()
        if kind == "ready":
            ready.add(w)
            policy_info.update(payload)
        elif kind == "done":
            results[payload.seed] = payload
        elif kind == "exit":
            finished.add(w)
        elif kind == "error":
            line, tb = payload
            seeds = in_flight(w)
            where = f"seed {seeds_of(w)}" if seeds else "start-up"
            raise EvalFailed(f"worker failed on {where}: {line}", seeds, tb)

    while len(finished) < n:
        try:
            handle(msg_q.get(timeout=0.5))
            continue
        except queue.Empty:
            pass
        now = time.monotonic()
        for w, p in enumerate(procs):
            if w in finished:
                continue
            if not p.is_alive():
                # Its last messages may still be in the pipe: an error report beats "died".
                deadline = time.monotonic() + 2.0
                while w not in finished and time.monotonic() < deadline:
                    try:
                        handle(msg_q.get(timeout=0.2))
                    except queue.Empty:
                        pass
                if w in finished:
                    continue
                code = p.exitcode
                how = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
                raise EvalFailed(f"worker {w} (pid {p.pid}) died ({how}) while running seed(s) {seeds_of(w)}",
                                 in_flight(w))
            limit = timeout if w in ready else startup_timeout
            if now - last[w] > limit:
                raise EvalFailed(f"worker {w} (pid {p.pid}) made no progress for {limit:.0f}s while running "
                                 f"seed(s) {seeds_of(w)}; stopped it", in_flight(w))
    return results, policy_info


def _stop(procs: list[Any]) -> None:
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + 5.0
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(5.0)


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def evaluate(
    checkpoint: str | os.PathLike,
    task: str,
    episodes: int = 50,
    n_envs: int | None = None,
    videos: int = 2,
    out_dir: str | os.PathLike | None = None,
    seed_base: int = EVAL_SEED_BASE,
    inference_steps: int | None = None,
    workers: int | None = None,
    device: str = "cpu",
    max_steps: int | None = None,
    worker_timeout: float = 120.0,
    startup_timeout: float = 600.0,
) -> dict[str, Any]:
    """Success rate of one checkpoint on one task over a fixed list of seeds.

    ``n_envs`` environments in all (default ``4 * workers``) are split over ``workers`` processes
    (default one per core); each process calls the policy once per chunk boundary for its batch.
    ``max_steps`` caps episodes below the task's horizon. Raises :class:`EvalFailed` when a worker
    fails, dies or makes no progress for ``worker_timeout`` seconds (``startup_timeout`` while it
    loads)."""
    from robolearn.sim.tasks import load_task

    task_cfg = load_task(task)  # fail fast on an unknown task, before starting processes
    ckpt = resolve_checkpoint(checkpoint)
    if episodes < 1:
        raise UserError(f"--episodes must be at least 1, got {episodes}")
    for name, v in (("--n-envs", n_envs), ("--workers", workers), ("--inference-steps", inference_steps),
                    ("max_steps", max_steps)):
        if v is not None and v < 1:
            raise UserError(f"{name} must be at least 1, got {v}")
    dev = resolve_device(device)
    check_policy_fits_task(ckpt, task)
    cores = default_workers()
    workers = min(workers or cores, episodes, n_envs or episodes)
    n_envs = max(workers, min(n_envs or ENVS_PER_WORKER * workers, episodes))
    per_worker = [n_envs // workers + (w < n_envs % workers) for w in range(workers)]
    threads = max(1, cores // workers)
    video_dir = None
    if out_dir is not None and videos > 0:
        video_dir = Path(out_dir) / "videos" / f"{task_cfg.name}_{_label(ckpt)}"
        video_dir.mkdir(parents=True, exist_ok=True)
    seeds = eval_seeds(episodes, seed_base)

    ctx = mp.get_context("spawn")
    seed_q, msg_q = ctx.Queue(), ctx.Queue()
    for i, s in enumerate(seeds):
        seed_q.put((s, i < videos))
    for _ in range(workers):
        seed_q.put(None)  # one end marker per worker
    slots = [ctx.Array("q", [-1] * per_worker[w], lock=False) for w in range(workers)]
    procs = [ctx.Process(target=_worker_main, daemon=True, name=f"robolearn-eval-{w}",
                         args=(w, WorkerSpec(str(ckpt), task, per_worker[w], threads, dev, inference_steps,
                                             str(video_dir) if video_dir else None, max_steps), seed_q, msg_q, slots[w]))
             for w in range(workers)]
    t0 = time.perf_counter()
    try:
        for p in procs:
            p.start()
        by_seed, policy_info = _supervise(procs, slots, msg_q, worker_timeout, startup_timeout)
    except EvalFailed as e:
        if out_dir is not None and e.details:
            log = Path(out_dir) / "eval_errors.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(e.details)
            e.args = (f"{e.args[0]} (traceback in {log})",)
        raise
    finally:
        _stop(procs)
    wall = time.perf_counter() - t0
    missing = [s for s in seeds if s not in by_seed]
    if missing:
        raise EvalFailed(f"workers exited without running seed(s) {', '.join(map(str, missing[:8]))}", missing)
    results = [by_seed[s] for s in seeds]
    succ = sum(r.success for r in results)
    lo, hi = wilson_interval(succ, len(results))
    timings = [t for r in results for t in r.inference_ms]
    return {
        "task": task_cfg.name,
        "checkpoint": str(ckpt),
        "episodes": len(results),
        "successes": succ,
        "success_rate": succ / len(results),
        "wilson95": [lo, hi],
        "mean_episode_length": float(np.mean([r.length for r in results])),
        # Wall time of the policy calls that produced each chunk (one call serves a batch of envs).
        "inference_ms_per_chunk": float(np.median(timings)) if timings else None,
        "seeds": [seed_base, seed_base + episodes - 1],
        "wall_seconds": wall,
        "episodes_per_minute": len(results) / wall * 60.0 if wall > 0 else math.inf,
        "workers": workers,
        "n_envs": n_envs,
        "device": dev,
        **policy_info,
        "videos": [r.video for r in results if r.video],
        "per_episode": [asdict(r) | {"inference_ms": None} for r in results],
    }


def _label(ckpt: Path) -> str:
    parts = ckpt.parts
    return "_".join(parts[-3:]).replace("checkpoints_", "") if len(parts) >= 3 else ckpt.name
