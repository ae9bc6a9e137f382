"""Shared fixtures, and the CPU turns of the parallel suite."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import write_synth_store

# Under pytest-xdist the suite runs two processes (pyproject.toml). Tests marked ``realtime`` run loops with
# deadlines (an arm's stale-state limit, a servo bus's status timeout, a camera's stall timeout) that a
# second test saturating the other core can make them miss, as no real arm's own controller would. So a
# realtime test takes the CPU alone: it holds an exclusive lock, every other test a shared one, from its
# setup (module fixtures included) to its teardown. A turnstile lock makes a waiting realtime test block
# new shared holders, so it is not starved by the other process's stream of short tests.


def _lock(path: Path, mode: int) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, mode)
    return fd


@contextmanager
def _cpu_turn(exclusive: bool) -> Iterator[None]:
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if not run:  # one process: nothing runs beside this test
        yield
        return
    base = Path(os.environ.get("TMPDIR", "/tmp")) / f"robolearn-pytest-{run}"
    gate = _lock(base.with_suffix(".gate"), fcntl.LOCK_EX)
    try:
        fd = _lock(base.with_suffix(".lock"), fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
    finally:
        os.close(gate)
    try:
        yield
    finally:
        os.close(fd)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    with _cpu_turn(item.get_closest_marker("realtime") is not None):
        yield


@pytest.fixture
def synth_store(tmp_path: Path) -> tuple[Path, list[dict]]:
    path = tmp_path / "synth.zarr"
    eps = write_synth_store(path, [30, 7, 45, 1, 22])
    return path, eps


@pytest.fixture
def one_thread():
    """Tiny models: one torch thread is faster than several waiting on each other on a busy 2-core machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
