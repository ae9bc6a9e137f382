"""Shared helpers for the benchmark scripts (not part of the package)."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def ensure_store(path: Path, episodes: int, cameras: list[str], size: int, task: str = "lift") -> Path:
    """A store of expert demonstrations recorded with robolearn itself, reused when present."""
    from robolearn.data.store import DemoStore
    from robolearn.record import RecordConfig, record

    if path.exists():
        try:
            if DemoStore.open(path).n_episodes >= episodes:
                return path
        except Exception:  # noqa: BLE001 - rebuild a broken cache
            pass
        import shutil

        shutil.rmtree(path)
    print(f"recording {episodes} {task} episodes with {cameras} at {size}px into {path} ...", flush=True)
    record(RecordConfig(rig=f"sim:{task}", out=str(path), episodes=episodes, cameras=cameras, image_size=size))
    return path


def _plain(o: Any) -> Any:
    """NumPy arrays and scalars in a benchmark's figures, as JSON lists and numbers."""
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def write_json(name: str, data: dict[str, Any], out: str | None = None) -> Path:
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=_plain))
    print(f"wrote {path}")
    return path
