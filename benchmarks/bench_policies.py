"""Success rates of trained policies in simulation, against the issue-3 targets.

Each cell is a (task, recipe) pair: expert demonstrations are recorded once per task (reused when
the store is there), the recipe is trained on them, and the last checkpoint is evaluated on the
fixed evaluation seeds (1,000,000 onwards), exactly as `robolearn record/train/eval` do: the
script calls the same library functions. Cells run as parallel processes, each with its share of
the cores; a finished run is reused and an interrupted one resumed, so the script can be re-run.

    python benchmarks/bench_policies.py --preset lowdim          # lift, can, square x diffusion, flow
    python benchmarks/bench_policies.py --preset image           # lift from agentview + wrist 84x84
    python benchmarks/bench_policies.py --preset onestep         # lift: MeanFlow vs DDIM-16
    python benchmarks/bench_policies.py --cells can:flow_lowdim --steps can=6000 train.lr=3e-4
    python benchmarks/bench_policies.py --preset image --set lift:flow_image data.n_obs_steps=1
    python benchmarks/bench_policies.py --report                 # every finished cell in --work, one table
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, machine, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PRESETS = {
    "lowdim": [f"{t}:{r}" for t in ("lift", "can", "square") for r in ("diffusion_lowdim", "flow_lowdim")],
    "image": ["lift:flow_image"],
    "onestep": ["lift:diffusion_lowdim", "lift:meanflow_lowdim"],
}
# Success-rate targets of issue 3 (low-dim: <= 200 demonstrations, 50 evaluation episodes).
TARGETS = {("lift", "lowdim"): 0.95, ("can", "lowdim"): 0.95, ("square", "lowdim"): 0.85, ("lift", "image"): 0.90}
# The recipes are sized for a GPU; these keep a CPU run to minutes (override on the command line).
# A smaller U-Net learns faster per step at a higher learning rate: the settings the README figures used.
CPU_OVERRIDES = ["policy.unet.down_dims=[64,128,256]", "train.lr=3e-4"]
# Steps per task that met the targets above on the 2-core CPU machine (square needs the most).
DEFAULT_STEPS = "lift=3000,can=4000,square=16000,*=4000"


def cell_name(cell: str, tag: str) -> str:
    """File-name stem of a cell's run and results: ``can_flow_lowdim`` or, tagged, ``can_flow_lowdim_6k``."""
    return cell.replace(":", "_") + (f"_{tag}" if tag else "")


def parse_steps(text: str) -> dict[str, int]:
    """``4000`` (every task) or ``lift=3000,can=6000``."""
    if "=" not in text:
        return {"*": int(text)}
    return {k: int(v) for k, v in (p.split("=", 1) for p in text.split(","))}


def cameras_of(recipe: Path) -> list[str]:
    keys = yaml.safe_load(recipe.read_text())["data"]["obs_keys"]
    return [k[: -len("_image")] for k in keys if k.endswith("_image")]


def store_for(work: Path, task: str, demos: int, cameras: list[str], size: int) -> Path:
    """The demonstration store of a task, recorded with `robolearn record`'s function when missing."""
    from robolearn.data.store import DemoStore
    from robolearn.record import RecordConfig, check_control_matches, record

    name = f"{task}_{demos}" + (f"_{'-'.join(cameras)}_{size}" if cameras else "")
    path = work / f"{name}.zarr"
    if path.exists():
        store = DemoStore.open(path)
        try:
            check_control_matches(store, f"sim:{task}")  # a store from an older observation layout is not reused
            if store.n_episodes >= demos:
                return path
        finally:
            store.close()
    print(f"recording {demos} {task} demonstrations into {path}", flush=True)
    t0 = time.perf_counter()
    # Resumes after the last stored seed when an earlier recording was interrupted.
    record(RecordConfig(rig=f"sim:{task}", out=str(path), episodes=demos, cameras=cameras, image_size=size,
                        workers=0))
    print(f"  recorded in {time.perf_counter() - t0:.0f}s", flush=True)
    return path


def run_cell(args: argparse.Namespace) -> dict[str, Any]:
    """Train and evaluate one cell in this process (the parent starts one process per cell)."""
    import torch

    from robolearn.eval import evaluate
    from robolearn.policies.train import load_recipe, recipe_to_dict, train

    torch.set_num_threads(args.threads)
    task, recipe_name = args.cell.split(":")
    recipe_path = ROOT / "policies" / f"{recipe_name}.yaml"
    steps = args.steps_map.get(task, args.steps_map.get("*"))
    cell_sets = [kv for cell, kv in args.set or [] if cell == args.cell]
    overrides = [*CPU_OVERRIDES, *args.overrides, f"train.steps={steps}", *cell_sets]
    recipe = load_recipe(recipe_path, overrides)
    steps = recipe.train.steps
    run = Path(args.work) / "runs" / cell_name(args.cell, args.tag)
    result_file = run / "result.json"
    if (run / "recipe.yaml").is_file():
        if yaml.safe_load((run / "recipe.yaml").read_text()) != json.loads(json.dumps(recipe_to_dict(recipe))):
            raise SystemExit(f"{run} was trained with another recipe; delete it or use another --work")
    if result_file.is_file() and json.loads(result_file.read_text())["steps"] >= steps:
        trained = json.loads(result_file.read_text())
        trained["reused"] = True
    else:
        resume = (run / "trainer_state.pt").is_file()
        if run.is_dir() and not resume:
            shutil.rmtree(run)  # died before its first checkpoint: nothing to resume, and train() wants it empty
        trained = train(recipe, args.store, run, resume=resume, progress=False)
    ev = evaluate(run, task, episodes=args.episodes, workers=args.eval_envs, videos=0)  # 4 envs per worker
    kind = "image" if cameras_of(recipe_path) else "lowdim"
    target = TARGETS.get((task, kind))
    cell = {
        "task": task, "recipe": recipe_name, "tag": args.tag, "kind": kind, "policy": recipe.policy, "store": args.store,
        "demos": args.demos, "train_steps": trained["steps"], "train_seconds": trained["seconds"],
        "train_loss": trained["train_loss"], "val_loss": trained["val_loss"], "overrides": overrides,
        "threads": args.threads, "eval": {k: v for k, v in ev.items() if k != "per_episode"},
        "failed_seeds": [e["seed"] for e in ev["per_episode"] if not e["success"]],
        "target": target, "met": None if target is None else ev["success_rate"] >= target,
    }
    Path(args.cell_out).write_text(json.dumps(cell, indent=2))
    return cell


def summarize(results: list[dict[str, Any]], name: str, args: argparse.Namespace, out: str | None) -> None:
    """Print a markdown table of the cells and write them to one JSON file."""
    print("\n| task | recipe | success | 95% CI | target | ms/chunk | mean length | demos | steps | train s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        ev = r["eval"]
        label = r["recipe"] + (f" ({r['tag']})" if r.get("tag") else "")
        print(f"| {r['task']} | {label} | {ev['success_rate']:.2f} | [{ev['wilson95'][0]:.2f}, "
              f"{ev['wilson95'][1]:.2f}] | {r['target'] if r['target'] is not None else '-'} | "
              f"{ev['inference_ms_per_chunk']:.1f} | {ev['mean_episode_length']:.0f} | {r['demos']} | "
              f"{r['train_steps']} | {r['train_seconds']:.0f} |")
    # The one-step target: >= 10x faster than DDIM-16 with success within 5 points of it.
    by = {(r["task"], r["recipe"]): r["eval"] for r in results if not r.get("tag")}
    onestep = {}
    for task in sorted({r["task"] for r in results}):
        ddim, one = by.get((task, "diffusion_lowdim")), by.get((task, "meanflow_lowdim"))
        if ddim and one:
            onestep[task] = {"speedup": ddim["inference_ms_per_chunk"] / one["inference_ms_per_chunk"],
                             "success_delta": one["success_rate"] - ddim["success_rate"]}
            onestep[task]["met"] = onestep[task]["speedup"] >= 10 and onestep[task]["success_delta"] >= -0.05
            print(f"\none-step vs DDIM-16 on {task}: {onestep[task]['speedup']:.1f}x faster, success "
                  f"{onestep[task]['success_delta']:+.2f} ({'met' if onestep[task]['met'] else 'NOT met'})")
    write_json(name, {"machine": machine(), "episodes": args.episodes, "cells": results, "onestep": onestep}, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), help="a named set of cells")
    ap.add_argument("--cells", default="", help="comma-separated task:recipe pairs (recipes from policies/)")
    ap.add_argument("--demos", type=int, default=200)
    ap.add_argument("--steps", default=DEFAULT_STEPS,
                    help=f"training steps: N, or per task as lift=3000,can=6000,*=4000 (default {DEFAULT_STEPS})")
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--image-size", type=int, default=84)
    ap.add_argument("--jobs", type=int, default=2, help="cells trained at once (cores are shared evenly)")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="cores this run may use")
    ap.add_argument("--tag", default="", help="suffix of run and result names, to keep variants of a cell apart")
    ap.add_argument("--work", default=str(RESULTS / "policies"), help="stores, runs and per-cell results")
    ap.add_argument("--out", default=None)
    ap.add_argument("--report", action="store_true", help="only tabulate the finished cells found in --work")
    ap.add_argument("--set", nargs=2, action="append", metavar=("CELL", "KEY=VALUE"),
                    help="a recipe override for one cell only (repeatable)")
    ap.add_argument("overrides", nargs="*", help="recipe overrides for every cell, key=value")
    # Internal: run one cell in this process.
    ap.add_argument("--cell", help=argparse.SUPPRESS)
    ap.add_argument("--cell-out", help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--eval-envs", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.steps_map = parse_steps(args.steps)
    if args.cell:
        run_cell(args)
        return

    work = Path(args.work)
    if args.report:
        results = [json.loads(f.read_text()) for f in sorted((work / "cells").glob("*.json"))]
        summarize(results, "policies_all", args, args.out)
        return
    cells = [c for c in args.cells.split(",") if c] or PRESETS.get(args.preset or "", [])
    if not cells:
        ap.error("give --preset, --cells or --report")
    (work / "cells").mkdir(parents=True, exist_ok=True)
    # Stores first, one task at a time with every core, so that parallel cells never record the same store.
    from robolearn.data.schema import SchemaError

    stores = {}
    for cell in cells:
        task, recipe_name = cell.split(":")
        cams = cameras_of(ROOT / "policies" / f"{recipe_name}.yaml")
        try:
            stores[cell] = store_for(work, task, args.demos, cams, args.image_size)
        except SchemaError as e:
            print(f"error: {e} (or point --work elsewhere)", file=sys.stderr)
            sys.exit(2)

    cores = max(1, args.cores)
    jobs = max(1, min(args.jobs, len(cells)))
    pending, running, results = list(cells), [], []
    t0 = time.perf_counter()
    while pending or running:
        while pending and len(running) < jobs:
            # Share the free cores among the cells about to start (a last odd cell gets them all).
            free = cores - sum(r[4] for r in running)
            threads = max(1, free // min(jobs - len(running), len(pending)))
            cell = pending.pop(0)
            out = work / "cells" / f"{cell_name(cell, args.tag)}.json"
            log = open(work / "cells" / f"{cell_name(cell, args.tag)}.log", "w")  # noqa: SIM115 - closed below
            cmd = [sys.executable, __file__, "--cell", cell, "--cell-out", str(out), "--store", str(stores[cell]),
                   "--threads", str(threads), "--eval-envs", str(threads), "--demos", str(args.demos),
                   "--steps", args.steps, "--episodes", str(args.episodes), "--work", str(work), "--tag", args.tag,
                   *[a for cell_, kv in args.set or [] for a in ("--set", cell_, kv)], *args.overrides]
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            print(f"[{time.perf_counter() - t0:5.0f}s] start {cell} ({threads} threads)", flush=True)
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            running.append((cell, out, log, proc, threads))
        time.sleep(2)
        for item in list(running):
            cell, out, log, proc, _ = item
            if proc.poll() is None:
                continue
            running.remove(item)
            log.close()
            if proc.returncode != 0 or not out.is_file():
                print(f"[{time.perf_counter() - t0:5.0f}s] {cell} FAILED (exit {proc.returncode}); see {log.name}")
                continue
            r = json.loads(out.read_text())
            results.append(r)
            ev = r["eval"]
            print(f"[{time.perf_counter() - t0:5.0f}s] {cell}: success {ev['success_rate']:.2f} "
                  f"[{ev['wilson95'][0]:.2f}, {ev['wilson95'][1]:.2f}] target {r['target']} "
                  f"{'met' if r['met'] else 'NOT met' if r['met'] is False else ''}; "
                  f"{ev['inference_ms_per_chunk']:.1f} ms/chunk; trained {r['train_steps']} steps "
                  f"in {r['train_seconds']:.0f}s", flush=True)

    name = f"policies_{args.preset}" if args.preset and not args.cells else "policies"
    summarize(results, name, args, args.out)
    if any(r["met"] is False for r in results) or len(results) < len(cells):
        sys.exit(1)


if __name__ == "__main__":
    main()
