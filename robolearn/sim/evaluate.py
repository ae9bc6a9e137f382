"""The sim evaluation suite behind `robolearn eval`.

Policies are rolled out in robosuite environments running in parallel worker processes (spawned,
so each has its own offscreen GL context). Seeds come from a fixed list, so two policies evaluated
with the same settings meet exactly the same initial states.

Output per evaluation directory: ``report.json`` (per task and policy: success rate with a 95% Wilson
interval, episodes, mean episode length, inference ms per chunk), ``summary.md``, a success-vs-checkpoint
plot when several checkpoints of one run are given, and MP4 videos of the first few episodes.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robolearn.config import read_yaml_mapping

EVAL_SEED_BASE = 1_000_000  # far from the recording seeds (0, 1, 2, ...), so eval states are unseen
VIDEO_CAMERA = "agentview"
VIDEO_SIZE = 128


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a success rate; sane at 0/n and n/n, unlike the normal approximation."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def eval_seeds(episodes: int, base: int = EVAL_SEED_BASE) -> list[int]:
    return list(range(base, base + episodes))


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint directory, or a training run directory (its newest checkpoint)."""
    p = Path(path)
    if (p / "config.json").is_file():
        return p
    ckpts = p / "checkpoints"
    if ckpts.is_dir():
        if (ckpts / "last" / "config.json").is_file():
            return ckpts / "last"
        steps = sorted((c for c in ckpts.iterdir() if (c / "config.json").is_file()), key=lambda c: c.name)
        if steps:
            return steps[-1]
    raise FileNotFoundError(
        f"no checkpoint at {p}: expected a checkpoint directory or a run with checkpoints/"
    )


@dataclass
class EpisodeResult:
    seed: int
    success: bool
    length: int
    inference_ms: list[float] = field(default_factory=list)
    video: str | None = None


def _policy_cameras(policy: Any) -> tuple[list[str], int, bool]:
    """Cameras, image size and depth the policy's observation keys ask for."""
    cams, size, depth = [], 0, False
    for key, spec in policy.shape_meta.obs.items():
        if spec.kind == "rgb" and key.endswith("_image"):
            cam = key[: -len("_image")]
        elif spec.kind == "depth" and key.endswith("_depth"):
            cam, depth = key[: -len("_depth")], True
        else:
            continue
        if cam not in cams:
            cams.append(cam)
        size = spec.shape[-1]
    return cams, size or 84, depth


def check_policy_fits_env(checkpoint: str | os.PathLike, task: str) -> None:
    """Refuse, before starting workers, a checkpoint whose low-dim inputs the task's env does not give."""
    from robolearn.policies.checkpoint import read_checkpoint_meta
    from robolearn.sim.env import lowdim_shapes

    want = {k: tuple(v["shape"]) for k, v in read_checkpoint_meta(checkpoint)["shape_meta"]["obs"].items()
            if v.get("kind", "lowdim") == "lowdim"}
    have = lowdim_shapes(task)
    for key, shape in want.items():
        if key not in have:
            raise ValueError(f"{checkpoint}: the policy reads {key!r}, which task {task!r} does not observe; "
                             f"it observes {', '.join(have)}")
        if have[key] != shape:
            raise ValueError(
                f"{checkpoint}: the policy reads {key!r} of shape {list(shape)}, task {task!r} gives "
                f"{list(have[key])}; the store it was trained on was recorded with another "
                f"observation layout (older robolearn?): re-record the demonstrations and retrain")


def obs_to_input(
    history: Sequence[dict[str, np.ndarray]], policy: Any, depth_scale: float = 0.001
) -> dict[str, Any]:
    """Stack the last observations the way the training dataset yields them, batch of one."""
    import torch

    out = {}
    for key, spec in policy.shape_meta.obs.items():
        x = np.stack([h[key] for h in history])
        if spec.kind == "rgb":
            t = torch.from_numpy(x).permute(0, 3, 1, 2).float().div_(255.0)
        elif spec.kind == "depth":
            t = torch.from_numpy(x.astype(np.float32))[:, None].mul_(depth_scale)
        else:
            t = torch.from_numpy(x.astype(np.float32))
        out[key] = t[None]
    return out


class _Worker:
    """One process: a policy and an environment, reused across that process's episodes."""

    def __init__(
        self, checkpoint: str, task: str, inference_steps: int | None, video_dir: str | None
    ) -> None:
        import torch

        from robolearn.policies.checkpoint import load_policy
        from robolearn.sim.env import make_env

        torch.set_num_threads(1)  # one core per environment process
        overrides = {"num_inference_steps": inference_steps} if inference_steps else None
        self.policy = load_policy(checkpoint, overrides=overrides)
        cams, size, depth = _policy_cameras(self.policy)
        self.env = make_env(task, cameras=cams, image_size=size, depth=depth)
        self.video_env = make_env(task, cameras=[VIDEO_CAMERA], image_size=VIDEO_SIZE) if video_dir else None
        self.video_dir = video_dir

    def run(self, seed: int, record_video: bool) -> EpisodeResult:
        import torch

        env, policy = self.env, self.policy
        obs, _ = env.reset(seed=seed)
        history: deque = deque([obs] * policy.n_obs_steps, maxlen=policy.n_obs_steps)
        gen = torch.Generator().manual_seed(seed)
        frames, timings, steps, success = [], [], 0, False
        while steps < env.horizon and not success:
            t0 = time.perf_counter()
            chunk = policy.predict_action(
                obs_to_input(history, policy, getattr(env, "depth_scale", 0.001)), generator=gen
            )
            timings.append((time.perf_counter() - t0) * 1e3)
            for action in policy.executable_actions(chunk)[0].cpu().numpy():
                if record_video and self.video_env is not None:
                    frames.append(self.video_env.render_state(env.get_state())[f"{VIDEO_CAMERA}_image"])
                obs, _, terminated, truncated, info = env.step(action)
                history.append(obs)
                steps += 1
                success = bool(info.get("success"))
                if success or terminated or truncated or steps >= env.horizon:
                    break
        video = None
        if record_video and frames:
            video = str(
                Path(self.video_dir) / f"{env.task.name}_seed{seed}_{'success' if success else 'failure'}.mp4"
            )
            write_mp4(video, frames, fps=env.control_freq)
        return EpisodeResult(seed=seed, success=success, length=steps, inference_ms=timings, video=video)

    def close(self) -> None:
        self.env.close()
        if self.video_env is not None:
            self.video_env.close()


_WORKER: _Worker | None = None


def _init_worker(*args: Any) -> None:
    global _WORKER
    _WORKER = _Worker(*args)


def _run_one(job: tuple[int, bool]) -> EpisodeResult:
    assert _WORKER is not None
    return _WORKER.run(*job)


def write_mp4(path: str, frames: Sequence[np.ndarray], fps: float = 20.0) -> None:
    import cv2

    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"cannot write video {path}: OpenCV has no MP4 encoder")
    for f in frames:
        writer.write(np.ascontiguousarray(f[..., ::-1]))
    writer.release()


def evaluate(
    checkpoint: str | os.PathLike,
    task: str,
    episodes: int = 50,
    n_envs: int = 2,
    videos: int = 2,
    out_dir: str | os.PathLike | None = None,
    seed_base: int = EVAL_SEED_BASE,
    inference_steps: int | None = None,
) -> dict[str, Any]:
    """Success rate of one checkpoint on one task over a fixed list of seeds."""
    from robolearn.sim.tasks import load_task

    task_cfg = load_task(task)  # fail fast on an unknown task, before starting processes
    ckpt = resolve_checkpoint(checkpoint)
    if episodes < 1:
        raise ValueError(f"--episodes must be at least 1, got {episodes}")
    video_dir = None
    if out_dir is not None and videos > 0:
        video_dir = Path(out_dir) / "videos" / f"{task_cfg.name}_{_label(ckpt)}"
        video_dir.mkdir(parents=True, exist_ok=True)
    check_policy_fits_env(ckpt, task)  # here: an error inside a pool initializer would hang the pool
    seeds = eval_seeds(episodes, seed_base)
    jobs = [(s, i < videos) for i, s in enumerate(seeds)]
    args = (str(ckpt), task, inference_steps, str(video_dir) if video_dir else None)
    t0 = time.perf_counter()
    n_envs = max(1, min(n_envs, episodes))
    if n_envs == 1:
        worker = _Worker(*args)
        try:
            results = [worker.run(*j) for j in jobs]
        finally:
            worker.close()
    else:
        with mp.get_context("spawn").Pool(n_envs, initializer=_init_worker, initargs=args) as pool:
            results = pool.map(_run_one, jobs, chunksize=1)
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
        "inference_ms_per_chunk": float(np.median(timings)) if timings else None,
        "seeds": [seed_base, seed_base + episodes - 1],
        "wall_seconds": time.perf_counter() - t0,
        "videos": [r.video for r in results if r.video],
        "per_episode": [asdict(r) | {"inference_ms": None} for r in results],
    }


def _label(ckpt: Path) -> str:
    parts = ckpt.parts
    return "_".join(parts[-3:]).replace("checkpoints_", "") if len(parts) >= 3 else ckpt.name


@dataclass
class SuiteConfig:
    name: str
    tasks: list[str]
    policies: list[str]
    episodes: int = 50
    n_envs: int = 2
    videos: int = 2
    seed_base: int = EVAL_SEED_BASE


def load_suite(path: str | os.PathLike) -> SuiteConfig:
    p = Path(path)
    raw = read_yaml_mapping(p, "suite file", "tasks and policies")
    allowed = set(SuiteConfig.__dataclass_fields__)
    unknown = set(raw) - allowed
    if unknown:
        raise ValueError(f"{p}: unknown field(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    raw.setdefault("name", p.stem)
    for key in ("tasks", "policies"):
        if (
            not isinstance(raw.get(key), list)
            or not raw[key]
            or not all(isinstance(x, str) for x in raw[key])
        ):
            raise ValueError(f"{p}: field {key!r} must be a non-empty list of strings")
    for key in ("episodes", "n_envs", "videos", "seed_base"):
        if key in raw and (not isinstance(raw[key], int) or isinstance(raw[key], bool) or raw[key] < 0):
            raise ValueError(f"{p}: field {key!r} must be a non-negative integer")
    base = p.parent
    # policy paths are relative to the suite file's folder or the working directory
    raw["policies"] = [
        str(x if Path(x).is_absolute() or Path(x).exists() else base / x) for x in raw["policies"]
    ]
    return SuiteConfig(**raw)


def run_suite(suite: SuiteConfig, out_dir: str | os.PathLike) -> dict[str, Any]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for policy in suite.policies:
        for task in suite.tasks:
            results.append(
                evaluate(policy, task, suite.episodes, suite.n_envs, suite.videos, out, suite.seed_base)
            )
    return write_report(results, out, suite.name)


def write_report(
    results: list[dict[str, Any]], out_dir: str | os.PathLike, name: str = "eval"
) -> dict[str, Any]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {"name": name, "results": results}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    lines = [
        f"# Evaluation: {name}",
        "",
        "| task | checkpoint | success | 95% CI | episodes | mean length | ms/chunk |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ms = f"{r['inference_ms_per_chunk']:.1f}" if r["inference_ms_per_chunk"] is not None else "-"
        lines.append(
            f"| {r['task']} | `{r['checkpoint']}` | {r['success_rate']:.2f} | "
            f"[{r['wilson95'][0]:.2f}, {r['wilson95'][1]:.2f}] | {r['episodes']} | "
            f"{r['mean_episode_length']:.1f} | {ms} |"
        )
    plot = _plot_checkpoints(results, out)
    if plot:
        lines += ["", f"![success vs checkpoint]({plot.name})"]
    videos = [v for r in results for v in r["videos"]]
    if videos:
        lines += ["", "Videos: " + ", ".join(f"[{Path(v).name}]({Path(v).relative_to(out)})" for v in videos)]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    return report


def _plot_checkpoints(results: list[dict[str, Any]], out: Path) -> Path | None:
    """Success vs checkpoint step, one line per task, when a run contributes several checkpoints."""
    import re

    series: dict[str, list[tuple[int, float, float, float]]] = {}
    for r in results:
        m = re.search(r"step[_-]?(\d+)", Path(r["checkpoint"]).name)
        if m:
            lo, hi = r["wilson95"]
            series.setdefault(r["task"], []).append((int(m.group(1)), r["success_rate"], lo, hi))
    if not any(len(v) > 1 for v in series.values()):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for task, pts in sorted(series.items()):
        pts.sort()
        x = [p[0] for p in pts]
        ax.plot(x, [p[1] for p in pts], marker="o", label=task)
        ax.fill_between(x, [p[2] for p in pts], [p[3] for p in pts], alpha=0.2)
    ax.set_xlabel("training step")
    ax.set_ylabel("success rate")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    path = out / "success_vs_checkpoint.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
