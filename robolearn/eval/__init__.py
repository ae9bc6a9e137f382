"""Policy evaluation: batched rollouts in worker processes, fixed seeds, reports and videos.

``evaluate(checkpoint, task)`` is what ``robolearn eval`` runs; ``run_suite(load_suite(path), out)``
evaluates a suite file; ``write_report`` writes report.json and summary.md.
"""

from robolearn.eval.report import wilson_interval, write_mp4, write_report
from robolearn.eval.runner import EVAL_SEED_BASE, EvalFailed, eval_seeds, evaluate, resolve_checkpoint
from robolearn.eval.suite import SuiteConfig, load_suite, run_suite

__all__ = [
    "EVAL_SEED_BASE",
    "EvalFailed",
    "SuiteConfig",
    "eval_seeds",
    "evaluate",
    "load_suite",
    "resolve_checkpoint",
    "run_suite",
    "wilson_interval",
    "write_mp4",
    "write_report",
]
