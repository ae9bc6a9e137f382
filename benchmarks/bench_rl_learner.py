"""Cost of one residual-RL gradient update (critic step + actor step every policy_delay), fp32 against
bf16 autocast (`mixed_precision: bf16`), for critic ensembles of several sizes, side by side in one run.

    python benchmarks/bench_rl_learner.py                      # n 2 and 10, hidden 128 and 256, 1 thread
    python benchmarks/bench_rl_learner.py --critics 2,10 --hidden 128 --threads 1 --updates 200

The shapes are the can task's (obs 46 features, 7 action dimensions, batch 256). Each cell alternates
fp32 and bf16 in rounds, so load on the machine hits both alike; the figure is the median over rounds.
Writes ``benchmarks/results/bench_rl_learner.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_json  # noqa: E402


def _learner(n: int, hidden: int, mp: str, obs_dim: int, action_dim: int) -> Any:
    import torch

    from robolearn.rl.residual_td3 import ResidualLearner, load_finetune_recipe

    torch.manual_seed(0)
    cfg = load_finetune_recipe("residual_td3", [f"critic.n={n}", f"critic.hidden={hidden}", "actor.hidden=128",
                                                f"mixed_precision={mp}"])
    return ResidualLearner(cfg, obs_dim, action_dim)


def _batch(rng: np.random.Generator, b: int, obs_dim: int, action_dim: int) -> dict[str, np.ndarray]:
    o, o2 = rng.normal(size=(b, obs_dim)), rng.normal(size=(b, obs_dim))
    return {"obs": o, "base": rng.uniform(-1, 1, (b, action_dim)), "residual": rng.uniform(-0.1, 0.1, (b, action_dim)),
            "reward": rng.uniform(0, 1, b), "discount": np.full(b, 0.97), "next_obs": o2,
            "next_base": rng.uniform(-1, 1, (b, action_dim))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--critics", default="2,10")
    ap.add_argument("--hidden", default="128,256")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--updates", type=int, default=100, help="updates per round and precision")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    obs_dim, action_dim = 46, 7
    rng = np.random.default_rng(0)
    batches = [_batch(rng, args.batch, obs_dim, action_dim) for _ in range(16)]
    cells = []
    for n in (int(x) for x in args.critics.split(",")):
        for h in (int(x) for x in args.hidden.split(",")):
            learners = {mp: _learner(n, h, mp, obs_dim, action_dim) for mp in ("no", "bf16")}
            ms: dict[str, list[float]] = {mp: [] for mp in learners}
            for lrn in learners.values():  # warm-up: first calls allocate
                for i in range(5):
                    lrn.update(batches[i], train_actor=i % 2 == 1)
            for _ in range(args.rounds):
                for mp, lrn in learners.items():
                    t = time.perf_counter()
                    for i in range(args.updates):
                        lrn.update(batches[i % len(batches)], train_actor=i % 2 == 1)
                    ms[mp].append((time.perf_counter() - t) / args.updates * 1000)
            fp32, bf16 = statistics.median(ms["no"]), statistics.median(ms["bf16"])
            cell = {"critics": n, "hidden": h, "fp32_ms": round(fp32, 2), "bf16_ms": round(bf16, 2),
                    "speedup": round(fp32 / bf16, 2), "rounds_ms": ms}
            cells.append(cell)
            print(f"critics {n:3d} hidden {h:5d}: fp32 {fp32:7.2f} ms  bf16 {bf16:7.2f} ms  "
                  f"bf16 speed-up x{fp32 / bf16:.2f}  (per update, {args.threads} thread(s))", flush=True)
    cpu_bf16 = "avx512_bf16" in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else None
    write_json("bench_rl_learner", {"machine": machine(), "cpu_avx512_bf16": cpu_bf16,
                                    "threads": args.threads, "batch": args.batch, "cells": cells}, args.out)


if __name__ == "__main__":
    main()
