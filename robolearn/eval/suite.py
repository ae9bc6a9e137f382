"""Suite files: tasks x policies evaluated on the same fixed seeds, into one report."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from robolearn.config import load_yaml_config
from robolearn.eval.report import write_report
from robolearn.eval.runner import EVAL_SEED_BASE, evaluate


@dataclass
class SuiteConfig:
    """A suite file (``sim/suites/*.yaml``), read by the typed loader of :mod:`robolearn.config`."""

    tasks: list[str] = field(metadata={"nonempty": True})
    # Run directories or checkpoints, relative to the suite file's folder or the working directory.
    policies: list[str] = field(metadata={"nonempty": True})
    name: str = ""  # default: the file's name
    episodes: int = field(default=50, metadata={"min": 1})
    n_envs: int | None = field(default=None, metadata={"min": 1})  # environments in all; None: runner default
    workers: int | None = field(default=None, metadata={"min": 1})  # processes; None: one per core
    videos: int = field(default=2, metadata={"min": 0})
    seed_base: int = field(default=EVAL_SEED_BASE, metadata={"min": 0})
    device: Literal["cpu", "cuda", "auto"] = "cpu"


def load_suite(path: str | os.PathLike) -> SuiteConfig:
    """Read and check a suite file; one-line errors name the file and key."""
    p = Path(path)
    suite = load_yaml_config(SuiteConfig, p, "suite file")
    base = p.parent
    policies = [str(x if Path(x).is_absolute() or Path(x).exists() else base / x) for x in suite.policies]
    return replace(suite, name=suite.name or p.stem, policies=policies)


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
