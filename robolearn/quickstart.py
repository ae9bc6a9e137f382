"""`robolearn quickstart`: the simulated pipeline end to end on a CPU.

Today: collect expert demonstrations and summarise the store. Training, evaluation, reward fitting
and residual RL join here as they land.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from robolearn.data.inspect import format_info, info
from robolearn.data.record import RecordConfig, record


def quickstart(out: str | os.PathLike, episodes: int = 20, seed: int = 0, task: str = "lift") -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    store = out / "demos.zarr"
    print(f"[1/1] recording {episodes} expert demonstrations of sim:{task} into {store}")
    summary = record(RecordConfig(rig=f"sim:{task}", out=str(store), episodes=episodes, seed=seed,
                                  cameras=["agentview"], image_size=84))
    print(f"      {summary.committed} episodes, {summary.steps} steps in {summary.seconds:.1f}s "
          f"({summary.steps_per_second:.0f} steps/s)")
    d = info(store)
    print(format_info(d))
    report = {"store": str(store), "record": {k: v for k, v in summary.__dict__.items() if k != "episode_indices"},
              "store_info": d}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(f"report: {out / 'report.json'}")
    return report
