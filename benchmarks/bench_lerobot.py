"""robolearn store vs LeRobotDataset: training windows per second on the same episodes, and the round trip.

Both sides serve the same windows from the same recorded lift episodes (2 cameras 96x96 + low-dim state):
n_obs_steps 2 (frames t-1, t of every camera and state key) and horizon 16 (actions t-1 .. t+14), batch 64,
shuffled, the same number of DataLoader workers. The LeRobot side is the store exported by
`robolearn data export` (video-backed, AV1 as lerobot writes it), read by `LeRobotDataset` with
`delta_timestamps` and lerobot's own default decoder (torchcodec); the store side is `WindowDataset`.

- cold: the first pass over the data from a new dataset and new workers (no decoded frame cached);
- warm: passes after it, until --seconds have passed.

The round trip store -> LeRobot -> store is timed and checked: episodes, actions and low-dim keys exact,
images as PSNR over every frame.

    python benchmarks/bench_lerobot.py [--episodes 20] [--workers 2] [--seconds 20] [--out FILE]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import RESULTS, ensure_store, machine, write_json  # noqa: E402

from robolearn.data.dataset import WindowDataset, make_loader  # noqa: E402
from robolearn.data.store import DemoStore  # noqa: E402
from robolearn.interop.lerobot import export_lerobot, import_lerobot, lerobot_modules, psnr  # noqa: E402

CAMERAS = ["agentview", "robot0_eye_in_hand"]
LOWDIM = ["robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object"]
N_OBS, HORIZON = 2, 16


def passes(loader, seconds: float, max_batches: int | None = None) -> dict[str, float]:
    """Windows/s over the first pass (cold) and over the passes after it (warm)."""
    t0, n = time.perf_counter(), 0
    for i, b in enumerate(loader):
        n += len(b["action"])
        if max_batches and i + 1 >= max_batches:
            break
    cold = n / (time.perf_counter() - t0)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for i, b in enumerate(loader):
            n += len(b["action"])
            if time.perf_counter() - t0 > seconds or (max_batches and i + 1 >= max_batches):
                break
    return {"cold": cold, "warm": n / (time.perf_counter() - t0)}


def lerobot_loader(root: Path, repo_id: str, fps: int, batch: int, workers: int):
    lr = lerobot_modules()
    dt = [k / fps for k in range(-(N_OBS - 1), 1)]
    delta = {f"observation.images.{c}": dt for c in CAMERAS}
    delta.update({"observation.state": dt, "observation.environment_state": dt,
                  "action": [k / fps for k in range(-(N_OBS - 1), HORIZON - (N_OBS - 1))]})
    ds = lr["LeRobotDataset"](repo_id, root=root, delta_timestamps=delta)  # video_backend: lerobot's default
    gen = torch.Generator().manual_seed(0)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                                         generator=gen, persistent_workers=workers > 0,
                                         prefetch_factor=4 if workers else None)
    return ds, loader


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=20.0, help="warm measurement time per side")
    ap.add_argument("--lerobot-batches", type=int, default=0,
                    help="cap LeRobot passes at this many batches (0: whole passes)")
    ap.add_argument("--store", default=str(RESULTS / "lerobot_store.zarr"))
    ap.add_argument("--out", default=None)
    ap.add_argument("--reuse-export", action="store_true", help="keep the last run's export and round-trip figures")
    args = ap.parse_args()
    torch.set_num_threads(1)
    store_path = ensure_store(Path(args.store), args.episodes, CAMERAS, 96)
    store = DemoStore.open(store_path)
    res: dict = {"machine": machine(), "store_path": str(store_path), "episodes": store.n_episodes,
                 "frames": int(store.episode_lengths().sum()), "workers": args.workers, "batch_size": args.batch_size,
                 "n_obs_steps": N_OBS, "horizon": HORIZON, "lerobot": lerobot_modules()["version"]}

    # --- round trip: store -> LeRobot -> store
    lr_root, back = RESULTS / "lerobot_export" / "robolearn" / "lift", RESULTS / "lerobot_roundtrip.zarr"
    if args.reuse_export:
        import json

        last = json.loads((Path(args.out) if args.out else RESULTS / "lerobot.json").read_text())
        res["round_trip"] = last["round_trip"]
        measure_loaders(res, store_path, lr_root, int(round(store.episode_info(0).fps)), args)
        return
    shutil.rmtree(lr_root, ignore_errors=True)
    shutil.rmtree(back, ignore_errors=True)
    rep = export_lerobot(store_path, lr_root, repo_id="robolearn/lift")
    print(rep.summary(), flush=True)
    imp = import_lerobot(lr_root, back)
    b = DemoStore.open(back)
    exact = all(np.array_equal(store.read(k, e), b.read(k, e)) for e in range(store.n_episodes)
                for k in ["action", *LOWDIM])
    scores = {}
    for cam in CAMERAS:
        key = f"{cam}_image"
        ref = np.concatenate([store.read_episode(e, [key])[key] for e in range(store.n_episodes)])
        got = np.concatenate([b.read_episode(e, [key])[key] for e in range(store.n_episodes)])
        scores[key] = psnr(ref, got)
    size = sum(f.stat().st_size for f in lr_root.rglob("*") if f.is_file())
    res["round_trip"] = {"export_s": rep.seconds, "import_s": imp.seconds, "episodes_equal": b.n_episodes == store.n_episodes,
                         "lengths_equal": bool(np.array_equal(b.episode_lengths(), store.episode_lengths())),
                         "actions_lowdim_exact": bool(exact), "psnr_db": scores,
                         "store_mb": store.size_on_disk() / 2**20, "lerobot_mb": size / 2**20}
    print(f"round trip: export {rep.seconds:.1f}s, import {imp.seconds:.1f}s, actions+low-dim exact: {exact}, "
          f"PSNR " + ", ".join(f"{k} {v:.1f} dB" for k, v in scores.items())
          + f"; store {res['round_trip']['store_mb']:.1f} MB, LeRobot {res['round_trip']['lerobot_mb']:.1f} MB",
          flush=True)
    write_json("lerobot", res, args.out)
    measure_loaders(res, store_path, lr_root, rep.fps, args)


def measure_loaders(res: dict, store_path: Path, lr_root: Path, fps: int, args: argparse.Namespace) -> None:
    """Loader throughput, the same windows on both sides."""
    kw = dict(obs_keys=[*LOWDIM, *(f"{c}_image" for c in CAMERAS)], action_key="action", n_obs_steps=N_OBS,
              horizon=HORIZON, n_action_steps=8, split="all")
    ours = WindowDataset(store_path, **kw)
    res["store_windows"] = len(ours)
    res["store"] = passes(make_loader(ours, args.batch_size, num_workers=args.workers, seed=0), args.seconds)
    print(f"store      cold {res['store']['cold']:8.0f}  warm {res['store']['warm']:8.0f} windows/s", flush=True)
    write_json("lerobot", res, args.out)
    ds, loader = lerobot_loader(lr_root, "robolearn/lift", fps, args.batch_size, args.workers)
    res["lerobot_windows"] = len(ds)
    res["lerobotdataset"] = passes(loader, args.seconds, args.lerobot_batches or None)
    print(f"LeRobot    cold {res['lerobotdataset']['cold']:8.0f}  warm {res['lerobotdataset']['warm']:8.0f} windows/s "
          f"(decoder: {ds.video_backend})", flush=True)
    res["lerobot_video_backend"] = ds.video_backend
    res["speedup"] = {p: res["store"][p] / res["lerobotdataset"][p] for p in ("cold", "warm")}
    print(f"store / LeRobotDataset: cold {res['speedup']['cold']:.1f}x, warm {res['speedup']['warm']:.1f}x "
          f"(target >= 5x)", flush=True)
    write_json("lerobot", res, args.out)


if __name__ == "__main__":
    main()
