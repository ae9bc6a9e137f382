"""Loader throughput: training windows per second from the on-disk store vs an in-memory baseline.

Windows: 2 cameras at 96x96 + low-dim state, n_obs_steps 2, horizon 16, batch 64, as float32
tensors ready for a policy. The in-memory baseline decodes everything into NumPy first and runs the
very same window/collate code, so the ratio isolates the cost of reading from disk.

    python benchmarks/bench_loader.py [--episodes 40] [--seconds 8] [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, ensure_store, machine, write_json  # noqa: E402

from robolearn.data.dataset import WindowDataset, make_loader  # noqa: E402

CAMERAS = ["agentview", "robot0_eye_in_hand"]
OBS = ["robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object", "agentview_image", "robot0_eye_in_hand_image"]


def windows_per_second(ds: WindowDataset, workers: int, batch: int, seconds: float) -> float:
    loader = make_loader(ds, batch_size=batch, num_workers=workers, seed=0)
    n, t0, started = 0, 0.0, False
    while True:
        for i, b in enumerate(loader):
            if not started and i == 3:  # warm-up: worker start-up and first batches
                t0, started, n = time.perf_counter(), True, 0
            elif started:
                n += b["action"].shape[0]
                if time.perf_counter() - t0 > seconds:
                    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=40)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--store", default=str(RESULTS / "loader_store.zarr"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    store = ensure_store(Path(args.store), args.episodes, CAMERAS, 96)
    kw = dict(obs_keys=OBS, action_key="action", n_obs_steps=2, horizon=16, n_action_steps=8, split="all")
    disk = WindowDataset(store, **kw)
    mem = WindowDataset(store, in_memory=True, **kw)
    res = {"windows": len(disk), "batch_size": args.batch_size, "machine": machine()}
    # Interleaved, so drift on a noisy machine hits all variants alike.
    runs = {"memory_1proc": (mem, 0), "disk_1proc": (disk, 0), "disk_2workers": (disk, 2)}
    for rnd in range(2):
        for name, (ds, workers) in runs.items():
            wps = windows_per_second(ds, workers, args.batch_size, args.seconds / 2)
            res.setdefault(name, []).append(wps)
            print(f"round {rnd}: {name:14s} {wps:8.0f} windows/s", flush=True)
    for name in runs:
        res[name] = sum(res[name]) / len(res[name])
    res["ratio_disk_2workers_vs_memory"] = res["disk_2workers"] / res["memory_1proc"]
    res["ratio_disk_1proc_vs_memory"] = res["disk_1proc"] / res["memory_1proc"]
    print(f"in-memory baseline {res['memory_1proc']:.0f} w/s | on-disk 1 proc {res['disk_1proc']:.0f} w/s "
          f"({res['ratio_disk_1proc_vs_memory']:.2f}x) | on-disk 2 workers {res['disk_2workers']:.0f} w/s "
          f"({res['ratio_disk_2workers_vs_memory']:.2f}x; target >= 0.8x)")
    write_json("loader", res, args.out)


if __name__ == "__main__":
    main()
