"""How much of its bound a trained residual uses: the deterministic actor of a run's last checkpoint on
states from the run's own replay buffer (normalised action units, per action dimension), beside the
executed residual (exploration noise included, what ``train/residual_abs`` logs).

    python benchmarks/rl_residual_size.py rl_can_sparse_v2ds5g rl_square_sparse_v3ds5g

Prints one block per run and writes ``benchmarks/results/rl_residual_size.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, write_json  # noqa: E402


def residual_size(run: Path, samples: int = 5000, seed: int = 0) -> dict[str, Any]:
    import torch
    from safetensors.torch import load_file

    from robolearn.rl.residual import ActorConfig, ResidualActor

    ckpt = run / "checkpoints" / "last"
    actor = ResidualActor(ActorConfig(**json.loads((ckpt / "residual.json").read_text())["actor"]))
    actor.load_state_dict(load_file(str(ckpt / "actor.safetensors")))
    replay = np.load(run / "replay.npz")
    n = int(replay["size"])
    idx = np.sort(np.random.default_rng(seed).choice(n, min(samples, n), replace=False))
    with torch.no_grad():
        res = actor(torch.from_numpy(replay["obs"][idx]).float(), torch.from_numpy(replay["base"][idx]).float())
    res = np.abs(res.numpy())
    bound = actor.bound.numpy()
    return {"states": len(idx), "bound": bound, "mean_abs": res.mean(0), "mean_abs_over_bound": res.mean(0) / bound,
            "p95_over_bound": np.percentile(res, 95, 0) / bound,
            "executed_mean_abs": np.abs(replay["residual"][idx]).mean(0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="run folders under benchmarks/results/rl_work (or paths)")
    ap.add_argument("--samples", type=int, default=5000)
    args = ap.parse_args()
    out: dict[str, Any] = {"machine": machine(), "runs": {}}
    for name in args.runs:
        run = Path(name) if Path(name).is_dir() else RESULTS / "rl_work" / name
        if not (run / "checkpoints" / "last" / "residual.json").is_file() or not (run / "replay.npz").is_file():
            ap.error(f"{run}: not a residual run with a checkpoint and a replay buffer; pass a bench_rl run folder")
        r = out["runs"][run.name] = residual_size(run, args.samples)
        print(f"{run.name} ({r['states']} states)")
        for k in ("bound", "mean_abs", "mean_abs_over_bound", "p95_over_bound", "executed_mean_abs"):
            print(f"  {k:20s} {np.round(r[k], 3)}")
    write_json("rl_residual_size", out)


if __name__ == "__main__":
    main()
