"""The cost of a live view (`--view`) on a real-time control loop: period jitter with and without it.

The loop is the one `record` runs (``robolearn.rollout.run_episode``), paced on the wall clock at the
task's 20 Hz, driven by the scripted expert. Rounds alternate, side by side in one run, between no view
and a live view writing an .rrd (``save:``; the logging thread does the same work for a spawned or
served viewer, which only adds a socket):

- ``sim`` (default): the simulated lift rig rendering two cameras online (``--image-size``, RGB + depth),
  episodes held to the task's 200-tick horizon;
- ``synthetic``: the same paced loop around a fixed 5 ms of numpy work per tick, with two 640x480 RGB-D
  "cameras" giving a new frame every tick: the view's cost at real-camera sizes, without the simulator's
  own CPU load (the loop has slack, so the jitter is scheduling plus what the view adds);
- ``twin``: `robolearn record` on ``hardware/sim_twin.yaml`` (the MuJoCo twin arm in its processes, two
  640x480 RGB-D playback cameras at 30 fps, the store-writer process), the realistic and heavy case.

Reports per arm: control period p50 / p99 / max, jitter |period - 50 ms| p50 / p99, ticks later than
2 ms, CPU of this process, and for the view its logged and dropped views.

    flock /tmp/robolearn-heavy.lock nice -n 19 python benchmarks/bench_view.py --rounds 3
    flock /tmp/robolearn-heavy.lock python benchmarks/bench_view.py --mode synthetic --rounds 4
    python benchmarks/bench_view.py --rounds 1 --ticks 60   # a quick check
    flock /tmp/robolearn-heavy.lock python benchmarks/bench_view.py --mode twin --seconds 20 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_json  # noqa: E402


def figures(periods: list[float], hz: float) -> dict[str, Any]:
    p = np.asarray(periods, np.float64)
    jitter = np.abs(p - 1.0 / hz)
    return {"ticks": int(len(p)),
            "period_ms_p50": round(float(np.percentile(p, 50)) * 1e3, 2),
            "period_ms_p99": round(float(np.percentile(p, 99)) * 1e3, 2),
            "period_ms_max": round(float(p.max()) * 1e3, 2),
            "jitter_ms_p50": round(float(np.percentile(jitter, 50)) * 1e3, 3),
            "jitter_ms_p99": round(float(np.percentile(jitter, 99)) * 1e3, 3),
            "late_2ms_percent": round(100 * float(np.mean(jitter > 0.002)), 2)}


def sim_round(view_spec: str | None, ticks: int, image_size: int, seed: int) -> dict[str, Any]:
    from robolearn.rigs import make_rig
    from robolearn.rollout import run_episode
    from robolearn.teleop import make_teleop
    from robolearn.viz.live import make_view

    periods: list[float] = []
    with make_rig("sim:lift", cameras=["agentview", "robot0_eye_in_hand"], image_size=image_size, depth=True) as rig:
        expert = make_teleop("expert")
        expert.connect(rig)
        view = None if view_spec is None else make_view(view_spec, features=rig.features,
                                                        action_names=rig.action_feature.names)
        t0 = time.monotonic()
        on_step = None
        call_s: list[float] = []  # what the loop itself spends handing a tick to the view
        call_cpu: list[float] = []
        if view is not None:
            def on_step(i: int, obs: Any, action: Any, result: Any) -> None:
                c0, u0 = time.perf_counter(), time.thread_time()
                view.log_tick(time.monotonic() - t0, obs, action=action,
                              scalars={"success": float(bool(result.success))})
                call_s.append(time.perf_counter() - c0)
                call_cpu.append(time.thread_time() - u0)
        cpu0 = time.process_time()
        done = 0
        while done < ticks:
            ep = run_episode(rig, expert, seed=seed, max_steps=min(200, ticks - done), hold_steps=200,
                             on_step=on_step, realtime=True)
            periods += np.diff(ep.tick_times).tolist()
            done += ep.steps
            seed += 1
        cpu = time.process_time() - cpu0
        wall = time.monotonic() - t0
        out = figures(periods, rig.control_hz)
        out["cpu_percent_of_a_core"] = round(100 * cpu / wall, 1)
        if view is not None:
            view.close()
            out["views"] = {"ticks": view.ticks, "logged": view.logged_ticks, "dropped": view.dropped_views}
            out.update(_call_figures(call_s, call_cpu))
    return out


class _SyntheticRig:
    """A paced loop's worth of rig: new 640x480 RGB-D frames for two cameras every tick, 5 ms of work."""

    control_hz = 20.0

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.rgb = [rng.integers(0, 255, (480, 640, 3), np.uint8) for _ in range(4)]
        self.depth = [rng.integers(0, 5000, (480, 640), np.uint16) for _ in range(4)]
        self.work = rng.normal(size=(160, 160))

    def features(self) -> dict[str, Any]:
        from robolearn.features import Feature

        cam = {k: Feature((480, 640, 3), "uint8", "rgb") for k in ("front_image", "wrist_image")}
        return {"front": {"front_image": cam["front_image"],
                          "front_depth": Feature((480, 640), "uint16", "depth", depth_scale=0.001)},
                "wrist": {"wrist_image": cam["wrist_image"],
                          "wrist_depth": Feature((480, 640), "uint16", "depth", depth_scale=0.0001)}}

    def observe(self, i: int, t: float) -> dict[str, Any]:
        from robolearn.rigs.base import Sample

        # Fresh arrays every tick, as camera processes hand out (a copy out of their ring).
        obs = {"control": Sample({"robot0_eef_pos": np.full(3, i * 1e-3, np.float32),
                                  "robot0_joint_pos": np.zeros(7, np.float32)}, t, t)}
        for cam in ("front", "wrist"):
            obs[cam] = Sample({f"{cam}_image": self.rgb[i % 4].copy(), f"{cam}_depth": self.depth[i % 4].copy()}, t, t)
        return obs

    def step(self) -> None:
        t_end = time.perf_counter() + 0.005
        while time.perf_counter() < t_end:
            self.work = np.tanh(self.work @ self.work.T * 1e-3)


def synthetic_round(view_spec: str | None, ticks: int) -> dict[str, Any]:
    from robolearn.viz.live import make_view

    rig = _SyntheticRig()
    view = None if view_spec is None else make_view(view_spec, features=rig.features())
    period = 1.0 / rig.control_hz
    ticks_t, call_s, call_cpu = [], [], []
    cpu0, t0 = time.process_time(), time.monotonic()
    t_next = t0
    for i in range(ticks):
        now = time.monotonic()
        if t_next > now:
            time.sleep(t_next - now)
        elif now - t_next > period:
            t_next = now
        t_next += period
        ticks_t.append(time.monotonic())
        obs = rig.observe(i, ticks_t[-1])
        rig.step()
        if view is not None:
            c0, u0 = time.perf_counter(), time.thread_time()
            view.log_tick(ticks_t[-1] - t0, obs, action=np.zeros(7, np.float32), scalars={"reward": 0.0})
            call_s.append(time.perf_counter() - c0)
            call_cpu.append(time.thread_time() - u0)
    out = figures(np.diff(ticks_t).tolist(), rig.control_hz)
    out["cpu_percent_of_a_core"] = round(100 * (time.process_time() - cpu0) / (time.monotonic() - t0), 1)
    if view is not None:
        view.close()
        out["views"] = {"ticks": view.ticks, "logged": view.logged_ticks, "dropped": view.dropped_views}
        out.update(_call_figures(call_s, call_cpu))
    return out


def _call_figures(wall: list[float], cpu: list[float]) -> dict[str, Any]:
    w, c = np.asarray(wall) * 1e6, np.asarray(cpu) * 1e6
    return {"log_tick_us": {"p50": round(float(np.percentile(w, 50)), 1), "p99": round(float(np.percentile(w, 99)), 1),
                            "max": round(float(w.max()), 1)},
            "log_tick_cpu_us": {"p50": round(float(np.percentile(c, 50)), 1),
                                "p99": round(float(np.percentile(c, 99)), 1)}}


def twin_round(view_spec: str | None, seconds: float, work: Path, k: int) -> dict[str, Any]:
    import bench_rig

    from robolearn.record import RecordConfig, record

    cfg = RecordConfig(rig="hardware/sim_twin.yaml", out=str(work / f"bench{k}.zarr"), episodes=1, keep_failures=True,
                       teleop="bench_rig:BenchOperator", status=False, view=view_spec,
                       rig_overrides=[f"max_episode_s={seconds + 5}"])
    cpu0 = time.process_time()
    t0 = time.monotonic()
    s = record(cfg)
    if s.error or s.committed != 1:
        raise SystemExit(f"recording failed: {s.error}")
    out = figures(s.tick_periods, 20.0)
    out["cpu_percent_of_a_core"] = round(100 * (time.process_time() - cpu0) / (time.monotonic() - t0), 1)
    out["frames"], out["dropped_frames"] = s.frames, s.dropped_frames
    out["servo_loop"] = {k: v for k, v in bench_rig.ARM_STATS.get("servo", {}).items() if k != "periods"}
    return out


def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [row[key] for row in rows if key in row]
    return round(float(np.median(vals)), 3) if vals else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=["sim", "synthetic", "twin"], default="sim")
    ap.add_argument("--rounds", type=int, default=3, help="alternating (no view, view) pairs")
    ap.add_argument("--ticks", type=int, default=400, help="sim: control ticks per arm per round")
    ap.add_argument("--seconds", type=float, default=20.0, help="twin: seconds per arm per round")
    ap.add_argument("--image-size", type=int, default=128, help="sim: camera size")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    out = str(Path(args.out).resolve()) if args.out else None
    load = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench_view_"))
    if args.mode == "twin":  # bench_rig's replaying operator and recordings
        from bench_rig import DemoStore, EpisodeInfo, Feature

        from robolearn.rigs.playback import make_playback

        os.chdir(work)
        make_playback("hardware/sim_twin.yaml", frames=90)
        steps = int(args.seconds * 20)
        with DemoStore.open("demo.zarr", mode="a") as s:
            s.declare_stream("control", {"action": Feature((7,), "float32")})
            t = np.arange(steps) / 20.0
            acts = np.zeros((steps, 7), np.float32)
            acts[:, 0], acts[:, 1] = 0.3 * np.sin(2 * np.pi * t / 4.0), 0.3 * np.cos(2 * np.pi * t / 4.0)
            with s.begin_episode() as w:
                w.extend("control", t, t, action=acts)
                w.commit(EpisodeInfo(task="bench", source="teleop"))
        os.environ["BENCH_RIG_DEMO"] = str(work / "demo.zarr")
    arms: dict[str, list[dict[str, Any]]] = {"no view": [], "view (save:.rrd)": []}
    print(f"{args.mode}: {args.rounds} rounds, load average before {load[0]:.2f}", flush=True)
    for r in range(args.rounds):
        for arm, spec in (("no view", None), ("view (save:.rrd)", f"save:{work / f'view{r}.rrd'}")):
            if args.mode == "sim":
                res = sim_round(spec, args.ticks, args.image_size, seed=100 * r)
            elif args.mode == "synthetic":
                res = synthetic_round(spec, args.ticks)
            else:
                res = twin_round(spec, args.seconds, work, 2 * r + (spec is not None))
            res["load_average"] = round(os.getloadavg()[0], 2)
            arms[arm].append(res)
            print(f"round {r} {arm:18s} {res}", flush=True)
            write_json(f"bench_view_{args.mode}", {"machine": machine(), "mode": args.mode, "args": vars(args),
                                                   "load_average_before": load, "rounds": arms}, out)
    summary = {}
    for arm, rows in arms.items():
        summary[arm] = {k: _median(rows, k) for k in ("jitter_ms_p50", "jitter_ms_p99", "period_ms_max",
                                                      "late_2ms_percent", "cpu_percent_of_a_core")}
        if any("log_tick_us" in row for row in rows):
            summary[arm]["log_tick_us_p50"] = _median([r["log_tick_us"] for r in rows], "p50")
            summary[arm]["log_tick_us_p99_max"] = max(row["log_tick_us"]["p99"] for row in rows)
            summary[arm]["log_tick_cpu_us_p50"] = _median([r["log_tick_cpu_us"] for r in rows], "p50")
            summary[arm]["views_dropped"] = sum(row["views"]["dropped"] for row in rows)
        print(f"{arm:18s} median over rounds: {summary[arm]}")
    rrds = sorted(work.glob("view*.rrd"))
    summary["rrd_mb_per_round"] = round(np.mean([p.stat().st_size for p in rrds]) / 1e6, 1) if rrds else None
    print(f"load average after {os.getloadavg()[0]:.2f}")
    write_json(f"bench_view_{args.mode}", {"machine": machine(), "mode": args.mode, "args": vars(args),
                                           "load_average_before": load, "load_average_after": os.getloadavg(),
                                           "rounds": arms, "summary": summary}, out)
    import shutil

    os.chdir(Path(__file__).resolve().parent)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
