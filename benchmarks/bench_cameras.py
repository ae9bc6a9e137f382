"""Camera hand-off: RGB-D streams from camera processes through shared memory to one consumer.

Two 640x480 RGB-D cameras at 30 fps, each a RealSense recording (built here with the SDK's software
device and recorder, looped) played by its own camera process at the recorded rate, non-real-time.
The consumer takes every frame (``frames_since``, copied out as a recorder would) and measures:

- hand-off latency: the consumer seeing a frame minus the camera process receiving it (``t_host``),
  p50 / p99 / max, polling every 0.5 ms;
- CPU % of each camera process (user + system time from /proc over the run) and of the consumer;
- frames delivered vs expected and dropped frames (frame-number gaps and ring overruns).

    python benchmarks/bench_cameras.py --seconds 60            # the README figures
    python benchmarks/bench_cameras.py --seconds 5 --size 64x48  # a quick check

``measure(streams, seconds)`` is the reusable part (``bench_rig.py`` can call it with its own streams).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, write_json  # noqa: E402

from robolearn.hardware.cameras import CameraConfig, CameraStream, open_camera  # noqa: E402
from robolearn.hardware.cameras.playback import RecordedFrame, write_recording  # noqa: E402
from robolearn.rigs import RigError  # noqa: E402

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def make_recording(path: Path, frames: int, width: int, height: int, fps: int) -> Path:
    """A synthetic RGB-D recording (moving noise texture, a depth ramp); reused when present."""
    if path.exists():
        return path
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    ramp = (np.linspace(400, 2000, width, dtype=np.float32)[None, :] + np.zeros((height, 1), np.float32))

    def gen():
        for i in range(frames):
            yield RecordedFrame(np.roll(base, 4 * i, axis=1), i, 1.7e12 + i * 1000.0 / fps,
                                (ramp + 10 * i).astype(np.uint16))

    print(f"recording {frames} frames {width}x{height} into {path} ...", flush=True)
    tmp = path.with_name(path.stem + ".partial.db3")
    write_recording(tmp, gen(), width, height, fps, depth_scale=0.001)
    return tmp.replace(path)  # whole or not at all: a cached recording is reused


def measure(streams: list[CameraStream], seconds: float, poll_s: float = 0.0005) -> dict[str, Any]:
    """Take every frame of ``streams`` for ``seconds``; latency, CPU and drop figures per stream."""
    last: dict[str, int | None] = {s.name: None for s in streams}
    lat: dict[str, list[float]] = {s.name: [] for s in streams}
    count = {s.name: 0 for s in streams}
    gaps = {s.name: 0 for s in streams}
    prev_host: dict[str, float | None] = {s.name: None for s in streams}
    max_interval = {s.name: 0.0 for s in streams}
    for s in streams:
        s.frames_since()  # start from now
        s.reset_dropped()
        last[s.name] = s.latest().frame_number
    cpu0 = {s.name: cpu_seconds(s.pid) for s in streams}
    me0, t0 = time.process_time(), time.time()
    error = None
    while time.time() - t0 < seconds and error is None:
        for s in streams:
            try:
                new = s.frames_since(last[s.name])
            except RigError as e:  # a stall is a finding: report it with the figures so far
                error = str(e)
                break
            now = time.time() - (s.clock_origin or 0.0)
            for f in new:
                if last[s.name] is not None and f.frame_number != last[s.name] + 1:
                    gaps[s.name] += f.frame_number - last[s.name] - 1
                lat[s.name].append(now - f.t_host)
                if prev_host[s.name] is not None:
                    max_interval[s.name] = max(max_interval[s.name], f.t_host - prev_host[s.name])
                prev_host[s.name] = f.t_host
                last[s.name] = f.frame_number
            count[s.name] += len(new)
        time.sleep(poll_s)
    wall = time.time() - t0
    out: dict[str, Any] = {"error": error, "seconds": round(wall, 2), "consumer_cpu_pct": round(100 * (time.process_time() - me0) / wall, 1),
                           "streams": {}}
    for s in streams:
        ms = np.asarray(lat[s.name]) * 1000
        out["streams"][s.name] = {
            "frames": count[s.name], "expected": int(round(wall * s.cfg.fps)),
            "fps": round(count[s.name] / wall, 2),
            "dropped_frames": s.dropped_frames, "frame_number_gaps": gaps[s.name],
            "handoff_ms_p50": round(float(np.percentile(ms, 50)), 3) if len(ms) else None,
            "handoff_ms_p99": round(float(np.percentile(ms, 99)), 3) if len(ms) else None,
            "handoff_ms_max": round(float(ms.max()), 3) if len(ms) else None,
            "max_frame_interval_ms": round(1000 * max_interval[s.name], 1),
            "camera_process_cpu_pct": round(100 * (cpu_seconds(s.pid) - cpu0[s.name]) / wall, 1),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--size", default="640x480", help="WxH")
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--cameras", type=int, default=2)
    ap.add_argument("--recording-frames", type=int, default=150, help="frames per recording (it loops)")
    ap.add_argument("--timeout", type=float, default=0.5, help="stall timeout_s of the cameras")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/bench_cameras.json)")
    args = ap.parse_args()
    w, h = (int(x) for x in args.size.lower().split("x"))
    rec = make_recording(RESULTS / "cache" / f"rgbd_{w}x{h}_{args.fps}_{args.recording_frames}.db3",
                         args.recording_frames, w, h, args.fps)
    origin = time.time()
    streams = [open_camera(CameraConfig(name=f"cam{i}", type="playback", path=rec, width=w, height=h, fps=args.fps,
                                        depth=True, align_depth=False, loop=True, playback_speed=1.0,
                                        timeout_s=args.timeout),
                           clock_origin=origin)
               for i in range(args.cameras)]
    try:
        res = measure(streams, args.seconds)
    finally:
        for s in streams:
            s.close()
    res = {"benchmark": "bench_cameras", "machine": machine(), "cameras": args.cameras, "size": [w, h],
           "fps": args.fps, "depth": True, "align_depth": False, "source": "RealSense recording (.db3) playback, "
           "non-real-time at the recorded rate, looped", "command": " ".join(["python", *sys.argv]), **res}
    for name, r in res["streams"].items():
        print(f"{name}: {r['frames']}/{r['expected']} frames ({r['fps']} fps), dropped {r['dropped_frames']}, "
              f"gaps {r['frame_number_gaps']}; hand-off p50 {r['handoff_ms_p50']} ms, p99 {r['handoff_ms_p99']} ms, "
              f"max {r['handoff_ms_max']} ms; longest frame interval {r['max_frame_interval_ms']} ms; camera process CPU {r['camera_process_cpu_pct']}%")
    print(f"consumer CPU {res['consumer_cpu_pct']}% over {res['seconds']} s"
          + (f"; stopped early: {res['error']}" if res["error"] else ""))
    write_json("bench_cameras", res, args.out)


if __name__ == "__main__":
    main()
