"""Arm controller timing: servo-loop period jitter with the controller process driving the MuJoCo twin
(and an SO-101 on the pseudo-terminal bus), while a client sends actions at the control rate.

    flock /tmp/robolearn-heavy.lock python benchmarks/bench_arm.py --seconds 60 --hz 125

Figures: the servo loop's period p50/p99/max and |period - 1/hz| jitter p50/p99 (ms), overrun ticks,
the client's 20 Hz loop jitter, and CPU per process (controller, twin world) from /proc.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_json  # noqa: E402


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _summary(periods: np.ndarray, hz: float) -> dict[str, float]:
    ms = periods * 1e3
    jitter = np.abs(ms - 1e3 / hz)
    return {
        "ticks": int(len(ms)),
        "period_p50_ms": float(np.percentile(ms, 50)),
        "period_p99_ms": float(np.percentile(ms, 99)),
        "period_max_ms": float(ms.max()),
        "jitter_p50_ms": float(np.percentile(jitter, 50)),
        "jitter_p99_ms": float(np.percentile(jitter, 99)),
        "late_over_2ms_pct": float(100 * np.mean(jitter > 2.0)),
    }


def run(kind: str, hz: float, seconds: float, priority: int | None) -> dict:
    from robolearn.hardware.arms import ArmConfig, SafetyLimits, open_arm

    emulator = None
    if kind == "twin":
        cfg = ArmConfig(
            type="twin",
            task="lift",
            seed=0,
            servo_hz=hz,
            stale_s=5.0,
            realtime_priority=priority,
            limits=SafetyLimits(max_linear_speed=1.5, max_angular_speed=6.0),
        )
    else:
        from robolearn.hardware.arms.bus_emulator import ServoBusEmulator

        emulator = ServoBusEmulator("feetech")
        cfg = ArmConfig(
            type="so101",
            serial_port=emulator.port,
            action="joints",
            servo_hz=hz,
            stale_s=5.0,
            realtime_priority=priority,
        )
    arm = open_arm(cfg)
    pids = {"controller": arm.pid}
    if arm.info.get("world_pid"):
        pids["twin_world"] = arm.info["world_pid"]
    try:
        if kind == "twin":
            arm.reset(0)
        arm.stats()  # discard the start-up ticks
        cpu0 = {k: _cpu_seconds(p) for k, p in pids.items()}
        ticks0 = arm.status()["ticks"]
        t0 = time.monotonic()
        t_next, client_periods, last = t0, [], t0
        k = 0
        while time.monotonic() - t0 < seconds:
            if kind == "twin":  # a slow circle in the horizontal plane, as 7-d sim actions
                a = np.array([0.3 * np.cos(k / 20), 0.3 * np.sin(k / 20), 0, 0, 0, 0, -1.0])
            else:
                a = np.append(0.3 * np.sin(np.full(5, k / 40)), -1.0)
            arm.send_action(a)
            k += 1
            t_next += 0.05
            time.sleep(max(0.0, t_next - time.monotonic()))
            now = time.monotonic()
            client_periods.append(now - last)
            last = now
        wall = time.monotonic() - t0
        cpu = {k: (_cpu_seconds(p) - cpu0[k]) / wall * 100 for k, p in pids.items()}
        stats = arm.stats()
        n = int(stats["ticks"] - ticks0)
        periods = stats["periods"][-n:] if n <= len(stats["periods"]) else stats["periods"]
        out = {
            "arm": kind,
            "servo_hz": hz,
            "realtime_priority": cfg.rt_priority,
            "seconds": round(wall, 1),
            **_summary(periods, hz),
            "overruns": int(stats["overruns"]),
            "client_20hz": _summary(np.array(client_periods[1:]), 20.0),
            "cpu_pct": {k: round(v, 1) for k, v in cpu.items()},
        }
    finally:
        arm.close()
        if emulator is not None:
            emulator.close()
    return out


def fidelity(seeds: int, speed: float = 1.5) -> dict:
    """The scripted expert, closed loop through the controller on the twin at 20 Hz real time, against
    the same expert in the simulator: success and steps to success per seed."""
    from robolearn.hardware.arms import ArmConfig, SafetyLimits, open_arm
    from robolearn.sim.env import make_env
    from robolearn.sim.experts import make_expert
    from robolearn.sim.tasks import load_task

    task = load_task("lift")
    env = make_env("lift")
    arm = open_arm(
        ArmConfig(
            type="twin",
            task="lift",
            seed=0,
            stale_s=5.0,
            watchdog_s=1.0,
            limits=SafetyLimits(max_linear_speed=speed, max_angular_speed=4 * speed),
        )
    )
    rows = []
    try:
        for seed in range(seeds):
            obs, _ = env.reset(seed=seed)
            expert = make_expert(task.expert, np.random.default_rng(seed))
            expert.reset(env)
            sim_steps = None
            for step in range(task.horizon):
                obs, _, _, _, info = env.step(expert.act(env, obs))
                if info["success"]:
                    sim_steps = step + 1
                    break
            arm.reset(seed)
            env.reset(seed=seed)
            expert = make_expert(task.expert, np.random.default_rng(seed))
            expert.reset(env)
            twin_steps, t_last = None, 0.0
            for step in range(task.horizon):
                # Act on each new world state as it comes (the twin steps on its own 20 Hz clock).
                while (state := arm.state())[1] == t_last:
                    time.sleep(0.002)
                values, t_last, _ = state
                arm.send_action(expert.act(env, env.set_state(values["sim_state"])))
                if arm.success():
                    twin_steps = step + 1
                    break
            rows.append({"seed": seed, "sim_steps": sim_steps, "twin_steps": twin_steps})
            print(f"seed {seed}: sim {sim_steps} steps, twin {twin_steps} steps", flush=True)
    finally:
        arm.close()
        env.close()
    return {
        "seeds": seeds,
        "sim_success": sum(r["sim_steps"] is not None for r in rows) / seeds,
        "twin_success": sum(r["twin_steps"] is not None for r in rows) / seeds,
        "rows": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--hz", type=float, nargs="+", default=[125.0])
    ap.add_argument("--arms", nargs="+", default=["twin", "so101"], choices=["twin", "so101"])
    ap.add_argument(
        "--priority",
        nargs="+",
        default=["auto", "0"],
        help="SCHED_FIFO priorities of the servo loop to compare (0: normal scheduling; auto: the default)",
    )
    ap.add_argument("--fidelity", type=int, default=10, help="seeds of the expert-on-twin check (0: skip)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    results: list = []
    report: dict = {"results": results}
    if args.fidelity:
        report["fidelity"] = f = fidelity(args.fidelity)
        print(
            f"expert on lift, {args.fidelity} seeds: sim success {f['sim_success']:.2f}, "
            f"twin (through the controller, real time) {f['twin_success']:.2f}",
            flush=True,
        )
    for kind in args.arms:
        for hz in args.hz:
            for prio in args.priority:
                try:
                    r = run(kind, hz, args.seconds, None if prio == "auto" else int(prio))
                except Exception as e:  # noqa: BLE001 - a configuration that cannot run is a result too
                    results.append({"arm": kind, "servo_hz": hz, "realtime_priority": prio, "error": str(e)})
                    print(f"{kind:6s} {hz:5.0f} Hz rt {prio:4s} failed: {e}", flush=True)
                    continue
                results.append(r)
                print(
                    f"{kind:6s} {hz:5.0f} Hz rt {prio:4s} period p50 {r['period_p50_ms']:.2f} "
                    f"p99 {r['period_p99_ms']:.2f} max {r['period_max_ms']:.1f} ms | jitter p50 "
                    f"{r['jitter_p50_ms']:.3f} p99 {r['jitter_p99_ms']:.2f} ms | >2 ms late "
                    f"{r['late_over_2ms_pct']:.2f}% | overruns {r['overruns']} | cpu {r['cpu_pct']}",
                    flush=True,
                )
                write_json(
                    "bench_arm", {"machine": {**machine(), "loadavg": os.getloadavg()}, **report}, args.out
                )


if __name__ == "__main__":
    main()
