"""Expert collection throughput of `robolearn record`: env steps/s into the store, end to end.

Side by side in one run: without cameras and with 2 cameras (agentview + wrist, 84x84), each with
1 and 2 attempt processes. Cameras are rendered after the rollout from the saved MuJoCo states, and
only for kept attempts. Env-level figures (online rendering vs re-rendering) are in bench_sim.py.

    python benchmarks/bench_record.py [--task lift] [--episodes 30] [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, write_json  # noqa: E402

from robolearn.record import RecordConfig, record  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="lift")
    ap.add_argument("--episodes", type=int, default=30)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    res = {"task": args.task, "episodes": args.episodes, "machine": machine(), "runs": {}}
    for cams in ([], ["agentview", "robot0_eye_in_hand"]):
        for workers in (1, 2):
            name = f"{'2cam_84' if cams else 'no_camera'}_{workers}proc"
            with tempfile.TemporaryDirectory() as tmp:
                s = record(RecordConfig(rig=f"sim:{args.task}", out=f"{tmp}/s.zarr", episodes=args.episodes,
                                        cameras=cams, image_size=84, workers=workers))
            res["runs"][name] = {"steps": s.steps, "seconds": s.seconds, "steps_per_s": s.steps_per_second,
                                 "episodes_per_s": s.committed / s.seconds, "rollout_s": s.rollout_seconds,
                                 "render_s": s.render_seconds, "write_s": s.write_seconds}
            print(f"{name:16s} {s.steps_per_second:7.1f} steps/s  {s.committed / s.seconds:5.2f} episodes/s  "
                  f"(rollout {s.rollout_seconds:.1f}s, render {s.render_seconds:.1f}s, write {s.write_seconds:.1f}s, "
                  f"wall {s.seconds:.1f}s)", flush=True)
    write_json("record", res, args.out)


if __name__ == "__main__":
    main()
