"""Dense-reward models against the issue-12 targets, and what they cost.

Per task (lift, can, square) one store is recorded with robolearn itself: expert successes (failed
expert attempts kept) plus perturbed experts (stall, early release, noise) that fail on demand,
agentview at 64 px. Episodes are split by a hash of their seed into training and held-out sets;
the progress network is fitted on the first and scored on the second:

    voc           mean Spearman correlation of predicted progress with time, held-out successes (>= 0.9)
    voc_reversed  the same on time-reversed clips (<= -0.9)
    auroc         success versus failure from the success head at the episode's end (>= 0.9)

The CLIP backend is scored on the same held-out episodes with whatever local model is given
(``--clip PATH``; without one, a tiny randomly initialised CLIP is built, a floor for the figures).
Costs: scoring ms per frame on the CPU (1 thread) for each backend, and episodes labelled per
minute by the GVL client against a loopback OpenAI-compatible server with 4 concurrent requests.

Stores and fitted models are reused when present (the recording resumes where it stopped), so the
script can be re-run; run it under ``flock /tmp/robolearn-heavy.lock`` on a shared machine.

    python benchmarks/bench_rewards.py                      # everything
    python benchmarks/bench_rewards.py --stages data        # only record the stores
    python benchmarks/bench_rewards.py --stages fit,score --tasks lift
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

from common import RESULTS, machine, write_json  # noqa: E402

WORK = RESULTS / "rewards"
# Episodes per task: expert successes, then each perturbation (all of them kept, success or not).
PLAN = {"expert": 24, "stall": 10, "early_release": 10, "noise": 3}
CAMERA, SIZE = "agentview", 64
TARGETS = {"voc": 0.9, "voc_reversed": -0.9, "auroc": 0.9}


def _kind(info: Any) -> str:
    p = info.notes.get("perturb")
    return p["kind"] if p else "expert"


def record_task(task: str, work: Path, plan: dict[str, int] | None = None) -> Path:
    """The task's store, recorded or completed to ``plan`` (resumes after an interruption)."""
    from robolearn.data.store import DemoStore
    from robolearn.record import RecordConfig, record

    path = work / "data" / f"{task}.zarr"
    for kind, want in (plan or PLAN).items():
        have = 0
        if path.exists():
            eps = DemoStore.open(path).episodes()
            have = sum(1 for e in eps if _kind(e) == kind and (e.success or kind != "expert"))
        if have >= want:
            continue
        print(f"[data] {task}: recording {want - have} {kind} episodes into {path}", flush=True)
        t0 = time.perf_counter()
        s = record(RecordConfig(
            rig=f"sim:{task}", out=str(path), episodes=want - have, cameras=[CAMERA], image_size=SIZE,
            keep_failures=True, perturb=None if kind == "expert" else kind, workers=2,
        ))
        print(f"[data] {task} {kind}: {s.committed} episodes ({s.successes} successes) from {s.attempts} "
              f"attempts, {s.steps} steps in {time.perf_counter() - t0:.0f}s", flush=True)
    return path


def split(store: Any, holdout: float = 0.25) -> tuple[list[int], list[int]]:
    from robolearn.rewards.progress_net import split_episodes

    return split_episodes(store, holdout)


def fit_task(task: str, store_path: Path, work: Path, steps: int) -> Path:
    from robolearn.rewards.progress_net import FitConfig, fit

    out = work / "models" / task
    if (out / "scores.json").exists() and json.loads((out / "scores.json").read_text()).get("steps") == steps:
        print(f"[fit] {task}: reusing {out}", flush=True)
        return out
    t0 = time.perf_counter()
    fit(FitConfig(data=str(store_path), out=str(out), steps=steps, camera=CAMERA), progress=False)
    print(f"[fit] {task}: {time.perf_counter() - t0:.0f}s", flush=True)
    return out


def score_task(spec: str, store_path: Path, out: Path, episodes: list[int]) -> dict[str, Any]:
    from robolearn.rewards import load_reward
    from robolearn.rewards.metrics import score_store

    model = load_reward(spec)
    return score_store(model, store_path, out, episodes=episodes, camera=CAMERA, plots=8)


def gvl_throughput(n_episodes: int, concurrency: int = 4, latency: float = 0.25) -> dict[str, Any]:
    """Episodes labelled per minute by the GVL client against the loopback judge server (which
    waits ``latency`` seconds per request, as a VLM would, so the figure shows what concurrency buys)."""
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from gvl_judge import LoopbackJudge, moving_block_episode

    from robolearn.rewards.gvl import GVLClient, GVLConfig

    with LoopbackJudge(latency=latency) as srv, tempfile.TemporaryDirectory() as cache:
        cfg = GVLConfig(endpoint=srv.url, model="loopback-judge", concurrency=concurrency, n_frames=16,
                        cache_dir=cache, rate_limit=0.0, timeout=10.0)
        client = GVLClient(cfg)
        eps = [moving_block_episode(60, seed=i) for i in range(n_episodes)]
        t0 = time.perf_counter()
        results = client.label_many([(e["frames"], "lift the red block") for e in eps])
        dt = time.perf_counter() - t0
        missing = sum(int(r.missing) for r in results)
        return {"episodes": n_episodes, "concurrency": concurrency, "server_latency_s": latency,
                "seconds": dt, "episodes_per_minute": 60.0 * n_episodes / dt, "frames_per_request": 16,
                "missing_frames": missing, "max_in_flight_seen_by_server": srv.max_in_flight}


def _fmt(x: Any) -> str:
    return "-" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def report(res: dict[str, Any]) -> str:
    """A markdown table of every finished figure."""
    rows = ["| task | backend | held-out successes / failures | VOC | reversed VOC | AUROC | ms/frame |",
            "|---|---|---|---|---|---|---|"]
    for task in ("lift", "can", "square"):
        for name in ("progress_net", "clip"):
            s = res.get(task, {}).get(name)
            if s:
                rows.append(f"| {task} | {name} | {s['n_success']} / {s['n_failure']} | {_fmt(s['voc'])} | "
                            f"{_fmt(s['voc_reversed'])} | {_fmt(s['auroc'])} | {s['ms_per_frame']:.2f} |")
    for task in ("lift", "can", "square"):
        st = res.get(task, {}).get("store")
        if st:
            rows.append(f"\n{task}: {st['episodes']} episodes ({st['kinds']}), {st['steps']} steps, "
                        f"train {st['train']} / held out {st['held_out']}")
        s = res.get(task, {}).get("progress_net")
        if s:
            rows.append(f"{task} by kind (held out): " + ", ".join(
                f"{k}: P(success) {_fmt(v['success_prob'])}, final progress {_fmt(v['final_progress'])}"
                for k, v in sorted(s["by_kind"].items())))
    g = res.get("gvl_loopback")
    if g:
        rows.append("\nGVL loopback: " + ", ".join(f"{k}: {v['episodes_per_minute']:.0f} episodes/min "
                                                   f"(max in flight {v['max_in_flight_seen_by_server']})"
                                                   for k, v in g.items()))
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", default="data,fit,score,clip,gvl")
    ap.add_argument("--tasks", default="lift,can,square")
    ap.add_argument("--work", default=str(WORK))
    ap.add_argument("--steps", type=int, default=1200, help="progress-network training steps")
    ap.add_argument("--plan", default=None, help="episodes per kind, e.g. expert=16,stall=8,early_release=8,noise=2")
    ap.add_argument("--clip", default=None, help="local CLIP/SigLIP directory (default: a tiny random one)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--report", action="store_true", help="print the finished figures as a table and exit")
    args = ap.parse_args(argv)
    if args.report:
        print(report(json.loads((Path(args.out) if args.out else RESULTS / "bench_rewards.json").read_text())))
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)  # the network is small: one thread is as fast as two on a shared CPU
    stages = set(args.stages.split(","))
    tasks = [t for t in args.tasks.split(",") if t]
    work = Path(args.work)
    res_path = Path(args.out) if args.out else RESULTS / "bench_rewards.json"
    results: dict[str, Any] = json.loads(res_path.read_text()) if res_path.exists() else {}
    results["machine"] = machine()
    results["targets"] = TARGETS

    def save() -> None:
        write_json("bench_rewards", results, str(res_path))

    from robolearn.data.store import DemoStore

    stores: dict[str, Path] = {}
    for task in tasks:  # one task through every stage before the next, so figures land early
        plan = {k: int(v) for k, v in (p.split("=") for p in args.plan.split(","))} if args.plan else None
        stores[task] = record_task(task, work, plan) if "data" in stages else work / "data" / f"{task}.zarr"
        if not stores[task].exists():
            continue
        store = DemoStore.open(stores[task])
        train_eps, held = split(store)
        kinds: dict[str, int] = {}
        for e in store.episodes():
            k = f"{_kind(e)}_{'success' if e.success else 'failure'}"
            kinds[k] = kinds.get(k, 0) + 1
        entry = results.setdefault(task, {})
        entry["store"] = {"episodes": store.n_episodes, "kinds": kinds, "train": len(train_eps),
                          "held_out": len(held), "steps": int(store.episode_lengths().sum())}
        if "fit" in stages:
            model_dir = fit_task(task, stores[task], work, args.steps)
            entry["fit_held_out"] = json.loads((model_dir / "scores.json").read_text())
            save()
        if "score" in stages and (work / "models" / task / "model.safetensors").exists():
            s = score_task(str(work / "models" / task), stores[task], work / "scores" / task, held)
            entry["progress_net"] = s
            print(f"[score] {task} progress net: " + json.dumps({k: s.get(k) for k in (*TARGETS, 'ms_per_frame')}),
                  flush=True)
            save()
        if "clip" in stages:
            clip_dir = Path(args.clip) if args.clip else work / "tiny_clip"
            if not args.clip and not clip_dir.exists():
                from robolearn.rewards.clip import save_tiny_clip

                save_tiny_clip(clip_dir, image_size=SIZE)
            s = score_task(f"clip:{clip_dir}", stores[task], work / "scores_clip" / task, held)
            entry["clip"] = {**s, "model": str(clip_dir), "random_init": not args.clip}
            print(f"[score] {task} clip: " + json.dumps({k: s.get(k) for k in (*TARGETS, 'ms_per_frame')}),
                  flush=True)
            save()
    if "gvl" in stages:
        results["gvl_loopback"] = {f"concurrency_{c}": gvl_throughput(24, concurrency=c) for c in (1, 4)}
        results["gvl_loopback"]["no_latency_concurrency_4"] = gvl_throughput(48, concurrency=4, latency=0.0)
        print(f"[gvl] {json.dumps(results['gvl_loopback'], indent=1)}", flush=True)
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
