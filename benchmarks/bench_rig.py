"""Recording on a real-time rig: the whole stack of `hardware/sim_twin.yaml` for one long episode.

Two 640x480 RGB-D cameras at 30 fps (RealSense recordings made with the SDK's software device,
looped, each played by its own camera process at the recorded rate) plus the MuJoCo twin arm
(servo loop at 125 Hz in its controller process, the world in its own), recorded by `record()`
into a store for ``--seconds`` (60 for the README) with a scripted operator replaying actions. Reports:

- frames stored and dropped per camera (frame-number gaps + frames overwritten before stored);
- the recorder's control loop (paced at the rig's control_hz): period p50 / p99 / max and its
  jitter |period - nominal| p50 / p99, ticks stamped when the loop wakes up; and how long the
  observation at the start of each tick takes (the latest frames copied out of the rings);
- the arm's servo loop (125 Hz, in the controller process): the same figures, and per tick its work
  (wake-up to state published) and its wake-up lateness;
- CPU % of a core per process: each camera, the arm controller, the twin world, the store writer,
  the recorder (control loop);
- frame hand-off latency from the camera process (its ``t_host``) to the store writer, p50 / p99;
- bytes stored, and the load average before and after (the machine is shared).

    flock /tmp/robolearn-heavy.lock python benchmarks/bench_rig.py --seconds 60
    flock /tmp/robolearn-heavy.lock python benchmarks/bench_rig.py --seconds 60 --store-dir /dev/shm  # store in RAM
    python benchmarks/bench_rig.py --seconds 5   # a quick check

Real-time figures need the machine's real-time scheduling (root or CAP_SYS_NICE: SCHED_FIFO, negative
nice); do not run it under ``nice``. The store written to a disk delays SCHED_FIFO wake-ups on some
kernels (preempt=none) by milliseconds: ``--store-dir /dev/shm`` separates that from the rig's own.
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

from robolearn.data.schema import EpisodeInfo  # noqa: E402
from robolearn.data.store import DemoStore  # noqa: E402
from robolearn.features import Feature  # noqa: E402
from robolearn.teleop.replay import ReplayTeleop  # noqa: E402

_TICKS = os.sysconf("SC_CLK_TCK")
PIDS: dict[str, int] = {}
ARM_STATS: dict[str, Any] = {}
OBSERVE_S: list[float] = []


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / _TICKS


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


class BenchOperator(ReplayTeleop):
    """Replays the actions; notes the rig's process ids and reads the arm's servo-loop periods at the end."""

    def __init__(self) -> None:
        super().__init__(os.environ["BENCH_RIG_DEMO"])

    def connect(self, rig) -> None:  # noqa: ANN001
        super().connect(rig)
        self.rig = rig
        PIDS.update({f"camera {n}": c.pid for n, c in rig.cameras.items()})
        PIDS["arm controller"] = rig.arm.pid
        observe = rig.observe

        def timed_observe():  # noqa: ANN202 - the control loop's own work at the start of a tick
            t = time.perf_counter()
            try:
                return observe()
            finally:
                OBSERVE_S.append(time.perf_counter() - t)

        rig.observe = timed_observe
        world = children(rig.arm.pid)
        if world:
            PIDS["twin world"] = world[0]

    def reset(self, seed=None) -> None:  # noqa: ANN001
        super().reset(seed)
        self.t0 = {k: cpu_seconds(p) for k, p in PIDS.items()}
        self.t0["recorder (control loop)"] = cpu_seconds(os.getpid())
        self.writer0 = sum(cpu_seconds(c) for c in children(os.getpid())
                           if c not in PIDS.values() and b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes())
        self.t0_wall = time.monotonic()

    def act(self, observation):  # noqa: ANN001, ANN201
        if self._step == len(self.actions[0]) - 1:  # the last tick: CPU and servo periods of the episode
            wall = time.monotonic() - self.t0_wall
            pids = {**PIDS, "recorder (control loop)": os.getpid()}
            for c in children(os.getpid()):  # the one other spawned child is the store writer
                cmd = Path(f"/proc/{c}/cmdline").read_bytes()
                if c not in PIDS.values() and b"spawn_main" in cmd:
                    pids.setdefault("store writer", c)
            # The store writer starts before the episode: its CPU time is counted from the first tick too.
            ARM_STATS["cpu_percent"] = {k: round(100 * (cpu_seconds(p) - self.t0.get(k, self.writer0)) / wall, 1)
                                        for k, p in pids.items()}
            ARM_STATS["wall_s"] = wall
            ARM_STATS["servo"] = self.rig.arm.stats()
        return super().act(observation)


def cpu_times() -> np.ndarray:
    """The machine's CPU time so far by kind (/proc/stat): user, nice, system, idle, iowait, irq, softirq, steal."""
    return np.array(Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9], np.float64)


def period_figures(periods: np.ndarray, hz: float) -> dict[str, float]:
    p = np.asarray(periods, np.float64)
    jitter = np.abs(p - 1.0 / hz)
    return {"n": int(len(p)), "nominal_ms": round(1e3 / hz, 3),
            "period_ms_p50": round(float(np.percentile(p, 50)) * 1e3, 3),
            "period_ms_p99": round(float(np.percentile(p, 99)) * 1e3, 3),
            "period_ms_max": round(float(p.max()) * 1e3, 3),
            "jitter_ms_p50": round(float(np.percentile(jitter, 50)) * 1e3, 3),
            "jitter_ms_p99": round(float(np.percentile(jitter, 99)) * 1e3, 3)}


def tick_figures(servo: dict[str, Any], n: int) -> dict[str, float] | None:
    """The servo ticks' own work (wake-up to state published) and wake-up lateness, ms."""
    if "work" not in servo:
        return None
    out = {}
    for k in ("work", "late"):
        x = np.asarray(servo[k][-n:], np.float64) * 1e3
        out.update({f"{k}_p50": round(float(np.percentile(x, 50)), 3), f"{k}_p99": round(float(np.percentile(x, 99)), 3),
                    f"{k}_max": round(float(x.max()), 3)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--control-hz", type=float, default=20.0, help="the recorder's loop (the sim task's 20 Hz)")
    ap.add_argument("--servo-hz", type=float, default=125.0)
    ap.add_argument("--handoff-seconds", type=float, default=10.0,
                    help="then the two cameras alone to a consumer polling every 0.5 ms (bench_cameras.measure)")
    ap.add_argument("--codec", default="qoi", help="the store's RGB codec (qoi: lossless, jpeg: lossy, ~15x smaller)")
    ap.add_argument("--store-dir", default=None,
                    help="where the store (and recordings) go; default the temp dir. /dev/shm: in memory, no disk")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from robolearn.record import RecordConfig, record
    from robolearn.rigs.playback import make_playback

    out = str(Path(args.out).resolve()) if args.out else None  # before the chdir below
    load = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench_rig_", dir=args.store_dir))
    os.chdir(work)
    make_playback("hardware/sim_twin.yaml", frames=90)
    steps = int(round(args.seconds * args.control_hz))
    with DemoStore.open("demo.zarr", mode="a") as s:  # gentle motion around the start pose
        s.declare_stream("control", {"action": Feature((7,), "float32")})
        t = np.arange(steps) / args.control_hz
        acts = np.zeros((steps, 7), np.float32)
        acts[:, 0] = 0.3 * np.sin(2 * np.pi * t / 4.0)
        acts[:, 1] = 0.3 * np.cos(2 * np.pi * t / 4.0)
        acts[:, 6] = np.where((t // 2) % 2 == 0, -1, 1)
        with s.begin_episode() as w:
            w.extend("control", t, t, action=acts)
            w.commit(EpisodeInfo(task="bench", source="teleop"))
    os.environ["BENCH_RIG_DEMO"] = str(work / "demo.zarr")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    cfg = RecordConfig(rig="hardware/sim_twin.yaml", out=str(work / "bench.zarr"), episodes=1, keep_failures=True, codec=args.codec,
                       teleop="bench_rig:BenchOperator", status=False,
                       rig_overrides=[f"control_hz={args.control_hz}", f"arm.servo_hz={args.servo_hz}",
                                      f"max_episode_s={args.seconds + 5}"])
    print(f"recording {args.seconds:.0f} s on sim_twin: 2 x 640x480 RGB-D at 30 fps + twin arm at "
          f"{args.servo_hz:g} Hz (load average before: {load[0]:.2f}) ...", flush=True)
    t0, cpu0 = time.monotonic(), cpu_times()
    s = record(cfg)
    wall, cpu = time.monotonic() - t0, cpu_times() - cpu0
    import bench_rig  # the operator ran as this module imported by name, with its own globals

    stats = bench_rig.ARM_STATS
    if s.error or s.committed != 1:
        raise SystemExit(f"recording failed: {s.error}")
    from robolearn.data.inspect import verify

    np.save("/tmp/hwrig/late.npy", np.asarray(stats.get("servo", {}).get("late", [])))
    np.save("/tmp/hwrig/ticks.npy", np.asarray(s.tick_periods))
    ok = verify(cfg.out).ok
    servo = stats.get("servo", {})
    periods = np.asarray(servo.get("periods", []), np.float64)
    handoff = np.asarray(s.handoff_s) * 1e3
    res = {
        "machine": machine(), "load_average_before": [round(x, 2) for x in load],
        "load_average_after": [round(x, 2) for x in os.getloadavg()], "seconds": args.seconds, "codec": args.codec,
        "store_dir": str(work.parent), "wall_s": round(wall, 1),
        "frames": s.frames, "dropped_frames": s.dropped_frames, "store_verified": ok,
        "control_loop": period_figures(np.asarray(s.tick_periods), args.control_hz),
        "control_observe_ms": {f"p{q}": round(float(np.percentile(bench_rig.OBSERVE_S, q)) * 1e3, 3) for q in (50, 99, 100)}
        if bench_rig.OBSERVE_S else None,
        "servo_loop": period_figures(periods[-int(args.seconds * args.servo_hz):], args.servo_hz) if len(periods) else None,
        "servo_tick_ms": tick_figures(servo, int(args.seconds * args.servo_hz)),
        "servo_counters": {k: v for k, v in servo.items() if k not in ("periods", "work", "late")},
        "cpu_percent_of_a_core": stats.get("cpu_percent"),
        "handoff_to_writer_ms": {"p50": round(float(np.percentile(handoff, 50)), 2),
                                 "p99": round(float(np.percentile(handoff, 99)), 2),
                                 "max": round(float(handoff.max()), 2)} if len(handoff) else None,
        # Time the hypervisor ran something else on this machine's virtual CPUs (a virtual machine), and
        # time waiting for the disk, as % of all CPU time during the recording.
        "cpu_steal_percent": round(100 * cpu[7] / cpu.sum(), 2), "cpu_iowait_percent": round(100 * cpu[4] / cpu.sum(), 2),
        "store_mb": round(DemoStore.open(cfg.out).size_on_disk() / 1e6, 1),
    }
    if args.handoff_seconds > 0:
        from bench_cameras import measure

        from robolearn.hardware.cameras import open_camera
        from robolearn.rigs.hardware import load_rig_config

        origin = time.time() - time.monotonic()
        cams = [open_camera(c, clock_origin=origin) for c in load_rig_config("hardware/sim_twin.yaml").cameras]
        try:
            m = measure(cams, args.handoff_seconds)
        finally:
            for c in cams:
                c.close()
        res["handoff_to_polling_consumer"] = {n: {k: v for k, v in r.items() if k.startswith(("handoff", "fps", "drop"))}
                                              for n, r in m["streams"].items()}
    for k in ("frames", "dropped_frames", "control_loop", "control_observe_ms", "servo_loop", "servo_tick_ms",
              "cpu_percent_of_a_core", "cpu_steal_percent", "cpu_iowait_percent", "store_mb", "handoff_to_writer_ms",
              "handoff_to_polling_consumer"):
        print(f"{k:28s} {res.get(k)}")
    print(f"load average before {res['load_average_before']}, after {res['load_average_after']}")
    write_json("bench_rig", res, out)
    os.chdir(Path(__file__).resolve().parent)
    import shutil

    shutil.rmtree(work, ignore_errors=True)  # recordings and a ~300 MB store


if __name__ == "__main__":
    main()
