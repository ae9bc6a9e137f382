"""Reading the YAML files users edit (recipes, suites, tasks, rigs): one place for the errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml


def read_yaml_mapping(path: str | os.PathLike, what: str, expected: str) -> dict[str, Any]:
    """The mapping in YAML file ``path``; a missing file, broken YAML or a non-mapping raises an error
    that names the file and says what was ``expected`` in it."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{p}: invalid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{p}: expected a mapping with {expected}, got {type(raw).__name__}")
    return raw
