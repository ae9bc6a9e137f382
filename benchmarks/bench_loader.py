"""Loader throughput: training windows per second from the on-disk store vs an in-memory baseline.

Windows: 2 cameras at 96x96 + low-dim state, n_obs_steps 2, horizon 16, batch 64, as the tensors a
policy takes (images uint8, low-dim float32). The in-memory baseline decodes every frame into NumPy
up front and runs the very same window/collate code, so the ratio isolates the cost of the store.

Measured per configuration (one process, 2 DataLoader workers) and per phase:
- cold: the first pass over the data, every frame read from its shard and decoded;
- warm: later passes, served by the loader's decoded-frame cache (bounded, per process).

    python benchmarks/bench_loader.py [--episodes 40] [--seconds 6] [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import RESULTS, ensure_store, machine, write_json  # noqa: E402

from robolearn.data.dataset import WindowDataset, make_loader  # noqa: E402

CAMERAS = ["agentview", "robot0_eye_in_hand"]
OBS = ["robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object", "agentview_image", "robot0_eye_in_hand_image"]


def measure(ds: WindowDataset, workers: int, batch: int, seconds: float) -> dict[str, float]:
    """Windows/s over the first full pass (cold) and over passes after it (warm)."""
    loader = make_loader(ds, batch_size=batch, num_workers=workers, seed=0)
    t0 = time.perf_counter()
    n = sum(b["action"].shape[0] for b in loader)
    cold = n / (time.perf_counter() - t0)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for b in loader:
            n += b["action"].shape[0]
    warm = n / (time.perf_counter() - t0)
    return {"cold": cold, "warm": warm}


class _Constant(torch.utils.data.Dataset):
    """Returns a ready batch of the real shapes and dtypes: what torch's worker IPC alone allows."""

    def __init__(self, batch: dict, n: int) -> None:
        self.batch, self.n = batch, n

    def __len__(self) -> int:
        return self.n

    def __getitems__(self, idx: list[int]) -> dict:
        return {"obs": {k: v.clone() for k, v in self.batch["obs"].items()}, "action": self.batch["action"].clone()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=40)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--store", default=str(RESULTS / "loader_store.zarr"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    store = ensure_store(Path(args.store), args.episodes, CAMERAS, 96)
    kw = dict(obs_keys=OBS, action_key="action", n_obs_steps=2, horizon=16, n_action_steps=8, split="all")
    res = {"store": str(store), "windows": len(WindowDataset(store, **kw)), "batch_size": args.batch_size,
           "machine": machine()}
    configs = {
        "memory_1proc": (True, 0), "disk_1proc": (False, 0),
        "memory_2workers": (True, 2), "disk_2workers": (False, 2),
    }
    for name, (in_memory, workers) in configs.items():
        ds = WindowDataset(store, in_memory=in_memory, **kw)  # fresh: empty frame cache
        res[name] = measure(ds, workers, args.batch_size, args.seconds)
        print(f"{name:16s} cold {res[name]['cold']:8.0f}  warm {res[name]['warm']:8.0f} windows/s", flush=True)
    sample = WindowDataset(store, in_memory=True, **kw)
    ceiling = _Constant(sample.__getitems__(list(range(args.batch_size))), len(sample))
    res["ipc_ceiling_2workers"] = measure(ceiling, 2, args.batch_size, args.seconds)["warm"]
    print(f"{'ipc_ceiling_2w':16s} {res['ipc_ceiling_2workers']:8.0f} windows/s (ready-made batches, 2 workers: "
          "the most torch's worker IPC can pass here)", flush=True)
    base = res["memory_1proc"]["warm"]
    res["ratios"] = {
        "disk_2workers_vs_memory_1proc": {p: res["disk_2workers"][p] / base for p in ("cold", "warm")},
        "disk_2workers_vs_memory_2workers": {p: res["disk_2workers"][p] / res["memory_2workers"]["warm"]
                                             for p in ("cold", "warm")},
        "disk_1proc_vs_memory_1proc": {p: res["disk_1proc"][p] / base for p in ("cold", "warm")},
    }
    for k, v in res["ratios"].items():
        print(f"{k:34s} cold {v['cold']:.2f}x  warm {v['warm']:.2f}x")
    write_json("loader", res, args.out)


if __name__ == "__main__":
    main()
