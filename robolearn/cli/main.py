"""The `robolearn` command. Each subcommand is a few lines over a library function.

Errors: a :class:`robolearn.errors.UserError` (bad flag value, missing or malformed file, a store or
checkpoint that does not fit) prints one line and exits with code 2; anything else is a bug and keeps
its traceback (exit 1). ``robolearn --debug COMMAND ...`` shows the traceback of user errors too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import robolearn
from robolearn.errors import UserError


class UsageError(UserError):
    """A mistake in what the user asked for: one line, exit code 2."""


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def cmd_record(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from robolearn.record import RecordConfig, record

    cfg = RecordConfig(
        rig=args.rig, out=args.out, episodes=args.episodes, teleop=args.teleop, cameras=_csv(args.cameras),
        image_size=args.image_size, depth=args.depth, seed=args.seed, keep_failures=args.keep_failures,
        codec=args.codec, workers=args.workers, task=args.task, perturb=args.perturb, status=not args.quiet,
        rig_overrides=args.set or (), view=args.view,
    )
    bars: list = []
    live = not cfg.is_sim  # a real rig shows its own status line; one line per episode here

    def progress(s):  # noqa: ANN001, ANN202 - created lazily so config errors print no empty bar
        if live:
            if not args.quiet:
                print(f"attempt {s.attempts}: {s.committed} episodes committed ({s.successes} success, "
                      f"{s.failures_kept} failures kept)", file=sys.stderr)
            return
        if not bars:
            bars.append(tqdm(total=cfg.episodes, desc=f"record {cfg.rig}", unit="ep", file=sys.stderr,
                             disable=args.quiet))
        bars[0].n = s.successes
        bars[0].set_postfix(attempts=s.attempts, kept_failures=s.failures_kept, refresh=False)
        bars[0].refresh()

    s = record(cfg, progress)
    if bars:
        bars[0].close()
    timing = (f"{s.steps} control ticks in {s.seconds:.1f}s" if live else
              f"{s.steps} steps in {s.seconds:.1f}s ({s.steps_per_second:.0f} steps/s; rollout {s.rollout_seconds:.1f}s, "
              f"render {s.render_seconds:.1f}s, write {s.write_seconds:.1f}s)")
    print(f"{s.out}: committed {s.committed} episodes ({s.successes} success, {s.failures_kept} failures kept) "
          f"from {s.attempts} attempts, {timing}"
          + (" — interrupted, the episode in progress was dropped" if s.interrupted else ""))
    if live and s.frames:
        print("frames stored: " + ", ".join(f"{k} {n} ({s.dropped_frames.get(k, 0)} dropped)" for k, n in s.frames.items()))
    if s.error:
        print(f"robolearn: error: {s.error} (the episode in progress was dropped; committed episodes are kept)",
              file=sys.stderr)
        return 1
    if s.successes < cfg.episodes and not s.interrupted and cfg.is_sim and not cfg.perturb:
        print(f"warning: only {s.successes} of {cfg.episodes} attempts succeeded within the attempt limit", file=sys.stderr)
    return 130 if s.interrupted else 0


def cmd_data_info(args: argparse.Namespace) -> int:
    from robolearn.data.inspect import format_info, info

    d = info(args.store)
    print(json.dumps(d, indent=2) if args.json else format_info(d))
    return 0


def cmd_data_verify(args: argparse.Namespace) -> int:
    from pathlib import Path

    from robolearn.data.inspect import verify

    if not Path(args.store).exists():
        raise UsageError(f"no store at {args.store}")
    rep = verify(args.store, max_lag=args.max_lag)
    if rep.ok:
        print(f"{rep.path}: OK — {rep.episodes} episodes, {rep.chunks_read} chunk reads, schema consistent")
        return 0
    for p in rep.problems:
        print(f"{rep.path}: {p}", file=sys.stderr)
    return 1


def cmd_data_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from robolearn.interop.lerobot import export_lerobot

    if not Path(args.store).exists():
        raise UsageError(f"no store at {args.store}")
    print(export_lerobot(args.store, args.out, repo_id=args.repo_id).summary())
    return 0


def cmd_data_import(args: argparse.Namespace) -> int:
    from robolearn.interop.lerobot import import_lerobot

    print(import_lerobot(args.src, args.out, source=args.source).summary())
    return 0


def _add_interop_parsers(dsub: argparse._SubParsersAction) -> None:
    x = dsub.add_parser("export", help="write a store as a LeRobot v3.0 dataset (videos, stats, tasks)")
    x.add_argument("store")
    x.add_argument("--to", required=True, choices=["lerobot"], help="target format")
    x.add_argument("--out", required=True, help="new dataset directory")
    x.add_argument("--repo-id", default=None, help="dataset name OWNER/NAME (default robolearn/<store name>)")
    x.set_defaults(func=cmd_data_export)
    i = dsub.add_parser("import", help="copy a LeRobot v3.0 dataset (directory or cached repo id) into a new store")
    i.add_argument("src", metavar="DIR_OR_REPO_ID")
    i.add_argument("--out", required=True, help="new store directory")
    i.add_argument("--source", default="teleop", choices=["expert", "teleop", "policy", "rl"],
                   help="what the episodes are recorded as (default teleop)")
    i.set_defaults(func=cmd_data_import)


# ------------------------------------------------------------------------------------------- viz (Rerun)


def _view_sink(args: argparse.Namespace) -> str:
    if args.save and args.serve is not None:
        raise UsageError("give --save FILE.rrd or --serve [PORT], not both")
    if args.save:
        return f"save:{args.save}"
    if args.serve is not None:
        return f"serve:{args.serve}" if args.serve else "serve"
    return "spawn"


def cmd_data_view(args: argparse.Namespace) -> int:
    from robolearn.viz.episode import view_store

    if not Path(args.store).exists():
        raise UsageError(f"no store at {args.store}")
    eps = [e for text in args.episode or [] for e in _episodes(text) or []]
    s = view_store(args.store, eps, _view_sink(args),
                   on_ready=lambda where: print(f"logged {args.store} to {where}" +
                                                ("; Ctrl-C to stop serving" if args.serve is not None else ""),
                                                file=sys.stderr, flush=True))
    for e, rows in s.rows.items():
        print(f"episode {e}: " + ", ".join(f"{p.split('/', 1)[1]} {n}" for p, n in rows.items()))
    if args.serve is not None:
        # After Ctrl-C the viewer's servers may wait at exit for a browser that has gone (seen once in 30 s
        # under load): everything is printed, so leave at once.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


def cmd_introspect(args: argparse.Namespace) -> int:
    from robolearn.viz.introspect import introspect

    r = introspect(args.policy, args.task, seed=args.seed, samples=args.samples, sink=_view_sink(args),
                   camera=args.camera, image_size=args.image_size, max_steps=args.max_steps)
    print(f"{r['where']}: {r['steps']} steps, {r['chunks']} chunks x {args.samples} samples, success {r['success']}; "
          f"sample spread (mean distance of sampled paths' ends) {r['spread_m'] * 100:.1f} cm")
    return 0


def _add_view_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--view", nargs="?", const="spawn", default=None, metavar="SPEC",
                   help="stream a live view to Rerun: spawn (default), save:FILE.rrd, serve or serve:PORT "
                        "(needs robolearn[viz])")


def _add_sink_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--save", default=None, metavar="FILE.rrd", help="write a Rerun file instead of opening the viewer")
    p.add_argument("--serve", nargs="?", const="", default=None, metavar="PORT",
                   help="serve Rerun's web viewer on PORT (default 9090) until Ctrl-C, for a machine without a display")


def _add_view_parsers(sub: argparse._SubParsersAction, dsub: argparse._SubParsersAction) -> None:
    """``robolearn data view`` (episodes in Rerun) and ``robolearn introspect`` (a policy's sampled chunks)."""
    v = dsub.add_parser("view", help="show episodes in Rerun: cameras, depth, proprioception, actions, columns")
    v.add_argument("store")
    v.add_argument("--episode", nargs="+", default=None, metavar="N",
                   help="episodes to show, e.g. 0 3 or 0-4 (default: the first)")
    _add_sink_args(v)
    v.set_defaults(func=cmd_data_view)
    i = sub.add_parser("introspect", help="one sim episode of a policy in Rerun: sampled action chunks as 3-D paths")
    i.add_argument("--policy", required=True, help="training run or checkpoint (diffusion/flow/MeanFlow)")
    i.add_argument("--task", required=True, help="simulated task, e.g. lift")
    i.add_argument("--seed", type=int, default=0, help="reset seed of the episode (default 0)")
    i.add_argument("--samples", type=int, default=8, help="chunks sampled per chunk boundary (default 8)")
    i.add_argument("--camera", default="agentview", help="camera shown beside the scene (default agentview; '' none)")
    i.add_argument("--image-size", type=int, default=128, help="that camera's image size (default 128)")
    i.add_argument("--max-steps", type=int, default=None, help="cap the episode (default: the task's horizon)")
    _add_sink_args(i)
    i.set_defaults(func=cmd_introspect)


def cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from robolearn.policies.train import load_recipe, train

    recipe = load_recipe(args.recipe, args.overrides)
    if not Path(args.data).exists():
        raise UsageError(f"no store at {args.data}: record one first (robolearn record ... --out {args.data})")
    res = train(recipe, args.data, args.out, resume=args.resume, progress=not args.quiet)
    if not res["main"]:  # other ranks of a distributed run stay quiet
        return 0
    val = "-" if res["val_loss"] is None else f"{res['val_loss']:.4f}"
    print(f"{res['run']}: {res['steps']} steps, train loss {res['train_loss']:.4f}, val loss {val}, "
          f"{res['seconds']:.0f}s")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from robolearn.eval import EvalFailed, evaluate, load_suite, run_suite, write_report
    from robolearn.resources import resolve

    opts = dict(n_envs=args.n_envs, workers=args.workers, device=args.device, inference_steps=args.inference_steps,
                worker_timeout=args.worker_timeout, max_steps=args.max_steps)
    try:
        if args.suite:  # flags given on the command line override the suite file's settings
            report = run_suite(load_suite(resolve("suite", args.suite)), args.out, **{k: v for k, v in opts.items() if v is not None})
        else:
            if not args.policy or not args.task:
                raise UsageError("give --policy RUN and --task NAME, or --suite FILE")
            results = [evaluate(p, t, args.episodes, videos=args.videos, out_dir=args.out,
                                **{**opts, "device": args.device or "cpu"})
                       for p in args.policy for t in _csv(args.task)]
            report = write_report(results, args.out)
    except EvalFailed as e:
        # Not the user's mistake: one line naming the seed and the cause, exit 1.
        print(f"robolearn eval: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    for r in report["results"]:
        lo, hi = r["wilson95"]
        print(f"{r['task']:8s} {r['checkpoint']}: success {r['success_rate']:.2f} [{lo:.2f}, {hi:.2f}] "
              f"over {r['episodes']} episodes, {r['inference_ms_per_chunk']:.1f} ms/chunk, "
              f"{r['episodes_per_minute']:.1f} episodes/min")
    print(f"report: {args.out}/report.json, {args.out}/summary.md")
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    from robolearn.quickstart import quickstart

    quickstart(args.out, episodes=args.episodes, seed=args.seed, train_steps=args.train_steps,
               eval_episodes=args.eval_episodes, overrides=args.overrides, rl_steps=args.rl_steps,
               failures=args.failures, reward_steps=args.reward_steps, rl_overrides=args.rl_set)
    return 0


# ------------------------------------------------------------------------------------------- reward


def _episodes(text: str | None) -> list[int] | None:
    """``0-9,12`` -> [0, ..., 9, 12]; None keeps every episode."""
    if not text:
        return None
    out: list[int] = []
    try:
        for part in _csv(text):
            a, _, b = part.partition("-")
            out += list(range(int(a), int(b) + 1)) if b else [int(a)]
    except ValueError:
        raise UsageError(f"--episodes: expected a list like 0-9,12, got {text!r}") from None
    return out


def _gvl_kwargs(args: argparse.Namespace) -> dict:
    import os
    from pathlib import Path

    cache = args.cache or str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "robolearn" / "gvl")
    return dict(model=args.model or "", api_key=args.api_key, n_frames=args.n_frames, concurrency=args.concurrency,
                rate_limit=args.rate_limit, timeout=args.timeout, retries=args.retries,
                image_size=args.vlm_image_size, cache_dir=None if args.cache == "none" else cache)


def cmd_reward_label(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from robolearn.rewards.gvl import GVLConfig, GVLError, label_store

    if args.backend != "gvl":
        raise UsageError(f"reward label: unknown --backend {args.backend!r} (available: gvl)")
    if args.api_key:
        print("warning: --api-key is visible to other users in the process list; prefer ROBOLEARN_VLM_API_KEY",
              file=sys.stderr)
    kw = _gvl_kwargs(args)
    examples = _episodes(args.examples) or []
    if examples:
        from robolearn.rewards.gvl import examples_from_store

        kw["examples"] = examples_from_store(args.data, examples, args.camera, kw["n_frames"])
    cfg = GVLConfig(endpoint=args.endpoint or "", **kw)
    eps = _episodes(args.episodes)
    bar: list = []

    def update(summary, stats, total):  # noqa: ANN001, ANN202
        if not bar:
            bar.append(tqdm(total=total, desc="reward label", unit="ep", file=sys.stderr, disable=args.quiet))
        st = stats.snapshot()
        bar[0].n = summary.labelled + summary.failed
        bar[0].set_postfix(in_flight=st["in_flight"], retries=st["retries"], reasks=st["reasks"],
                           cache_hits=st["cache_hits"], failed=summary.failed, refresh=False)
        bar[0].refresh()

    try:
        s = label_store(args.data, cfg, episodes=eps, camera=args.camera, column=args.column,
                        overwrite=args.overwrite, on_update=update, skip=examples)
    except GVLError as e:
        raise UsageError(str(e)) from None
    finally:
        if bar:
            bar[0].close()
    print(f"{args.data}: {s.labelled} labelled, {s.skipped} already labelled, {s.partial} with missing frames, "
          f"{s.failed} failed (left unlabelled; re-run to retry) in {s.seconds:.1f}s")
    for err in s.errors[:5]:
        print(f"  {err}", file=sys.stderr)
    return 0


def cmd_reward_fit(args: argparse.Namespace) -> int:
    from pathlib import Path

    from robolearn.rewards.progress_net import FitConfig, fit

    if not Path(args.data).exists():
        raise UsageError(f"no store at {args.data}: record one first (robolearn record ... --out {args.data})")
    cfg = FitConfig(data=args.data, out=args.out, steps=args.steps, camera=args.camera, from_labels=args.from_labels,
                    holdout=args.holdout, seed=args.seed, label_column=args.column)
    res = fit(cfg, progress=not args.quiet)
    print(f"{args.out}: held-out VOC {_f(res.get('voc'))}, reversed {_f(res.get('voc_reversed'))}, "
          f"AUROC {_f(res.get('auroc'))} ({res['n_success']} successes, {res['n_failure']} failures) "
          f"in {res['seconds']:.0f}s")
    return 0


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def cmd_reward_score(args: argparse.Namespace) -> int:
    from robolearn.rewards import GateConfig, check_gate, load_reward
    from robolearn.rewards.gvl import GVLError
    from robolearn.rewards.metrics import score_store

    kw = _gvl_kwargs(args) if args.reward.startswith("gvl:") else {}
    model = load_reward(args.reward, **kw)
    try:
        s = score_store(model, args.data, args.out, episodes=_episodes(args.episodes), camera=args.camera,
                        plots=args.plots)
    except GVLError as e:
        raise UsageError(str(e)) from None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the gate's verdict is printed below, once
        fails = check_gate(s, GateConfig(args.min_voc, args.min_auroc), force=True, what=args.reward)
    print(f"{args.out}/scores.json: VOC {_f(s['voc'])}, reversed {_f(s['voc_reversed'])}, AUROC {_f(s['auroc'])} "
          f"({s['n_success']} successes, {s['n_failure']} failures), {s['ms_per_frame']:.2f} ms/frame"
          + (f"; below the gate: {'; '.join(fails)}" if fails else "; passes the gate"))
    return 0


def cmd_reward_check(args: argparse.Namespace) -> int:
    from robolearn.rewards import GateConfig, load_gated_reward

    load_gated_reward(args.reward, scores=args.scores, gate=GateConfig(args.min_voc, args.min_auroc),
                      force=args.force, **(_gvl_kwargs(args) if args.reward.startswith("gvl:") else {}))
    print(f"{args.reward}: passes the gate (VOC >= {args.min_voc}, AUROC >= {args.min_auroc})"
          + (" or forced" if args.force else ""))
    return 0


def _add_gvl_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="VLM model name (or ROBOLEARN_VLM_MODEL)")
    p.add_argument("--api-key", default=None, help="API key (prefer the ROBOLEARN_VLM_API_KEY environment variable)")
    p.add_argument("--n-frames", type=int, default=16, help="frames judged per episode (default 16)")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight at once (default 4)")
    p.add_argument("--rate-limit", type=float, default=0.0, help="requests per second at most (default: no limit)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default 120)")
    p.add_argument("--retries", type=int, default=4, help="retries of failed requests (default 4)")
    p.add_argument("--vlm-image-size", type=int, default=None, help="resize frames before sending (default: as stored)")
    p.add_argument("--cache", default=None, help="answer cache directory (default ~/.cache/robolearn/gvl; 'none' disables)")


def _add_reward_parser(sub: argparse._SubParsersAction) -> None:
    rw = sub.add_parser("reward", help="dense rewards from task progress: label, fit, score, check")
    rsub = rw.add_subparsers(dest="reward_command", required=True, metavar="SUBCOMMAND")

    lb = rsub.add_parser("label", help="write per-frame VLM progress labels into a store (resumable)")
    lb.add_argument("--data", required=True, help="demonstration store")
    lb.add_argument("--backend", default="gvl", help="labeller: gvl (an OpenAI-compatible VLM endpoint)")
    lb.add_argument("--endpoint", default=None, help="e.g. http://127.0.0.1:8000/v1 (or ROBOLEARN_VLM_ENDPOINT)")
    lb.add_argument("--episodes", default=None, help="episodes to label, e.g. 0-49,60 (default: all)")
    lb.add_argument("--camera", default=None, help="camera to judge (default: the first one)")
    lb.add_argument("--column", default="progress", help="column to write (default progress)")
    lb.add_argument("--examples", default=None, help="successful episodes shown as in-context examples, e.g. 0,5")
    lb.add_argument("--overwrite", action="store_true", help="relabel episodes labelled with the same model")
    lb.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_gvl_args(lb)
    lb.set_defaults(func=cmd_reward_label)

    ft = rsub.add_parser("fit", help="train the progress network on a store")
    ft.add_argument("--data", required=True, help="demonstration store (successes and failures)")
    ft.add_argument("--out", required=True, help="reward model directory")
    ft.add_argument("--from-labels", action="store_true", help="distil the store's VLM progress labels")
    ft.add_argument("--column", default="progress", help="label column for --from-labels (default progress)")
    ft.add_argument("--steps", type=int, default=3000, help="training steps (default 3000)")
    ft.add_argument("--camera", default=None, help="camera (default: the first one)")
    ft.add_argument("--holdout", type=float, default=0.25, help="fraction of episodes held out for the figures")
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    ft.set_defaults(func=cmd_reward_fit)

    sc = rsub.add_parser("score", help="VOC, reversed VOC, AUROC and progress plots of a reward model")
    sc.add_argument("--reward", required=True, help="REWARD directory, gvl:URL or clip:PATH")
    sc.add_argument("--data", required=True, help="demonstration store")
    sc.add_argument("--out", required=True, help="output directory (scores.json, *.png)")
    sc.add_argument("--episodes", default=None, help="episodes to score, e.g. 0-49 (default: all)")
    sc.add_argument("--camera", default=None, help="camera (default: the first one)")
    sc.add_argument("--plots", type=int, default=12, help="episodes plotted one by one (default 12)")
    sc.add_argument("--min-voc", type=float, default=0.9, help="gate thresholds reported (default 0.9)")
    sc.add_argument("--min-auroc", type=float, default=0.9)
    _add_gvl_args(sc)
    sc.set_defaults(func=cmd_reward_score)

    ck = rsub.add_parser("check", help="the RL loop's gate: refuse a reward model below the thresholds")
    ck.add_argument("--reward", required=True, help="REWARD directory, gvl:URL or clip:PATH")
    ck.add_argument("--scores", default=None, help="a `reward score` output directory (default: the model's own)")
    ck.add_argument("--min-voc", type=float, default=0.9)
    ck.add_argument("--min-auroc", type=float, default=0.9)
    ck.add_argument("--force", action="store_true", help="accept a model below the thresholds, with a warning")
    _add_gvl_args(ck)
    ck.set_defaults(func=cmd_reward_check)


def cmd_hardware_list(args: argparse.Namespace) -> int:
    from robolearn.hardware.listing import format_hardware, list_hardware

    d = list_hardware()
    print(json.dumps(d, indent=2) if args.json else format_hardware(d))
    return 0


def _add_hardware_parser(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """``robolearn hardware ...``; returns its subparsers so other commands (rig checks, ...) can join."""
    h = sub.add_parser("hardware", help="connected cameras and devices")
    hsub = h.add_subparsers(dest="hardware_command", required=True, metavar="SUBCOMMAND")
    hl = hsub.add_parser("list", help="connected RealSense devices (serial, model, firmware, USB) and video devices")
    hl.add_argument("--json", action="store_true", help="machine-readable output")
    hl.set_defaults(func=cmd_hardware_list)
    return hsub


def cmd_hardware_make_playback(args: argparse.Namespace) -> int:
    from robolearn.rigs.playback import make_playback

    for path in make_playback(args.rig, frames=args.frames, only_missing=args.only_missing):
        print(path)
    return 0


def cmd_hardware_up(args: argparse.Namespace) -> int:
    from robolearn.rigs.launch import hardware_up, load_launch

    if bool(args.rig) == bool(args.launch):
        raise UsageError("give either --rig hardware/<rig>.yaml or --launch launch/<file>.yaml")
    rig, sets = args.rig, list(args.set or [])
    if args.launch:
        launch = load_launch(args.launch)
        rig, sets = launch.rig, launch.set + sets
        if launch.record is not None:
            from robolearn.record import RecordConfig, record

            r = launch.record
            s = record(RecordConfig(rig=rig, out=r.out, episodes=r.episodes, teleop=r.teleop, task=r.task,
                                    keep_failures=r.keep_failures, codec=r.codec, seed=r.seed, rig_overrides=sets))
            print(f"{s.out}: committed {s.committed} episodes ({s.successes} success) from {s.attempts} attempts")
            if s.error:
                print(f"robolearn: error: {s.error}", file=sys.stderr)
                return 1
            return 130 if s.interrupted else 0
    rep = hardware_up(rig, sets, seconds=args.seconds)
    print(json.dumps(rep))
    return 0


def _add_rig_commands(hsub: argparse._SubParsersAction) -> None:
    """``robolearn hardware make-playback`` and ``up``: rig files and launch files."""
    mp = hsub.add_parser("make-playback", help="write the RealSense recordings a rig file's playback cameras name")
    mp.add_argument("--rig", required=True, help="rig file, e.g. hardware/sim_twin.yaml")
    mp.add_argument("--frames", type=int, default=90, help="frames per recording (default 90: 3 s at 30 fps)")
    mp.add_argument("--only-missing", action="store_true", help="keep recordings that exist already")
    mp.set_defaults(func=cmd_hardware_make_playback)
    up = hsub.add_parser("up", help="bring up a rig (camera processes, arm controller) or a launch file")
    up.add_argument("--rig", help="rig file: report rates, drops and the arm's state until Ctrl-C")
    up.add_argument("--launch", help="launch file (launch/*.yaml): a rig, its overrides, optionally a recording")
    up.add_argument("--set", action="append", metavar="KEY=VALUE", help="change a rig file's setting (repeatable)")
    up.add_argument("--seconds", type=float, default=None, help="stop after this long (default: at Ctrl-C)")
    up.set_defaults(func=cmd_hardware_up)


def cmd_finetune(args: argparse.Namespace) -> int:
    from robolearn.rl import finetune

    if not args.rig.startswith("sim:") or args.episodes is not None or args.learner is not None:
        return _finetune_robot(args)
    if args.steps is None:
        raise UserError("finetune on sim:TASK needs --steps N (env steps in all); --episodes N runs the on-robot "
                        "actor/learner loop instead")
    res = finetune(args.policy, args.rig, args.out, args.steps, reward=args.reward, recipe=args.recipe,
                   overrides=args.overrides, progress=not args.quiet, view=args.view)
    curve = ", ".join(f"{r['env_steps']}: {r['success']:.2f}" for r in res["curve"])
    print(f"{args.out}: {res['env_steps']} env steps, success {res['base_success']:.2f} (base) -> {res['success']:.2f} "
          f"(base + residual) on {res['curve'][-1]['episodes']} fixed seeds; curve {curve}; "
          f"{res['env_steps_per_s_overall']:.0f} env steps/s over {res['wall_s']:.0f} s")
    return 0


def _finetune_robot(args: argparse.Namespace) -> int:
    """On a rig file (or ``--episodes`` on sim:TASK): the deployment loop as the actor, a learner process."""
    from robolearn.deploy.loop import DeployConfig, DeployStop
    from robolearn.rl.robot import finetune_robot

    if args.reward or args.view:
        raise UserError("on a robot, fine-tuning takes sparse success marked by the operator or the rig; "
                        "--reward and --view are for sim:TASK runs")
    cfg = DeployConfig(max_steps=args.max_steps)
    try:
        res = finetune_robot(args.rig, args.policy, args.out, args.episodes or 1, learner=args.learner,
                             teleop=args.teleop, recipe=args.recipe, overrides=args.overrides, cfg=cfg,
                             rig_overrides=args.set, explore=not args.no_explore,
                             progress=lambda s: print(f"episode {s.episodes}: success {s.successes}/{s.episodes}",
                                                      file=sys.stderr, flush=True))
    except DeployStop as e:
        print(f"robolearn finetune: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    st = res["learner_stats"]
    print(f"{args.out}: {res['episodes']} episodes, {res['successes']} successes, {res['steps']} ticks into "
          f"{res['store']}; learner: {st.get('env_steps')} env steps, {st.get('updates')} updates, "
          f"{st.get('interventions')} intervention ticks, residual version {st.get('version')}")
    return 0


def cmd_learner(args: argparse.Namespace) -> int:
    from robolearn.deploy.server import endpoint_of
    from robolearn.rl.learner import run_learner

    run_learner(args.policy, args.out, endpoint_of(args.port, args.bind), args.recipe, args.overrides)
    return 0


def _add_finetune_parser(sub: argparse._SubParsersAction) -> None:
    f = sub.add_parser("finetune", help="residual RL on a frozen base policy (resumable)")
    f.add_argument("--policy", required=True, help="the base: a training run or checkpoint")
    f.add_argument("--rig", required=True, help="sim:TASK (parallel envs), or a rig file hardware/<rig>.yaml "
                                                "(the on-robot actor/learner loop)")
    f.add_argument("--steps", type=int, default=None, help="sim:TASK: env steps in all (a resumed run continues "
                                                            "to this)")
    f.add_argument("--episodes", type=int, default=None, help="on a rig: episodes to run (default 1)")
    f.add_argument("--learner", default=None, help="on a rig: a learner at tcp://HOST:PORT (`robolearn learner`); "
                                                   "default: one started on this machine")
    f.add_argument("--teleop", default=None, help="on a rig: the device that can take over (spacemouse, keyboard, "
                                                  "gamepad, leader, expert on the sim twin); interventions are "
                                                  "flagged and learnt from as demonstrations")
    f.add_argument("--set", action="append", metavar="KEY=VALUE", help="change a rig file's setting (repeatable)")
    f.add_argument("--max-steps", type=int, default=None, help="on a rig: ticks per episode (default: the rig's)")
    f.add_argument("--no-explore", action="store_true", help="on a rig: no exploration noise on the residual")
    f.add_argument("--out", required=True, help="run directory; an existing one is resumed")
    f.add_argument("--reward", default=None, help="dense progress reward (a `reward fit` dir, gvl:URL, clip:PATH); "
                                                  "default: sparse success")
    f.add_argument("--recipe", default="residual_td3", help="recipe name or path (policies/residual_td3.yaml)")
    f.add_argument("--quiet", action="store_true")
    _add_view_flag(f)
    f.add_argument("overrides", nargs="*", help="key=value recipe overrides, e.g. algo=sac utd=2")
    f.set_defaults(func=cmd_finetune)
    lr = sub.add_parser("learner", help="the learner of on-robot residual RL (for `finetune --learner tcp://...`)")
    lr.add_argument("--policy", required=True, help="the base (the same as the actor's)")
    lr.add_argument("--out", required=True, help="run directory (resumed when it holds a learner's state)")
    lr.add_argument("--port", type=int, default=None, help="listen on every interface at this port")
    lr.add_argument("--bind", default=None, help="or an exact ZeroMQ address, e.g. tcp://127.0.0.1:5556")
    lr.add_argument("--recipe", default="residual_td3", help="recipe name or path")
    lr.add_argument("overrides", nargs="*", help="key=value recipe overrides")
    lr.set_defaults(func=cmd_learner)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="robolearn", description="Robot learning: record, train, evaluate, deploy.")
    p.add_argument("--version", action="version", version=f"robolearn {robolearn.__version__}")
    p.add_argument("--debug", action="store_true", help="show the traceback of user errors too")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("record", help="record teleoperated (or scripted-expert) demonstrations into a store")
    r.add_argument("--rig", required=True,
                   help="what to record from: sim:<task> (lift, can, square, stack, or a task YAML) or a rig "
                        "file hardware/<rig>.yaml")
    r.add_argument("--teleop", default=None,
                   help="who drives: expert (sim:<task> default), spacemouse, keyboard, gamepad, leader (a rig "
                        "file's default is its teleop.device), replay:<store>")
    r.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="change a rig file's setting for this run (repeatable), e.g. teleop.path=/dev/hidraw3")
    r.add_argument("--task", default=None, help="task text stored with each episode (default: the rig's task)")
    r.add_argument("--episodes", type=int, default=10, help="successful episodes to record (default 10)")
    r.add_argument("--out", required=True, help="store directory (created or appended to)")
    r.add_argument("--cameras", default="", help="comma-separated cameras, e.g. agentview,robot0_eye_in_hand")
    r.add_argument("--image-size", type=int, default=84, help="square image size in pixels (default 84)")
    r.add_argument("--depth", action="store_true", help="also record depth (uint16 millimetres)")
    r.add_argument("--seed", type=int, default=0, help="first reset seed (default 0)")
    r.add_argument("--keep-failures", action="store_true", help="keep failed attempts, marked success=false")
    r.add_argument("--codec", default="qoi", choices=["qoi", "jpeg"], help="image codec: qoi (lossless) or jpeg")
    r.add_argument("--workers", type=int, default=0,
                   help="processes running attempts (default: one per core, at most 4)")
    r.add_argument("--perturb", default=None, choices=["noise", "early_release", "stall"],
                   help="perturb the expert so attempts fail (kept, counted by --episodes)")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_view_flag(r)
    r.set_defaults(func=cmd_record)

    d = sub.add_parser("data", help="inspect and check demonstration stores")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    di = dsub.add_parser("info", help="episodes, steps, keys, fps, successes, size")
    di.add_argument("store")
    di.add_argument("--json", action="store_true", help="machine-readable output")
    di.set_defaults(func=cmd_data_info)
    dv = dsub.add_parser("verify", help="read every chunk and check the schema (exit 1 on a problem)")
    dv.add_argument("store")
    dv.add_argument("--max-lag", type=float, default=None, metavar="SECONDS",
                    help="also flag ticks where a camera stream has no frame this recent (a stalled camera)")
    dv.set_defaults(func=cmd_data_verify)
    _add_interop_parsers(dsub)
    _add_view_parsers(sub, dsub)

    t = sub.add_parser("train", help="train a diffusion or flow policy on a store")
    t.add_argument("--recipe", required=True,
                   help="training recipe: a YAML file or a built-in name (quickstart, diffusion_lowdim, ...)")
    t.add_argument("--data", required=True, help="demonstration store")
    t.add_argument("--out", required=True, help="run directory")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides, e.g. train.steps=1000")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate policies in simulation")
    e.add_argument("--policy", action="append", help="run directory or checkpoint (repeatable)")
    e.add_argument("--task", help="task name(s), comma-separated")
    e.add_argument("--suite", help="suite: a YAML file (e.g. sim/suites/lift.yaml) or a built-in name")
    e.add_argument("--episodes", type=int, default=50)
    e.add_argument("--n-envs", type=int, default=None,
                   help="environments in all, split over the workers (default 4 per worker)")
    e.add_argument("--workers", type=int, default=None, help="worker processes (default one per core)")
    e.add_argument("--device", default=None, choices=["cpu", "cuda", "auto"],
                   help="where the policy runs (default cpu, or the suite's)")
    e.add_argument("--videos", type=int, default=2, help="episodes to save as MP4 per task and policy")
    e.add_argument("--inference-steps", type=int, default=None,
                   help="override the policy's sampling steps (e.g. DDIM 16, flow 4)")
    e.add_argument("--max-steps", type=int, default=None, help="cap episodes below the task's horizon (quick checks)")
    e.add_argument("--worker-timeout", type=float, default=120.0,
                   help="seconds without progress after which a worker counts as hung (default 120)")
    e.add_argument("--out", required=True, help="output directory")
    e.set_defaults(func=cmd_eval)

    q = sub.add_parser("quickstart", help="run the simulated pipeline end to end on the CPU")
    q.add_argument("--out", required=True, help="output directory")
    q.add_argument("--episodes", type=int, default=20, help="expert demonstrations to record (default 20)")
    q.add_argument("--train-steps", type=int, default=None, help="override the recipe's training steps")
    q.add_argument("--eval-episodes", type=int, default=30,
                   help="evaluation episodes, the same seeds before and after RL (default 30)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--rl-steps", type=int, default=4000, help="residual RL env steps (0: stop after the base)")
    q.add_argument("--failures", type=int, default=10, help="perturbed attempts recorded for the reward model")
    q.add_argument("--reward-steps", type=int, default=800, help="progress-network training steps")
    q.add_argument("--rl-set", action="append", default=[], metavar="key=value",
                   help="override of policies/residual_td3.yaml (repeatable)")
    q.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of policies/quickstart.yaml")
    q.set_defaults(func=cmd_quickstart)
    _add_reward_parser(sub)
    _add_rig_commands(_add_hardware_parser(sub))
    _add_finetune_parser(sub)
    _add_deploy_parser(sub)
    return p


# ---------------------------------------------------------------- deploy, serve, calibrate (robolearn/deploy)


def cmd_deploy(args: argparse.Namespace) -> int:
    from robolearn.deploy.inference import InferenceError
    from robolearn.deploy.loop import DeployConfig, DeployStop
    from robolearn.deploy.run import deploy

    if args.inference_ms is not None and not args.rig.startswith("sim:"):
        raise UserError("--inference-ms sets the simulated inference time of sim:<task> rigs only")
    cfg = DeployConfig(blend=args.blend, compensate=not args.no_compensate, inject_obs_latency_s=args.obs_latency,
                       inject_action_latency_s=args.action_latency, replan_every=args.replan_every,
                       inference_s=None if args.inference_ms is None else args.inference_ms / 1e3,
                       max_steps=args.max_steps, stall_s=args.stall_s)
    try:
        s = deploy(args.rig, args.policy, cfg, episodes=args.episodes, seed=args.seed, record=args.record,
                   inference=args.inference, overrides=args.set, timeout_s=args.server_timeout, view=args.view,
                   progress=lambda s: print(f"episode {s.episodes}: success {s.successes}/{s.episodes}",
                                            file=sys.stderr, flush=True))
    except (DeployStop, InferenceError) as e:
        print(f"robolearn deploy: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    report = {"episodes": s.episodes, "successes": s.successes, "success_rate": s.success_rate,
              "late_dropped": s.late_dropped, "held_ticks": s.held_ticks, "steps": s.steps,
              "store_episodes": s.store_episodes, "per_episode": s.per_episode}
    print(f"success {s.successes}/{s.episodes} ({s.success_rate:.2f}); late actions dropped {s.late_dropped}, "
          f"ticks held {s.held_ticks} of {s.steps}" + (f"; recorded into {args.record}" if args.record else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from robolearn.deploy.server import endpoint_of, serve_policy

    serve_policy(args.policy, endpoint_of(args.port, args.bind), device=args.device, threads=args.threads)
    return 0


def cmd_calibrate_latency(args: argparse.Namespace) -> int:
    from robolearn.deploy.calibrate import calibrate_latency

    est = calibrate_latency(args.rig, args.set, seconds=args.seconds, amplitude=args.amplitude,
                            write=not args.dry_run)
    print(f"action latency {est.action_s * 1e3:.1f} ms (correlation {est.action_correlation:.2f}, "
          f"{est.samples} arm samples)")
    for cam, v in est.camera_s.items():
        print(f"camera {cam}: " + (f"{v * 1e3:.1f} ms" if v is not None else "not measured"))
    for note in est.notes:
        print(f"  {note}")
    if est.written:
        print(f"written into {est.written} (latency.action_s" + (", latency.camera_s" if any(
            v is not None for v in est.camera_s.values()) else "") + ")")
    return 0


def _add_deploy_parser(sub: Any) -> None:
    """``robolearn deploy``, ``serve`` and ``calibrate latency``: a trained policy on a rig."""
    d = sub.add_parser("deploy", help="run a trained policy on a rig (async inference, latency compensation)")
    d.add_argument("--rig", required=True, help="sim:<task> or a rig file hardware/<rig>.yaml")
    d.add_argument("--policy", required=True, help="a run or checkpoint directory, or a policy server tcp://HOST:PORT")
    d.add_argument("--episodes", type=int, default=1)
    d.add_argument("--seed", type=int, default=None, help="first seed (sim and twin; default: the eval seeds)")
    d.add_argument("--record", default=None, metavar="STORE", help="record the rollouts into this store")
    d.add_argument("--blend", default="none", choices=["none", "ensemble", "inpaint"],
                   help="overlapping chunks: replace, temporal ensembling, or inpainting of the overlap")
    d.add_argument("--no-compensate", action="store_true", help="ignore the rig's latencies (for comparison)")
    d.add_argument("--obs-latency", type=float, default=0.0, metavar="S", help="inject observation latency (s)")
    d.add_argument("--action-latency", type=float, default=0.0, metavar="S",
                   help="inject action latency (s; sim rigs and the twin)")
    d.add_argument("--inference-ms", type=float, default=None,
                   help="sim rigs: count each policy call as this long (default: as measured)")
    d.add_argument("--inference", default="auto", choices=["auto", "thread", "process"],
                   help="where a local policy runs: a thread, or a server process of its own (auto: a process "
                        "on real-time rigs, a thread in simulation)")
    d.add_argument("--replan-every", type=int, default=None, metavar="TICKS",
                   help="request a chunk at least this often (default: whenever the last one has landed if a "
                        "latency is compensated, else every n_action_steps of the policy)")
    d.add_argument("--max-steps", type=int, default=None, help="episode limit in ticks (default: the rig's)")
    d.add_argument("--stall-s", type=float, default=1.0, help="a camera silent this long stops the arm")
    d.add_argument("--server-timeout", type=float, default=2.0, metavar="S",
                   help="a policy server silent this long is gone: the arm stops")
    d.add_argument("--set", action="append", metavar="KEY=VALUE", help="change a rig file's setting for this run")
    _add_view_flag(d)
    d.add_argument("--json", default=None, metavar="FILE", help="write the summary as JSON")
    d.set_defaults(func=cmd_deploy)

    s = sub.add_parser("serve", help="serve a policy over ZeroMQ for `deploy --policy tcp://HOST:PORT`")
    s.add_argument("--policy", required=True, help="a run or checkpoint directory")
    s.add_argument("--port", type=int, default=None)
    s.add_argument("--bind", default=None, help="a ZeroMQ address instead of --port, e.g. tcp://127.0.0.1:5555")
    s.add_argument("--device", default="auto", help="cpu, cuda or auto")
    s.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    s.set_defaults(func=cmd_serve)

    c = sub.add_parser("calibrate", help="measure a rig's latencies")
    csub = c.add_subparsers(dest="calibrate_command", required=True, metavar="SUBCOMMAND")
    cl = csub.add_parser("latency", help="action latency (commanded vs measured motion) and camera latency")
    cl.add_argument("--rig", required=True, help="a rig file hardware/<rig>.yaml")
    cl.add_argument("--set", action="append", metavar="KEY=VALUE", help="change a rig file's setting for this run")
    cl.add_argument("--seconds", type=float, default=6.0, help="length of the excitation (default 6)")
    cl.add_argument("--amplitude", type=float, default=0.03, help="excitation amplitude in metres (default 0.03)")
    cl.add_argument("--dry-run", action="store_true", help="measure only; leave the rig file as it is")
    cl.set_defaults(func=cmd_calibrate_latency)


_PATH_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, FileExistsError)


def _user_paths(args: argparse.Namespace) -> list[Path]:
    vals: list[Any] = []
    for v in vars(args).values():
        vals += v if isinstance(v, list) else [v]
    return [Path(v).absolute() for v in vals if isinstance(v, str) and v and "=" not in v]


def _is_user_error(e: BaseException, args: argparse.Namespace) -> bool:
    if isinstance(e, UserError):
        return True
    if isinstance(e, _PATH_ERRORS) and e.filename:
        # A path the user named (or one inside it, e.g. a file in --out) that is missing or not writable.
        f = Path(os.fsdecode(e.filename)).absolute()
        if any(f == p or p in f.parents for p in _user_paths(args)):
            return True
    return False


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("robolearn: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        # User mistakes get one line and exit code 2; anything else is a bug and keeps its traceback.
        if args.debug or not _is_user_error(e, args):
            raise
        msg = f"{e.strerror}: {e.filename}" if isinstance(e, OSError) and e.filename and e.strerror else str(e)
        print(f"robolearn: error: {' '.join(msg.split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
