"""`robolearn quickstart`: the simulated pipeline end to end on a CPU.

collect expert demonstrations -> train a diffusion policy -> evaluate it in simulation -> report.
Reward fitting and residual RL join here as they land.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from robolearn.data.inspect import format_info, info
from robolearn.errors import UserError
from robolearn.record import RecordConfig, record

# Found by robolearn.resources: ./policies/quickstart.yaml if the current directory has one, else the
# built-in recipe (the checkout's policies/, or the copy inside an installed wheel).
RECIPE = "quickstart"


def quickstart(out: str | os.PathLike, episodes: int = 100, seed: int = 0, task: str = "lift",
               train_steps: int | None = None, eval_episodes: int = 50, recipe: str | os.PathLike = RECIPE,
               overrides: list[str] | None = None) -> dict:
    from robolearn.eval import evaluate, write_report
    from robolearn.policies.train import load_recipe, train
    from robolearn.sim import load_task

    # A bad task, recipe or override fails now, not after recording.
    overrides = [*(overrides or []), *([f"train.steps={train_steps}"] if train_steps else [])]
    load_task(task)
    load_recipe(recipe, overrides)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} is not empty; choose a new --out for the quickstart")
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    store = out / "demos.zarr"

    t0 = time.perf_counter()
    print(f"[1/3] recording {episodes} expert demonstrations of sim:{task} into {store}", flush=True)
    summary = record(RecordConfig(rig=f"sim:{task}", out=str(store), episodes=episodes, seed=seed))
    timings["record_s"] = time.perf_counter() - t0
    print(f"      {summary.committed} episodes, {summary.steps} steps in {summary.seconds:.1f}s "
          f"({summary.steps_per_second:.0f} steps/s)", flush=True)
    print(format_info(info(store)))

    t0 = time.perf_counter()
    rec = load_recipe(recipe, overrides)
    print(f"[2/3] training {rec.policy['type']} ({rec.train.steps} steps) into {out / 'run'}", flush=True)
    result = train(rec, store, out / "run")
    timings["train_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    print(f"[3/3] evaluating on {eval_episodes} fixed seeds of {task}", flush=True)
    ev = evaluate(out / "run", task, episodes=eval_episodes, videos=2, out_dir=out / "eval")
    write_report([ev], out / "eval", name=f"quickstart {task}")
    timings["eval_s"] = time.perf_counter() - t0

    plot = _plot_loss(out / "run" / "metrics.jsonl", out / "training_loss.png")
    report = {"task": task, "store": str(store), "store_info": info(store),
              "record": {k: v for k, v in summary.__dict__.items() if k != "episode_indices"},
              "train": result, "eval": {k: v for k, v in ev.items() if k != "per_episode"},
              "timings": timings, "plots": [str(plot)] if plot else []}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    lo, hi = ev["wilson95"]
    md = [f"# robolearn quickstart: {task}", "",
          f"- demonstrations: {summary.committed} ({summary.steps} steps), {timings['record_s']:.0f}s",
          f"- training: {result['steps']} steps, final loss {result['train_loss']:.4f}, {timings['train_s']:.0f}s",
          f"- evaluation: success **{ev['success_rate']:.2f}** (95% CI [{lo:.2f}, {hi:.2f}]) over {ev['episodes']} "
          f"episodes, {ev['inference_ms_per_chunk']:.0f} ms per action chunk, {timings['eval_s']:.0f}s",
          "", "![training loss](training_loss.png)" if plot else "",
          "", "Videos and per-episode results: [eval/summary.md](eval/summary.md)"]
    (out / "report.md").write_text("\n".join(md) + "\n")
    print(f"success {ev['success_rate']:.2f} [{lo:.2f}, {hi:.2f}] — report: {out / 'report.md'}")
    return report


def _plot_loss(metrics: Path, path: Path) -> Path | None:
    rows: list[dict[str, Any]] = [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.is_file() else []
    train_pts = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val_pts = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    if not train_pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(*zip(*train_pts, strict=True), label="train", alpha=0.8)
    if val_pts:
        ax.plot(*zip(*val_pts, strict=True), marker="o", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
