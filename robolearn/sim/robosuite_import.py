"""Importing robosuite: lazily (it takes ~1 s), once, without its macro-file nag; seeded global RNG."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np


class _MacroWarningFilter(logging.Filter):
    """Drops only robosuite's 'no private macro file' nag; every other robosuite log record passes."""

    _PREFIXES = (
        "No private macro file found",
        "It is recommended to use a private macro file",
        "To setup, run:",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not (msg.startswith(self._PREFIXES) and ("macro" in msg))


# Installed at import so the filter also applies if robosuite is first imported elsewhere later on.
logging.getLogger("robosuite_logs").addFilter(_MacroWarningFilter())
_robosuite: Any = None


def import_robosuite() -> Any:
    """Import robosuite lazily (it takes ~1 s), without its macro-file nag."""
    global _robosuite
    if _robosuite is None:
        with warnings.catch_warnings():
            # robosuite logs that nag via the deprecated Logger.warn.
            warnings.filterwarnings(
                "ignore", message=".*'warn' method is deprecated", category=DeprecationWarning
            )
            import robosuite

        _robosuite = robosuite
    return _robosuite


@contextlib.contextmanager
def np_global_seed(seed: int) -> Iterator[None]:
    """Seed numpy's global RNG (robosuite samples placements from it) and restore the caller's state after."""
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(saved)
