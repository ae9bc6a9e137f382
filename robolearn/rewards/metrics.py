"""How good a progress model is: value-order correlation (VOC), reversed-clip VOC, success AUROC.

VOC (from GVL) is the Spearman rank correlation between predicted progress and time on a successful
episode, averaged over episodes: an expert moves steadily towards the goal, so a good model's
progress rises with time. On the same clip played backwards it must fall (``voc_reversed`` near -1);
a model that merely counts frames, or trusts the first frame to be the start, scores near +1 there.
AUROC is how well the episode-level success probability (or, for models without one, the final
progress) separates successes from failures: the figure that catches a model rating a stalled
near-miss as done.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from robolearn.errors import UserError
from robolearn.rewards.base import ProgressModel


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing their average rank."""
    x = np.asarray(x, dtype=np.float64)
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    return (upper - (counts - 1) / 2.0)[inv]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation of two sequences, NaN pairs dropped; 0 when either is constant."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ok = ~(np.isnan(a) | np.isnan(b))
    a, b = a[ok], b[ok]
    if len(a) < 2:
        return float("nan")
    ra, rb = average_ranks(a) - (len(a) + 1) / 2, average_ranks(b) - (len(b) + 1) / 2
    den = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / den) if den > 0 else 0.0


def voc(progress: np.ndarray) -> float:
    """Value-order correlation of one clip: Spearman of progress with the frame index."""
    p = np.asarray(progress, dtype=np.float64)
    return spearman(p, np.arange(len(p)))


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve of ``scores`` for positive ``labels`` (ties count half); NaN scores
    are dropped; NaN when a class is empty."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    ok = ~np.isnan(s)
    s, y = s[ok], y[ok]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if not n_pos or not n_neg:
        return float("nan")
    r = average_ranks(s)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _nanmean(xs: list[float]) -> float | None:
    v = [x for x in xs if x == x]
    return float(np.mean(v)) if v else None


def episode_kind(info: Any) -> str:
    p = info.notes.get("perturb") if isinstance(info.notes, dict) else None
    return f"{p['kind'] if p else info.source}_{'success' if info.success else 'failure'}"


def read_clip(store: Any, episode: int, camera: str | None, proprio_keys: Sequence[str]) -> tuple[np.ndarray, dict]:
    """Frames of ``camera`` aligned onto control ticks and the proprioception a model reads."""
    key = image_key(store, camera)
    data = store.read_episode(episode, [key, *proprio_keys])
    return data[key], {k: data[k] for k in proprio_keys}


def image_key(store: Any, camera: str | None) -> str:
    rgb = [k for k, (_, spec) in store.keys.items() if spec.kind == "rgb"]
    if not rgb:
        raise UserError(f"{store.path} has no camera images; record with --cameras")
    if camera is None:
        return sorted(rgb)[0]
    key = camera if camera in rgb else f"{camera}_image"
    if key not in rgb:
        raise UserError(f"{store.path} has no camera {camera!r}; cameras: {', '.join(sorted(rgb))}")
    return key


def score_store(model: ProgressModel, data: str | Path | Any, out: str | Path | None = None,
                episodes: Sequence[int] | None = None, camera: str | None = None, plots: int = 12,
                reversed_clips: bool = True) -> dict[str, Any]:
    """Score ``episodes`` of a store (all by default): VOC, reversed-clip VOC, AUROC, per-kind means,
    scoring cost; with ``out``, ``out/scores.json`` and progress-curve plots."""
    from robolearn.data.store import DemoStore

    store = data if isinstance(data, DemoStore) else DemoStore.open(data)
    eps = list(range(store.n_episodes)) if episodes is None else list(episodes)
    if not eps:
        raise UserError(f"{store.path}: no episodes to score")
    rows, t_score, n_frames = [], 0.0, 0
    for ep in eps:
        info = store.episode_info(ep)
        frames, proprio = read_clip(store, ep, camera, model.proprio_keys)
        t0 = time.perf_counter()
        s = model.score(frames, info.task, proprio or None)
        t_score += time.perf_counter() - t0
        n_frames += len(frames)
        row = {"episode": ep, "success": bool(info.success), "kind": episode_kind(info), "length": len(frames),
               "voc": voc(s.progress), "final_progress": _last_judged(s.progress), "success_prob": s.success,
               "missing": int(s.info.get("missing", s.missing)), "progress": s.progress,
               "curve": np.asarray(s.info.get("dense", s.progress))}
        if reversed_clips and info.success:
            if model.markov:  # each frame scored on its own: the reversed clip's scores are these, reversed
                rev = s.progress[::-1]
            else:
                t0 = time.perf_counter()
                rev = model.score(frames[::-1].copy(), info.task,
                                  {k: v[::-1].copy() for k, v in proprio.items()} or None).progress
                t_score += time.perf_counter() - t0
                n_frames += len(frames)
            row["voc_reversed"] = voc(rev)
        rows.append(row)
    succ = [r for r in rows if r["success"]]
    labels = [r["success"] for r in rows]
    has_head = any(r["success_prob"] == r["success_prob"] for r in rows)
    ep_scores = [r["success_prob"] if has_head else r["final_progress"] for r in rows]
    by_kind: dict[str, dict[str, Any]] = {}
    for r in rows:
        k = by_kind.setdefault(r["kind"], {"n": 0, "final_progress": [], "success_prob": []})
        k["n"] += 1
        k["final_progress"].append(r["final_progress"])
        k["success_prob"].append(r["success_prob"])
    for k in by_kind.values():
        k["final_progress"] = _nanmean(k["final_progress"])
        k["success_prob"] = _nanmean(k["success_prob"])
    result: dict[str, Any] = {
        "model": model.provenance(),
        "store": str(store.path),
        "voc": _nanmean([r["voc"] for r in succ]),
        "voc_reversed": _nanmean([r.get("voc_reversed", float("nan")) for r in succ]),
        "auroc": auroc(ep_scores, labels),
        "auroc_from": "success_head" if has_head else "final_progress",
        "auroc_final_progress": auroc([r["final_progress"] for r in rows], labels),
        "n_success": len(succ),
        "n_failure": len(rows) - len(succ),
        "n_frames": n_frames,
        "missing_frames": int(sum(r["missing"] for r in rows)),
        "ms_per_frame": 1000.0 * t_score / max(n_frames, 1),
        "by_kind": by_kind,
        "episodes": [{k: v for k, v in r.items() if k not in ("progress", "curve")} for r in rows],
    }
    for k in ("auroc", "auroc_final_progress"):
        if result[k] != result[k]:
            result[k] = None
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "scores.json").write_text(json.dumps(result, indent=2, default=_json_default))
        if plots:
            plot_curves(rows, out, plots, title=model.provenance().get("backend", model.name))
    return result


def _last_judged(p: np.ndarray) -> float:
    ok = np.flatnonzero(~np.isnan(p))
    return float(p[ok[-1]]) if len(ok) else float("nan")


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o).__name__)


def plot_curves(rows: list[dict], out: Path, n: int, title: str) -> list[Path]:
    """``curves.png`` (every episode over normalised time) and one PNG per episode for the first ``n``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        p = r["curve"]  # sparse backends (GVL) plot their interpolation between judged frames
        ax.plot(np.linspace(0, 1, len(p)), p, color="tab:green" if r["success"] else "tab:red", alpha=0.5, lw=1)
    ax.set(xlabel="normalised time", ylabel="predicted progress", ylim=(-0.05, 1.05),
           title=f"{title}: successes (green), failures (red)")
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=80)
    plt.close(fig)
    paths.append(out / "curves.png")
    picked = [r for r in rows if r["success"]][: (n + 1) // 2]
    picked += [r for r in rows if not r["success"]][: n - len(picked)]
    for r in picked:
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.plot(r["curve"], color="tab:green" if r["success"] else "tab:red")
        judged = np.flatnonzero(~np.isnan(r["progress"]))
        if len(judged) < len(r["progress"]):
            ax.plot(judged, r["progress"][judged], "o", ms=3, color="k")
        sp = r["success_prob"]
        ax.set(xlabel="step", ylabel="progress", ylim=(-0.05, 1.05),
               title=f"episode {r['episode']} ({r['kind']}): VOC {r['voc']:.2f}"
                     + (f", P(success) {sp:.2f}" if sp == sp else ""))
        fig.tight_layout()
        path = out / f"episode_{r['episode']:05d}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        paths.append(path)
    return paths
