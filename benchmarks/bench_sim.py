"""Benchmark the simulated tasks: scripted-expert success rates and env / rendering throughput.

    python benchmarks/bench_sim.py [--tasks lift,can,square,stack] [--seeds 100] [--out benchmarks/results/sim.json]

Per task: expert success over reset seeds 0..N-1 (expert rng seeded with the same number) with mean
episode length, then, one after another in this process so the numbers are comparable: env steps/s
without cameras, steps/s with 2 cameras (agentview, robot0_eye_in_hand) rendered online at 84x84, and
re-rendering those cameras from saved states (renders/s, one render = both cameras).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from importlib.metadata import version
from pathlib import Path

import numpy as np

import robolearn  # noqa: F401  (picks the headless GL backend before mujoco is imported)

CAMERAS = ("agentview", "robot0_eye_in_hand")


def run_expert(task: str, seeds: list[int]) -> list[dict]:
    """Roll out the scripted expert once per seed; stop on success or at the horizon."""
    from robolearn.sim import load_task, make_env
    from robolearn.sim.experts import make_expert

    env = make_env(task)
    out = []
    for seed in seeds:
        expert = make_expert(load_task(task).expert, np.random.default_rng(seed))
        obs, info = env.reset(seed=seed)
        expert.reset(env)
        steps, success = 0, False
        while True:
            obs, _, _, truncated, info = env.step(expert.act(env, obs))
            steps += 1
            if info["success"]:
                success = True
                break
            if truncated:
                break
        out.append({"seed": seed, "success": success, "steps": steps})
    env.close()
    return out


def expert_stats(task: str, n_seeds: int, workers: int) -> dict:
    seeds = list(range(n_seeds))
    chunks = [seeds[i::workers] for i in range(workers) if seeds[i::workers]]
    t0 = time.perf_counter()
    if len(chunks) == 1:
        results = run_expert(task, chunks[0])
    else:
        with ProcessPoolExecutor(len(chunks)) as pool:
            results = [r for part in pool.map(run_expert, [task] * len(chunks), chunks) for r in part]
    wall = time.perf_counter() - t0
    results.sort(key=lambda r: r["seed"])
    ok = [r["steps"] for r in results if r["success"]]
    return {
        "episodes": len(results),
        "successes": len(ok),
        "success_rate": len(ok) / max(len(results), 1),
        "mean_episode_length": float(np.mean(ok)) if ok else None,
        "max_episode_length": int(max(ok)) if ok else None,
        "failed_seeds": [r["seed"] for r in results if not r["success"]],
        "expert_wall_s": round(wall, 1),
        "expert_workers": len(chunks),
    }


def speed_stats(task: str, min_steps: int) -> dict:
    """Replay the expert's actions (seed 0, repeated episodes) with and without cameras."""
    from robolearn.sim import load_task, make_env
    from robolearn.sim.experts import make_expert

    # Record actions from expert episodes (no cameras) until we have enough steps.
    env = make_env(task)
    episodes: list[tuple[int, list[np.ndarray]]] = []
    total, seed = 0, 0
    while total < min_steps:
        expert = make_expert(load_task(task).expert, np.random.default_rng(seed))
        obs, _ = env.reset(seed=seed)
        expert.reset(env)
        actions = []
        for _ in range(env.horizon):
            a = expert.act(env, obs)
            actions.append(a)
            obs, _, _, trunc, info = env.step(a)
            if info["success"] or trunc:
                break
        episodes.append((seed, actions))
        total += len(actions)
        seed += 1

    def replay(e, collect_states: bool) -> tuple[float, list[np.ndarray]]:
        states, elapsed = [], 0.0
        for s, actions in episodes:
            e.reset(seed=s)
            t0 = time.perf_counter()
            for a in actions:
                e.step(a)
                if collect_states:
                    states.append(e.get_state())
            elapsed += time.perf_counter() - t0
        return total / elapsed, states

    no_cam, states = replay(env, collect_states=True)
    env.close()
    cam_env = make_env(task, cameras=CAMERAS, image_size=84)
    with_cam, _ = replay(cam_env, collect_states=False)
    t0 = time.perf_counter()
    for st in states:
        cam_env.render_state(st)
    rerender = len(states) / (time.perf_counter() - t0)
    cam_env.close()
    return {
        "speed_steps": total,
        "steps_per_s_no_camera": round(no_cam, 1),
        "steps_per_s_2cam_84": round(with_cam, 1),
        "rerender_per_s_2cam_84": round(rerender, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="lift,can,square,stack")
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--out", default="benchmarks/results/sim.json")
    ap.add_argument(
        "--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes for expert rollouts"
    )
    ap.add_argument("--speed-steps", type=int, default=300, help="env steps per throughput measurement")
    args = ap.parse_args()
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]

    report: dict = {
        "meta": {
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "seeds": args.seeds,
            "cameras": list(CAMERAS),
            "image_size": 84,
            "cpu_count": os.cpu_count(),
            "machine": platform.processor() or platform.machine(),
            "mujoco": version("mujoco"),
            "robosuite": version("robosuite"),
            "mujoco_gl": os.environ.get("MUJOCO_GL"),
        },
        "tasks": {},
    }
    for task in tasks:
        stats = expert_stats(task, args.seeds, args.workers)
        stats.update(speed_stats(task, args.speed_steps))
        report["tasks"][task] = stats
        print(
            f"{task:7s} success {stats['successes']:3d}/{stats['episodes']} ({stats['success_rate']:.0%}) "
            f"mean len {stats['mean_episode_length'] or 0:6.1f} | steps/s: no cam {stats['steps_per_s_no_camera']:6.1f}, "
            f"2 cams online {stats['steps_per_s_2cam_84']:6.1f} | re-render {stats['rerender_per_s_2cam_84']:6.1f}/s"
            + (f" | failed seeds {stats['failed_seeds']}" if stats["failed_seeds"] else ""),
            flush=True,
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
