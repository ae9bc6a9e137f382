"""What an evaluation leaves behind: report.json, summary.md, a success-vs-checkpoint plot, MP4 videos."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a success rate; sane at 0/n and n/n, unlike the normal approximation."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def write_mp4(path: str | os.PathLike, frames: Sequence[np.ndarray], fps: float = 20.0) -> None:
    import cv2

    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"cannot write video {path}: OpenCV has no MP4 encoder")
    for f in frames:
        writer.write(np.ascontiguousarray(f[..., ::-1]))
    writer.release()


def write_report(
    results: list[dict[str, Any]], out_dir: str | os.PathLike, name: str = "eval"
) -> dict[str, Any]:
    """report.json and summary.md (a table per task and checkpoint, the plot, links to the videos)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {"name": name, "results": results}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    lines = [
        f"# Evaluation: {name}",
        "",
        "| task | checkpoint | success | 95% CI | episodes | mean length | ms/chunk | episodes/min |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ms = f"{r['inference_ms_per_chunk']:.1f}" if r["inference_ms_per_chunk"] is not None else "-"
        epm = f"{r['episodes_per_minute']:.1f}" if r.get("episodes_per_minute") else "-"
        lines.append(
            f"| {r['task']} | `{r['checkpoint']}` | {r['success_rate']:.2f} | "
            f"[{r['wilson95'][0]:.2f}, {r['wilson95'][1]:.2f}] | {r['episodes']} | "
            f"{r['mean_episode_length']:.1f} | {ms} | {epm} |"
        )
    plot = _plot_checkpoints(results, out)
    if plot:
        lines += ["", f"![success vs checkpoint]({plot.name})"]
    videos = [v for r in results for v in r["videos"]]
    if videos:
        lines += ["", "Videos: " + ", ".join(f"[{Path(v).name}]({_rel(v, out)})" for v in videos)]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    return report


def _rel(path: str, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return path


def _plot_checkpoints(results: list[dict[str, Any]], out: Path) -> Path | None:
    """Success vs checkpoint step, one line per task, when a run contributes several checkpoints."""
    series: dict[str, list[tuple[int, float, float, float]]] = {}
    for r in results:
        m = re.search(r"step[_-]?(\d+)", Path(r["checkpoint"]).name)
        if m:
            lo, hi = r["wilson95"]
            series.setdefault(r["task"], []).append((int(m.group(1)), r["success_rate"], lo, hi))
    if not any(len(v) > 1 for v in series.values()):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for task, pts in sorted(series.items()):
        pts.sort()
        x = [p[0] for p in pts]
        ax.plot(x, [p[1] for p in pts], marker="o", label=task)
        ax.fill_between(x, [p[2] for p in pts], [p[3] for p in pts], alpha=0.2)
    ax.set_xlabel("training step")
    ax.set_ylabel("success rate")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    path = out / "success_vs_checkpoint.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
