"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import write_synth_store


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
