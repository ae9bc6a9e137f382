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
