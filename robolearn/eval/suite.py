"""Suite files: tasks x policies evaluated on the same fixed seeds, into one report."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robolearn.config import read_yaml_mapping
from robolearn.errors import UserError
from robolearn.eval.report import write_report
from robolearn.eval.runner import EVAL_SEED_BASE, evaluate


@dataclass
class SuiteConfig:
    name: str
    tasks: list[str]
    policies: list[str]
    episodes: int = 50
    n_envs: int | None = None  # environments in all; None: the runner's default
    workers: int | None = None  # processes; None: one per core
    videos: int = 2
    seed_base: int = EVAL_SEED_BASE
    device: str = "cpu"


def load_suite(path: str | os.PathLike) -> SuiteConfig:
    p = Path(path)
    raw = read_yaml_mapping(p, "suite file", "tasks and policies")
    allowed = set(SuiteConfig.__dataclass_fields__)
    unknown = set(raw) - allowed
    if unknown:
        raise UserError(f"{p}: unknown field(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    raw.setdefault("name", p.stem)
    for key in ("tasks", "policies"):
        if not isinstance(raw.get(key), list) or not raw[key] or not all(isinstance(x, str) for x in raw[key]):
            raise UserError(f"{p}: field {key!r} must be a non-empty list of strings")
    for key in ("episodes", "n_envs", "workers", "videos", "seed_base"):
        v = raw.get(key)
        if key in raw and v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise UserError(f"{p}: field {key!r} must be a non-negative integer")
    if raw.get("device", "cpu") not in ("cpu", "cuda", "auto"):
        raise UserError(f"{p}: field 'device' must be cpu, cuda or auto, got {raw['device']!r}")
    base = p.parent
    # policy paths are relative to the suite file's folder or the working directory
    raw["policies"] = [str(x if Path(x).is_absolute() or Path(x).exists() else base / x) for x in raw["policies"]]
    return SuiteConfig(**raw)


def run_suite(suite: SuiteConfig, out_dir: str | os.PathLike, **overrides: Any) -> dict[str, Any]:
    """Every policy on every task, each on the suite's seeds; ``overrides`` go to ``evaluate``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for policy in suite.policies:
        for task in suite.tasks:
            kw = dict(episodes=suite.episodes, n_envs=suite.n_envs, workers=suite.workers, videos=suite.videos,
                      out_dir=out, seed_base=suite.seed_base, device=suite.device)
            results.append(evaluate(policy, task, **{**kw, **overrides}))
    return write_report(results, out, suite.name)
