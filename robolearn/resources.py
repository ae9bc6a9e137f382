"""Where robolearn finds the files users edit: tasks, suites, recipes and rigs.

The repository's top-level folders are the one source of truth::

    sim/tasks/*.yaml    task definitions     kind "task"    (robolearn record --rig sim:lift)
    sim/suites/*.yaml   evaluation suites    kind "suite"   (robolearn eval --suite lift)
    policies/*.yaml     training recipes     kind "recipe"  (robolearn train --recipe quickstart)
    hardware/*.yaml     rig descriptions     kind "rig"

A wheel carries copies of those folders as ``robolearn/_builtin/{sim,policies,hardware}`` (made by
``setup.py`` at build time, never kept in git); a source checkout or an editable install reads the
folders in place. So ``pip install .`` works from any directory, and editing ``sim/`` in a checkout
takes effect at once.

``resolve(kind, x)`` finds a file, first match wins:

1. ``x`` is an existing file (absolute, or relative to the current directory): that file.
2. ``x`` is a bare name (``lift``, ``quickstart``, ``quickstart.yaml``): ``<dir>/<x>.yaml`` for each
   ``dir`` of ``search_dirs(kind)``:
   - for the ``sim`` kinds, ``$ROBOLEARN_SIM_DIR/<tasks|suites>`` alone when that variable is set;
   - otherwise the current directory's own ``sim/``, ``policies/``, ``hardware/`` folders (a
     project's files shadow the built-in ones of the same name), then the built-in folders.
3. ``x`` is a relative path into one of those folders that does not exist here
   (``policies/quickstart.yaml``, ``sim/suites/lift.yaml``): the same path under each search root,
   so the README's commands run from any directory.

A miss raises a one-line :class:`~robolearn.errors.MissingFileError` listing what is available.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from robolearn.errors import MissingFileError, UserError

SIM_DIR_ENV = "ROBOLEARN_SIM_DIR"
YAML_SUFFIXES = (".yaml", ".yml")
BUILTIN_FOLDERS = ("sim", "policies", "hardware")


@dataclass(frozen=True)
class Kind:
    folder: str  # top-level folder: sim, policies, hardware
    sub: str  # sub-folder inside it ("" for the folder itself)
    noun: str  # "task"
    file_label: str  # "task file"


KINDS: dict[str, Kind] = {
    "task": Kind("sim", "tasks", "task", "task file"),
    "suite": Kind("sim", "suites", "suite", "suite file"),
    "recipe": Kind("policies", "", "recipe", "recipe"),
    "rig": Kind("hardware", "", "rig", "rig file"),
}


def builtin_root() -> Path:
    """The folder holding the built-in ``sim/``, ``policies/``, ``hardware/``: the wheel's
    ``robolearn/_builtin``, or the source checkout's root."""
    packaged = Path(__file__).resolve().parent / "_builtin"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[1]


def _unique(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if not any(p.resolve() == q.resolve() for q in out):
            out.append(p)
    return out


def roots(folder: str) -> list[Path]:
    """The ``folder`` (sim, policies, hardware) directories searched, in order."""
    if folder not in BUILTIN_FOLDERS:
        raise KeyError(f"unknown resource folder {folder!r}; use one of {', '.join(BUILTIN_FOLDERS)}")
    env = os.environ.get(SIM_DIR_ENV)
    if folder == "sim" and env:
        return [Path(env).expanduser()]
    return _unique([Path.cwd() / folder, builtin_root() / folder])


def search_dirs(kind: str) -> list[Path]:
    """The directories a bare ``kind`` name is looked up in, in order (existing ones only)."""
    k = _kind(kind)
    return [d for d in (r / k.sub if k.sub else r for r in roots(k.folder)) if d.is_dir()]


def builtin_dir(kind: str) -> Path:
    """The built-in folder of ``kind`` (``$ROBOLEARN_SIM_DIR/...`` for sim kinds when set)."""
    k = _kind(kind)
    root = roots(k.folder)[-1]
    return root / k.sub if k.sub else root


def available(kind: str) -> list[str]:
    """Names (file stems) of every ``kind`` in :func:`search_dirs`, sorted."""
    names = {p.stem for d in search_dirs(kind) for p in d.iterdir() if p.suffix in YAML_SUFFIXES and p.is_file()}
    return sorted(names)


def resolve(kind: str, name_or_path: str | os.PathLike) -> Path:
    """The file a user means by ``name_or_path`` (see the module docstring for the order)."""
    k = _kind(kind)
    text = os.fspath(name_or_path)
    p = Path(text).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        raise UserError(f"{k.file_label} {p} is a directory, expected a YAML file")
    is_path = "/" in text or os.sep in text or text.endswith(YAML_SUFFIXES)
    if text and not p.is_absolute():
        parts = p.parts
        if len(parts) > 1 and parts[0] == k.folder:
            for root in roots(k.folder):
                candidate = root.joinpath(*parts[1:])
                if candidate.is_file():
                    return candidate
        if len(parts) == 1:
            names = [text] if text.endswith(YAML_SUFFIXES) else [text + s for s in YAML_SUFFIXES]
            for d in search_dirs(kind):
                for n in names:
                    if (d / n).is_file():
                        return d / n
    avail = ", ".join(available(kind)) or "(none)"
    where = ", ".join(str(d) for d in search_dirs(kind)) or str(builtin_dir(kind))
    if is_path:
        raise MissingFileError(f"{k.file_label} not found: {text} (available {k.noun}s: {avail}; in {where})")
    raise MissingFileError(f"unknown {k.noun} {text!r}; available: {avail} (in {where})")


def _kind(kind: str) -> Kind:
    if kind not in KINDS:
        raise KeyError(f"unknown resource kind {kind!r}; use one of {', '.join(KINDS)}")
    return KINDS[kind]


def load_class(spec: str, base: type, what: str) -> type:
    """The class named ``package.module:Class`` (a user's own expert, teleoperator, ...), checked to be
    a subclass of ``base``; a one-line UserError naming ``what`` otherwise."""
    import importlib

    module, _, name = spec.partition(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise UserError(f"{what} {spec!r} cannot be loaded: {e}") from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise UserError(f"{what} {spec!r} is not a {base.__module__}.{base.__name__} subclass")
    return cls
