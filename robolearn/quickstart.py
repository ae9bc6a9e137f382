"""`robolearn quickstart`: the simulated pipeline end to end on a CPU.

collect a few expert demonstrations -> train a one-step base policy -> evaluate it -> record perturbed
failures and fit the progress reward -> residual RL on the base with the dense reward -> evaluate
base + residual on the same seeds -> report with success before and after and the learning curve.
``rl_steps=0`` stops after the base's evaluation.
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


REWARD_CAMERA = "agentview"
REWARD_SIZE = 64


def quickstart(out: str | os.PathLike, episodes: int = 20, seed: int = 0, task: str = "lift",
               train_steps: int | None = None, eval_episodes: int = 30, recipe: str | os.PathLike = RECIPE,
               overrides: list[str] | None = None, rl_steps: int = 4000, failures: int = 10,
               reward_steps: int = 800, rl_overrides: list[str] | None = None) -> dict:
    from robolearn.eval import evaluate, write_report
    from robolearn.policies.train import load_recipe, train
    from robolearn.sim import load_task

    # A bad task, recipe or override fails now, not after recording.
    overrides = [*(overrides or []), *([f"train.steps={train_steps}"] if train_steps else [])]
    load_task(task)
    load_recipe(recipe, overrides)
    if rl_steps:
        from robolearn.rl import load_finetune_recipe

        load_finetune_recipe("residual_td3", _rl_overrides(rl_steps, eval_episodes, rl_overrides))
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} is not empty; choose a new --out for the quickstart")
    out.mkdir(parents=True, exist_ok=True)
    import torch

    # One thread for these small networks: on 2 cores a second one gains little, and when the cores are
    # shared it waits on the other at every op (a training step measured 5x slower with 2 than with 1).
    torch.set_num_threads(1)
    timings: dict[str, float] = {}
    store = out / "demos.zarr"

    t0 = time.perf_counter()
    n_stages = 5 if rl_steps else 3
    print(f"[1/{n_stages}] recording {episodes} expert demonstrations of sim:{task} into {store}", flush=True)
    # The reward model reads one camera; the policy does not, so it is rendered only for kept episodes.
    cams = [REWARD_CAMERA] if rl_steps else []
    summary = record(RecordConfig(rig=f"sim:{task}", out=str(store), episodes=episodes, seed=seed, cameras=cams,
                                  image_size=REWARD_SIZE))
    timings["record_s"] = time.perf_counter() - t0
    print(f"      {summary.committed} episodes, {summary.steps} steps in {summary.seconds:.1f}s "
          f"({summary.steps_per_second:.0f} steps/s)", flush=True)
    store_info = info(store)  # the demonstrations (failures for the reward model come later)
    print(format_info(store_info))

    t0 = time.perf_counter()
    rec = load_recipe(recipe, overrides)
    print(f"[2/{n_stages}] training {rec.policy['type']} ({rec.train.steps} steps) into {out / 'run'}", flush=True)
    result = train(rec, store, out / "run")
    timings["train_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    print(f"[3/{n_stages}] evaluating on {eval_episodes} fixed seeds of {task}", flush=True)
    ev = evaluate(out / "run", task, episodes=eval_episodes, videos=2, out_dir=out / "eval")
    write_report([ev], out / "eval", name=f"quickstart {task}")
    timings["eval_s"] = time.perf_counter() - t0
    rl = _reward_and_rl(out, task, store, seed, ev["success_rate"], eval_episodes, rl_steps, failures, reward_steps,
                        rl_overrides, timings, n_stages) if rl_steps else None

    plot = _plot_loss(out / "run" / "metrics.jsonl", out / "training_loss.png")
    report = {"task": task, "store": str(store), "store_info": store_info,
              "record": {k: v for k, v in summary.__dict__.items() if k != "episode_indices"},
              "train": result, "eval": {k: v for k, v in ev.items() if k != "per_episode"},
              "timings": timings, "plots": [str(plot)] if plot else [], "rl": rl}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    lo, hi = ev["wilson95"]
    md = [f"# robolearn quickstart: {task}", "",
          f"- demonstrations: {summary.committed} ({summary.steps} steps), {timings['record_s']:.0f}s",
          f"- training: {result['steps']} steps, final loss {result['train_loss']:.4f}, {timings['train_s']:.0f}s",
          f"- evaluation: success **{ev['success_rate']:.2f}** (95% CI [{lo:.2f}, {hi:.2f}]) over {ev['episodes']} "
          f"episodes, {ev['inference_ms_per_chunk']:.0f} ms per action chunk, {timings['eval_s']:.0f}s",
          *(_rl_lines(rl, timings) if rl else []),
          "", "![training loss](training_loss.png)" if plot else "",
          "", "Videos and per-episode results: [eval/summary.md](eval/summary.md)"]
    (out / "report.md").write_text("\n".join(md) + "\n")
    if rl:
        print(f"success {rl['base_success']:.2f} (base) -> {rl['success']:.2f} (base + residual) on the same "
              f"{eval_episodes} seeds — report: {out / 'report.md'}")
    else:
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
    return _save_plot(fig, ax, path)


def _save_plot(fig: Any, ax: Any, path: Path) -> Path:
    """Grid, legend and layout shared by the report's plots; the figure is closed once written."""
    import matplotlib.pyplot as plt

    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _rl_overrides(rl_steps: int, eval_episodes: int, extra: list[str] | None) -> list[str]:
    # Evaluated halfway and at the end, on the base's evaluation seeds: evaluations cost as much as the
    # learning here, and 8 envs batch the base's calls better than 4. Smaller networks and batches than the
    # benchmark recipe keep the updates cheap on 2 cores.
    every = max(500, rl_steps // 2)
    return [f"eval.episodes={eval_episodes}", f"eval.every={every}", "env.n_envs=8", "learning_starts=500",
            "critic_warmup=1500",
            "ckpt_every=2500", "batch_size=128", "actor.hidden=128", "critic.hidden=128",
            "reward.force=true", f"reward.image_size={REWARD_SIZE}", *(extra or [])]


def _reward_and_rl(out: Path, task: str, store: Path, seed: int, base_success: float, eval_episodes: int,
                   rl_steps: int, failures: int, reward_steps: int, rl_overrides: list[str] | None, timings: dict[str, float],
                   n_stages: int) -> dict[str, Any]:
    """Failures on demand + the progress network, then residual RL with the dense reward."""
    from robolearn.rewards.progress_net import FitConfig, fit
    from robolearn.rl import finetune

    t0 = time.perf_counter()
    print(f"[4/{n_stages}] recording {failures} perturbed (stalled) attempts and fitting the progress reward",
          flush=True)
    # Appended after the base was trained, so they never enter behaviour cloning; RL's demonstrations
    # are the store's successful episodes only.
    record(RecordConfig(rig=f"sim:{task}", out=str(store), episodes=failures, seed=seed + 10_000,
                        cameras=[REWARD_CAMERA], image_size=REWARD_SIZE, perturb="stall"))
    scores = fit(FitConfig(data=str(store), out=str(out / "reward"), steps=reward_steps,
                           camera=REWARD_CAMERA, image_size=REWARD_SIZE, seed=seed), progress=False)
    timings["reward_s"] = time.perf_counter() - t0
    print(f"      progress reward: held-out VOC {_fmt(scores.get('voc'))}, AUROC {_fmt(scores.get('auroc'))}",
          flush=True)

    t0 = time.perf_counter()
    print(f"[5/{n_stages}] residual RL on the base: {rl_steps} env steps with the dense reward", flush=True)
    res = finetune(out / "run", f"sim:{task}", out / "rl", steps=rl_steps, reward=str(out / "reward"),
                   overrides=_rl_overrides(rl_steps, eval_episodes, rl_overrides), progress=True,
                   base_success=base_success)
    timings["rl_s"] = time.perf_counter() - t0
    plot = _plot_curve(res["curve"], out / "rl_curve.png")
    return {**{k: v for k, v in res.items()}, "reward_scores": {k: scores.get(k) for k in ("voc", "auroc")},
            "plot": str(plot)}


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.2f}"


def _rl_lines(rl: dict[str, Any], timings: dict[str, float]) -> list[str]:
    curve = ", ".join(f"{r['env_steps']}: {r['success']:.2f}" for r in rl["curve"])
    return [f"- progress reward: held-out VOC {_fmt(rl['reward_scores']['voc'])}, AUROC "
            f"{_fmt(rl['reward_scores']['auroc'])}, {timings['reward_s']:.0f}s",
            f"- residual RL: {rl['env_steps']} env steps ({rl['env_steps_per_s']:.0f}/s), success **{rl['base_success']:.2f}"
            f"** (base) -> **{rl['success']:.2f}** (base + residual) on the same seeds, {timings['rl_s']:.0f}s",
            f"- learning curve (env steps: success): {curve}", "", "![RL learning curve](rl_curve.png)"]


def _plot_curve(curve: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs = [r["env_steps"] for r in curve]
    ax.plot(xs, [r["success"] for r in curve], marker="o", label="base + residual")
    ax.plot(xs, [r["base_success"] for r in curve], ls="--", label="base")
    ax.set_xlabel("env steps")
    ax.set_ylabel("success (fixed seeds)")
    ax.set_ylim(-0.02, 1.02)
    return _save_plot(fig, ax, path)
