"""Residual RL targets (issue 13): weak bases on few demonstrations, then base + residual vs env steps.

Stages (each resumable; JSON written as it goes to ``benchmarks/results/bench_rl.json``):

1. ``bases``: per task, record ``--demos`` expert demonstrations (<= 20), train a small one-step
   (MeanFlow) low-dim base, evaluate its checkpoints on ``--eval-episodes`` fixed seeds and keep the
   best one at or below ``--max-base-success`` (the weak base RL must improve).
2. ``reward``: per task, the progress network for the dense reward (own store with one camera:
   demonstrations + stalled attempts), with its held-out VOC/AUROC.
3. ``rl``: per task and reward (sparse success, dense progress), ``finetune`` the residual on top of
   that base for up to ``--steps`` env steps, evaluating base and base + residual on the same seeds
   at fixed intervals; reports env steps to 0.8 and 0.9 success, env steps/s and wall time.

    python benchmarks/bench_rl.py --stage bases --tasks can,square
    python benchmarks/bench_rl.py --stage reward --tasks can,square
    python benchmarks/bench_rl.py --stage rl --tasks can,square --rewards sparse,dense --steps 200000
    python benchmarks/bench_rl.py --report
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORK = RESULTS / "rl_work"
OUT = RESULTS / "bench_rl.json"
# A small one-step base: cheap to train and to call at every chunk boundary of the RL loop.
BASE_OVERRIDES = ["policy.unet.down_dims=[64,128,256]", "train.batch_size=128", "train.warmup_steps=100",
                  "train.val_every=100000", "data.val_ratio=0.0", "train.num_workers=0"]


def load() -> dict[str, Any]:
    return json.loads(OUT.read_text()) if OUT.is_file() else {"machine": machine(), "bases": {}, "rl": {}}


def save(res: dict[str, Any]) -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(res, indent=2))
    os.replace(tmp, OUT)


def save_rl_cell(res: dict[str, Any], key: str) -> None:
    """Write one RL cell into the file as it is now (other variants may run beside this process)."""
    import fcntl

    OUT.parent.mkdir(parents=True, exist_ok=True)
    with open(OUT.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        now = load()
        now.setdefault("rl", {})[key] = res["rl"][key]
        save(now)


def base_key(task: str, args: argparse.Namespace) -> str:
    return task + (f":{args.base_tag}" if args.base_tag else "")


def reward_dir(task: str, args: argparse.Namespace) -> Path:
    """The progress network a dense cell reads; ``--reward-tag`` names one fitted with other inputs."""
    return WORK / (f"reward_{task}" + (f"_{args.reward_tag}" if args.reward_tag else ""))


def spread_seeds(task: str, n: int, scan: int = 2000) -> list[int]:
    """``n`` seeds whose objects start at headings spread evenly over the circle: the lowest seed in each
    of ``n`` equal heading bins. Random seeds leave gaps; a grasp that depends on the heading (square's
    handle) is then never shown there."""
    import numpy as np

    from robolearn.data.schema import CONTROL_STREAM
    from robolearn.rigs import make_rig

    rig = make_rig(f"sim:{task}")
    try:
        picked: dict[int, int] = {}
        for seed in range(scan):
            o = np.asarray(rig.reset(seed=seed)[CONTROL_STREAM].values["object"])
            if len(o) < 9:
                raise SystemExit(f"--demo-spread: sim:{task}'s object has no orientation (rot6d) to spread over")
            yaw = np.arctan2(o[4], o[3])  # rot6d's first column is the object's x axis
            picked.setdefault(min(int((yaw + np.pi) / (2 * np.pi) * n), n - 1), seed)
            if len(picked) == n:
                break
    finally:
        rig.close()
    return sorted(picked.values())


def stage_bases(args: argparse.Namespace) -> None:
    import torch

    from robolearn.data.store import DemoStore
    from robolearn.eval import evaluate
    from robolearn.policies.train import load_recipe, train
    from robolearn.record import RecordConfig, record

    torch.set_num_threads(2)
    res = load()
    for task in args.tasks:
        cell = res["bases"].setdefault(base_key(task, args), {"demos": args.demos, "checkpoints": {}})
        if cell.get("chosen"):
            continue
        store = WORK / (f"{task}_{args.demos}" + ("_spread" if args.demo_spread else "") + ".zarr")
        if not store.exists() or DemoStore.open(store).n_episodes < args.demos:
            t0 = time.time()
            if args.demo_spread:
                seeds = spread_seeds(task, args.demos)
                cell["demo_seeds"] = seeds
                have = DemoStore.open(store).n_episodes if store.exists() else 0
                # One seed per call, ascending: a seed whose expert fails moves on to the next seed.
                for seed in seeds[have:]:
                    record(RecordConfig(rig=f"sim:{task}", out=str(store), episodes=1, seed=seed, workers=1))
            else:
                record(RecordConfig(rig=f"sim:{task}", out=str(store), episodes=args.demos, seed=0))
            cell["record_s"] = time.time() - t0
        run = WORK / (f"base_{task}" + (f"_{args.base_tag}" if args.base_tag else ""))
        recipe = load_recipe(ROOT / "policies" / f"{args.base_recipe}.yaml",
                             [*BASE_OVERRIDES, *args.base_set, f"train.steps={args.base_steps}",
                              f"train.ckpt_every={args.ckpt_every}"])
        if not (run / "checkpoints" / "last" / "config.json").is_file() or \
                json.loads((run / "checkpoints" / "last" / "extra.json").read_text()).get("step", 0) < args.base_steps:
            resume = (run / "trainer_state.pt").is_file()
            t0 = time.time()
            out = train(recipe, store, run, resume=resume, progress=False)
            cell["train_s"] = time.time() - t0
            cell["train_loss"] = out["train_loss"]
        save(res)
        # Checkpoints from the latest down: keep the best at or below the ceiling.
        ckpts = sorted(p for p in (run / "checkpoints").iterdir() if p.name.startswith("step_"))
        for ck in reversed(ckpts):
            if ck.name not in cell["checkpoints"]:
                ev = evaluate(ck, task, episodes=args.eval_episodes, videos=0)
                cell["checkpoints"][ck.name] = {"success": ev["success_rate"], "wall_s": ev["wall_seconds"]}
                save(res)
                print(f"{task} {ck.name}: success {ev['success_rate']:.2f}", flush=True)
            ok = {k: v["success"] for k, v in cell["checkpoints"].items() if v["success"] <= args.max_base_success}
            if ok and max(ok.values()) >= args.min_base_success:
                break
        ok = {k: v["success"] for k, v in cell["checkpoints"].items() if v["success"] <= args.max_base_success}
        if ok:
            best = max(ok, key=lambda k: ok[k])
            cell["chosen"] = str(run / "checkpoints" / best)
            cell["base_success"] = ok[best]
        save(res)


def stage_reward(args: argparse.Namespace) -> None:
    """Per task, the dense reward's progress network: demonstrations and stalled attempts recorded with
    one small camera (``--reward-size``; a store of its own, the bases never see it), fitted, its held-out
    figures kept."""
    from robolearn.data.store import DemoStore
    from robolearn.record import RecordConfig, record
    from robolearn.rewards.progress_net import FitConfig, fit

    res = load()
    for task in args.tasks:
        cell = res.setdefault("rewards", {}).setdefault(task + (f":{args.reward_tag}" if args.reward_tag else ""), {})
        if cell.get("scores"):
            continue
        store = WORK / f"{task}_reward.zarr"
        have = DemoStore.open(store).n_episodes if store.exists() else 0
        t0 = time.time()
        if have < args.demos:
            record(RecordConfig(rig=f"sim:{task}", out=str(store), episodes=args.demos - have, seed=have,
                                cameras=["agentview"], image_size=args.reward_size))
        if DemoStore.open(store).n_episodes < args.demos + args.failures:
            record(RecordConfig(rig=f"sim:{task}", out=str(store), episodes=args.failures, seed=100_000,
                                cameras=["agentview"], image_size=args.reward_size, perturb="stall"))
        extra = {"proprio_keys": args.reward_proprio.split(",")} if args.reward_proprio else {}
        scores = fit(FitConfig(data=str(store), out=str(reward_dir(task, args)), steps=args.reward_steps,
                               camera="agentview", image_size=args.reward_size, **extra), progress=False)
        cell.update(scores={k: scores.get(k) for k in ("voc", "voc_reversed", "auroc", "n_success", "n_failure")},
                    seconds=time.time() - t0)
        save(res)
        print(f"{task} reward: {cell['scores']}", flush=True)


def stage_rl(args: argparse.Namespace) -> None:
    from robolearn.rl import finetune

    res = load()
    cells = []
    for task in args.tasks:
        base = res["bases"].get(base_key(task, args), {}).get("chosen")
        if not base:
            print(f"{task}: no base chosen yet; run --stage bases first", flush=True)
            continue
        cells += [(task, reward, base) for reward in args.rewards]
    # Side by side: every cell advances by --chunk env steps in turn (finetune resumes), so a partial
    # run still compares sparse and dense, can and square, at the same step counts.
    for target in range(args.chunk, args.steps + args.chunk, args.chunk):
        for task, reward, base in cells:
            # A run on a tagged base is named after the tag unless it has a variant name of its own.
            variant = args.variant or args.base_tag
            key = f"{task}:{reward}" + (f":{variant}" if variant else "")
            run = WORK / (f"rl_{task}_{reward}" + (f"_{variant}" if variant else ""))
            overrides = [f"eval.episodes={args.eval_episodes}", f"eval.every={args.eval_every}",
                         f"env.n_envs={args.n_envs}", f"env.workers={args.workers}", *args.rl_set]
            if reward == "dense":
                overrides += [f"reward.spec={reward_dir(task, args)}", "reward.force=true",
                              f"reward.image_size={args.reward_size}"]

            def on_eval(row: dict[str, Any], key: str = key) -> None:
                cell = res["rl"].setdefault(key, {"curve": []})
                cell["curve"] = [r for r in cell["curve"] if r["env_steps"] < row["env_steps"]] + [row]
                cell["machine"] = machine()
                save_rl_cell(res, key)

            # The base was evaluated on the same seeds when it was chosen: not again.
            out = finetune(base, f"sim:{task}", run, steps=min(target, args.steps), overrides=overrides,
                           on_eval=on_eval, progress=False, base_success=res["bases"][base_key(task, args)].get("base_success"))
            cell = res["rl"].setdefault(key, {"curve": []})
            cell.update({k: v for k, v in out.items() if k != "curve"})
            cell["command"] = " ".join(sys.argv)
            for thr in (0.8, 0.9):
                hit = [r["env_steps"] for r in cell["curve"] if r["success"] >= thr]
                cell[f"steps_to_{thr}"] = hit[0] if hit else None
            save_rl_cell(res, key)
            print(f"{key}: {out['env_steps']} env steps, success {out['base_success']:.2f} -> {out['success']:.2f}, "
                  f"{out['env_steps_per_s']:.1f} env steps/s in this call, "
                  f"{out['env_steps_per_s_overall']:.1f} overall ({out['wall_s']:.0f} s wall)", flush=True)


def report() -> None:
    res = load()
    for task, cell in res["bases"].items():
        print(f"base {task}: {cell.get('base_success')} ({cell.get('chosen')}); checkpoints {cell['checkpoints']}")
    for task, cell in res.get("rewards", {}).items():
        print(f"reward {task}: {cell.get('scores')}")
    for key, cell in res["rl"].items():
        curve = ", ".join(f"{r['env_steps']}:{r['success']:.2f}" for r in cell["curve"])
        print(f"{key}: {curve}; to 0.8: {cell.get('steps_to_0.8')}, env steps/s {cell.get('env_steps_per_s')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=("bases", "reward", "rl"), default="bases")
    ap.add_argument("--tasks", default="can,square")
    ap.add_argument("--rewards", default="sparse")
    ap.add_argument("--demos", type=int, default=20)
    ap.add_argument("--base-steps", type=int, default=2000)
    ap.add_argument("--demo-spread", action="store_true", help="stage bases: demonstrations from seeds whose "
                    "objects start at headings spread evenly over the circle (own store <task>_<N>_spread.zarr)")
    ap.add_argument("--ckpt-every", type=int, default=500)
    ap.add_argument("--max-base-success", type=float, default=0.6)
    ap.add_argument("--failures", type=int, default=10, help="stalled attempts for the reward model")
    ap.add_argument("--reward-steps", type=int, default=3000)
    ap.add_argument("--min-base-success", type=float, default=0.2)
    ap.add_argument("--eval-episodes", type=int, default=50)
    ap.add_argument("--eval-every", type=int, default=10000)
    ap.add_argument("--steps", type=int, default=200_000)
    ap.add_argument("--chunk", type=int, default=20_000, help="env steps each cell advances in turn")
    ap.add_argument("--n-envs", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--base-recipe", default="meanflow_lowdim", help="recipe under policies/ for the bases")
    ap.add_argument("--base-set", action="append", default=[], help="extra key=value override for the bases")
    ap.add_argument("--rl-set", action="append", default=[], help="extra key=value override of the RL recipe")
    ap.add_argument("--variant", default="", help="stage rl: a name for runs with other --rl-set overrides (own folder and key)")
    ap.add_argument("--base-tag", default="", help="a name for bases trained with other settings (own folder and "
                    "key); stage rl fine-tunes that base")
    ap.add_argument("--reward-size", type=int, default=64, help="camera size (px) of the reward model")
    ap.add_argument("--reward-proprio", default="", help="stage reward: low-dim keys the progress network reads "
                    "beside its camera (comma-separated, e.g. robot0_eef_pos,robot0_gripper_qpos,object); "
                    "default: the gripper's position and opening")
    ap.add_argument("--reward-tag", default="", help="a name for a progress network fitted with other settings "
                    "(own folder rl_work/reward_<task>_<tag>; dense cells read it)")
    ap.add_argument("--results", default=str(RESULTS), help="folder of bench_rl.json and rl_work/")
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args()
    global WORK, OUT
    WORK, OUT = Path(args.results) / "rl_work", Path(args.results) / "bench_rl.json"
    args.tasks = [t for t in args.tasks.split(",") if t]
    args.rewards = [t for t in args.rewards.split(",") if t]
    if args.report:
        report()
    elif args.stage == "bases":
        stage_bases(args)
    elif args.stage == "reward":
        stage_reward(args)
    else:
        stage_rl(args)


if __name__ == "__main__":
    main()
