"""Evaluation episodes per minute: the batched runner (`robolearn eval`) vs a plain loop, same run.

An image flow policy (agentview + robot0_eye_in_hand 84x84, the flow_image recipe's networks) is
trained briefly on a few lift demonstrations (reused when there); its quality does not matter, only
that both sides run the same policy on the same seeds for the same episodes.

- plain loop: one robosuite env rendering both cameras every tick, the policy called once per chunk
  in the same process, with all the cores as torch threads (what `robolearn eval` did per process);
- runner: `robolearn.eval.evaluate`, worker processes each stepping a batch of rigs, one policy call
  per chunk boundary for the batch, cameras rendered only at the ticks a policy call reads.

    flock /tmp/robolearn-heavy.lock python benchmarks/bench_eval.py              # 2 cores: 2 workers x 4 envs
    python benchmarks/bench_eval.py --configs 2x2,2x4,2x8 --episodes 24 policy.unet.down_dims=[128,256,512]

Prints and writes benchmarks/results/bench_eval.json as each measurement finishes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, ensure_store, machine, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CAMERAS = ["agentview", "robot0_eye_in_hand"]
# The U-Net bench_policies.py trains on a CPU (the README's image-policy figure); the recipe's own is 4x larger.
CPU_OVERRIDES = ["policy.unet.down_dims=[64,128,256]"]


def ensure_policy(store: Path, run: Path, steps: int, overrides: list[str]) -> Path:
    from robolearn.policies.train import load_recipe, train

    if (run / "checkpoints" / "last" / "config.json").is_file():
        return run
    if run.exists():
        import shutil

        shutil.rmtree(run)
    recipe = load_recipe(ROOT / "policies" / "flow_image.yaml",
                         [f"train.steps={steps}", "train.batch_size=16", "train.warmup_steps=20",
                          f"train.val_every={steps}", f"train.ckpt_every={steps}", "train.num_workers=0",
                          "data.val_ratio=0", *overrides])
    print(f"training flow_image for {steps} steps into {run} ...", flush=True)
    train(recipe, store, run, progress=False)
    return run


def plain_loop(ckpt: Path, seeds: list[int], threads: int) -> dict[str, Any]:
    """One env with live cameras, the policy once per chunk: the loop `robolearn eval` ran per process."""
    import numpy as np
    import torch

    from robolearn.data.tensors import to_tensor
    from robolearn.policies.checkpoint import load_policy
    from robolearn.sim.env import make_env

    torch.set_num_threads(threads)
    policy = load_policy(ckpt)
    feats = policy.shape_meta.obs
    env = make_env("lift", cameras=CAMERAS, image_size=84)
    t0 = time.perf_counter()
    out, infer_ms = [], []
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        history = deque([obs] * policy.n_obs_steps, maxlen=policy.n_obs_steps)
        gen = torch.Generator().manual_seed(seed)
        steps, success = 0, False
        while steps < env.horizon and not success:
            batch = {k: to_tensor(f, np.stack([h[k] for h in history])[None], k) for k, f in feats.items()}
            t1 = time.perf_counter()
            chunk = policy.predict_action(batch, generator=gen)
            infer_ms.append((time.perf_counter() - t1) * 1e3)
            for action in policy.executable_actions(chunk)[0].numpy():
                obs, _, terminated, truncated, info = env.step(action)
                history.append(obs)
                steps += 1
                success = bool(info["success"])
                if success or terminated or truncated:
                    break
        out.append({"seed": seed, "success": success, "length": steps})
    wall = time.perf_counter() - t0
    env.close()
    return {"episodes": len(seeds), "wall_seconds": wall, "episodes_per_minute": len(seeds) / wall * 60,
            "success_rate": float(np.mean([e["success"] for e in out])),
            "mean_episode_length": float(np.mean([e["length"] for e in out])),
            "inference_ms_per_chunk": float(np.median(infer_ms)), "per_episode": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(RESULTS / "bench_eval_work"), help="store and run cache")
    ap.add_argument("--demos", type=int, default=10)
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--episodes", type=int, default=16)
    ap.add_argument("--cores", type=int, default=2, help="thread budget of both sides")
    ap.add_argument("--configs", default="2x4", help="runner settings, workers x total envs, comma-separated")
    ap.add_argument("overrides", nargs="*", default=None, metavar="key=value",
                    help=f"recipe overrides (default {' '.join(CPU_OVERRIDES)}: the U-Net of the README's image figure)")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/bench_eval.json)")
    args = ap.parse_args()

    from robolearn.eval import eval_seeds, evaluate

    work = Path(args.work)
    store = ensure_store(work / "lift_img.zarr", args.demos, CAMERAS, 84)
    overrides = args.overrides or CPU_OVERRIDES
    tag = "_".join(o.split("=", 1)[1] for o in overrides).translate(str.maketrans("", "", "[], "))
    run = ensure_policy(store, work / f"flow_image_{args.train_steps}_{tag}", args.train_steps, overrides)
    ckpt = run / "checkpoints" / "last"
    seeds = eval_seeds(args.episodes)
    res: dict[str, Any] = {"machine": machine(), "cores": args.cores, "episodes": args.episodes,
                           "train_steps": args.train_steps, "overrides": overrides,
                           "seeds": [seeds[0], seeds[-1]], "checkpoint": str(ckpt), "runner": {}}

    def save() -> None:
        write_json("bench_eval", res, args.out)

    print(f"plain loop: 1 env, {args.cores} threads, {args.episodes} episodes ...", flush=True)
    load0 = os.getloadavg()[0]
    res["plain"] = plain_loop(ckpt, seeds, args.cores)
    res["plain"]["loadavg_1min"] = [load0, os.getloadavg()[0]]  # other work on the machine, before/after
    print(f"  {res['plain']['episodes_per_minute']:.2f} episodes/min, success {res['plain']['success_rate']:.2f}, "
          f"mean length {res['plain']['mean_episode_length']:.0f}", flush=True)
    save()
    for cfg in args.configs.split(","):
        w, n = (int(x) for x in cfg.split("x"))
        print(f"runner: {w} workers x {n} envs ...", flush=True)
        load0 = os.getloadavg()[0]
        r = evaluate(ckpt, "lift", episodes=args.episodes, n_envs=n, workers=w, videos=0)
        r["loadavg_1min"] = [load0, os.getloadavg()[0]]
        r.pop("per_episode")
        r["speedup_vs_plain"] = r["episodes_per_minute"] / res["plain"]["episodes_per_minute"]
        res["runner"][cfg] = r
        print(f"  {r['episodes_per_minute']:.2f} episodes/min ({r['speedup_vs_plain']:.2f}x plain), success "
              f"{r['success_rate']:.2f}, mean length {r['mean_episode_length']:.0f}, "
              f"{r['inference_ms_per_chunk']:.0f} ms per policy call", flush=True)
        save()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
