"""Inference time per action chunk on the CPU, same backbone, for every sampler.

DDPM-100, DDIM-16, flow with 10, 4 and 1 Euler steps, and the one-step MeanFlow. Timing does not
depend on the weights, so policies are built fresh from the low-dim recipe's shapes (lift: 19-d
observation, 7-d action, horizon 16); success rates of trained policies come from `robolearn eval`.

    python benchmarks/bench_inference.py [--backbone unet|transformer] [--repeats 30] [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, write_json  # noqa: E402

from robolearn.data.normalizer import KeyStats, Normalizer  # noqa: E402
from robolearn.policies.factory import make_policy  # noqa: E402
from robolearn.policies.shapes import ShapeMeta  # noqa: E402

OBS = {"robot0_eef_pos": 3, "robot0_eef_quat": 4, "robot0_gripper_qpos": 2, "object": 10}
VARIANTS = {
    "DDPM-100": {"type": "diffusion", "sampler": "ddpm", "num_inference_steps": 100},
    "DDIM-16": {"type": "diffusion", "sampler": "ddim", "num_inference_steps": 16},
    "flow-10": {"type": "flow", "num_inference_steps": 10},
    "flow-4": {"type": "flow", "num_inference_steps": 4},
    "flow-1": {"type": "flow", "num_inference_steps": 1},
    "meanflow-1": {"type": "meanflow", "num_inference_steps": 1},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="unet", choices=["unet", "transformer"])
    ap.add_argument("--down-dims", default="64,128,256", help="U-Net widths (the low-dim recipes' CPU size)")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 = one core per env process)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    meta = ShapeMeta(obs={k: {"shape": [d], "kind": "lowdim"} for k, d in OBS.items()}, action_dim=7)
    gen = torch.Generator().manual_seed(0)
    stats = {k: KeyStats.compute(torch.randn(64, d, generator=gen).numpy()) for k, d in {**OBS, "action": 7}.items()}
    obs = {k: torch.randn(1, 2, d, generator=gen) for k, d in OBS.items()}
    res = {"backbone": args.backbone, "threads": args.threads, "machine": machine(), "ms_per_chunk": {}}
    for name, cfg in VARIANTS.items():
        config = {**cfg, "backbone": args.backbone, "n_obs_steps": 2, "horizon": 16, "n_action_steps": 8,
                  "unet": {"down_dims": [int(x) for x in args.down_dims.split(",")]}}
        policy = make_policy(config, meta).eval()
        policy.set_normalizer(Normalizer(stats))
        for _ in range(3):
            policy.predict_action(obs)
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            policy.predict_action(obs)
            times.append((time.perf_counter() - t) * 1e3)
        res["ms_per_chunk"][name] = statistics.median(times)
        print(f"{name:12s} {res['ms_per_chunk'][name]:8.2f} ms/chunk (median of {args.repeats})", flush=True)
    speedup = res["ms_per_chunk"]["DDIM-16"] / res["ms_per_chunk"]["meanflow-1"]
    res["meanflow_speedup_vs_ddim16"] = speedup
    print(f"one-step MeanFlow is {speedup:.1f}x faster than DDIM-16 (target >= 10x)")
    write_json(f"inference_{args.backbone}", res, args.out)


if __name__ == "__main__":
    main()
