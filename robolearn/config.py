"""Typed configuration: the YAML files users edit (tasks, recipes, suites, rigs) read into dataclasses.

One loader for every config file, driven by the dataclass's type hints, so a new field is picked
up by declaring it. Mistakes are one-line :class:`~robolearn.errors.ConfigError`\\ s naming the file
and the dotted key, raised before any expensive work::

    policies/x.yaml: policy.unet.down_dims: expected a list of integers, got 5
    sim/tasks/mine.yaml: unknown key 'colour'; allowed: name, env_name, instruction, horizon, ...
    override train.steps=0: must be >= 1, got 0

Declaring a config::

    @dataclass
    class SuiteConfig:
        name: str = field(metadata={"nonempty": True})           # required: no default
        tasks: list[str] = field(default_factory=list)
        episodes: int = field(default=50, metadata={"min": 1})   # range checked
        sampler: Literal["ddim", "ddpm"] = "ddim"                # a choice
        policies: dict[str, Path] | None = None
        source: Path | None = field(default=None, metadata={"internal": True})  # never read from YAML

        def validate(self) -> None:                              # cross-field checks, after the fields
            if ...: raise ConfigError("...", key="episodes")

    suite = load_yaml_config(SuiteConfig, "sim/suites/lift.yaml", "suite file", overrides=["episodes=10"])
    suite = load_config(SuiteConfig, {"name": "x", ...}, where="sim/suites/lift.yaml")

Types understood: nested dataclasses (a mapping in YAML), ``int`` (``true`` is not an int), ``float``
(also YAML 1.1's dot-less ``3e-4``, which YAML reads as a string), ``str``, ``bool``, ``Path``,
``list[T]``, ``tuple[T, ...]``, fixed ``tuple[A, B]``, ``dict[K, V]``, ``X | None``, unions,
``Literal[...]`` and ``Any``. Field metadata: ``min``/``max`` (inclusive) and ``gt``/``lt``
(exclusive) bounds on numbers (on each item of a list of numbers), ``choices`` (allowed values),
``nonempty`` (strings, lists, mappings), ``internal`` (filled in by code, refused in YAML).
After its fields, each dataclass's ``validate()`` runs, if it has one; it raises
``ConfigError(message, key="field")`` and the loader adds the section and file to the message.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import os
import re
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePath
from typing import Any, Literal, TypeVar, Union

import yaml

from robolearn.errors import ConfigError, MissingFileError, UserError, join_key

T = TypeVar("T")

__all__ = [
    "ConfigError", "apply_overrides", "check_config", "config_errors_at", "load_config", "load_yaml_config",
    "read_yaml_mapping", "yaml11_float",
]


# ----------------------------------------------------------------------------- reading files


def read_yaml_mapping(path: str | os.PathLike, what: str, expected: str) -> dict[str, Any]:
    """The mapping in YAML file ``path``; a missing file, broken YAML or a non-mapping raises a
    ``UserError`` that names the file and says what was ``expected`` in it (``what`` names the file's
    role, e.g. "recipe": "recipe not found: x.yaml")."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{what} {p} is a directory, expected a YAML file")
    if not p.is_file():
        raise MissingFileError(f"{what} not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML: {' '.join(str(e).split())}", where=str(p)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{what} {p} cannot be read: {getattr(e, 'strerror', None) or e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a mapping with {expected}, got {_type_name(raw)}", where=str(p))
    return raw


def load_yaml_config(cls: type[T], path: str | os.PathLike, what: str, overrides: Sequence[str] = ()) -> T:
    """Read YAML file ``path`` (a ``what``, e.g. "suite file"), apply ``key=value`` overrides and build
    dataclass ``cls`` from it; every error is one line naming the file (or the override) and key."""
    raw = read_yaml_mapping(path, what, f"{cls.__name__} fields")
    return load_config(cls, raw, where=str(path), overrides=overrides)


def load_config(cls: type[T], raw: Any, where: str = "", *, prefix: str = "",
                overrides: Sequence[str] = ()) -> T:
    """Build dataclass ``cls`` from mapping ``raw`` (after ``key=value`` ``overrides``), checking keys,
    types, ranges and ``validate()`` hooks, nested sections included.

    ``where`` names the source in errors (a file); ``prefix`` is the dotted key of ``raw`` inside
    it (e.g. ``"policy"`` when ``raw`` is the policy section of a recipe)."""
    with config_errors_at(where, overrides):
        raw = apply_overrides(raw, overrides) if overrides else raw
        return _convert(cls, raw, prefix)


@contextmanager
def config_errors_at(where: str, overrides: Sequence[str] = ()) -> Iterator[None]:
    """Put ``where`` (a file) into the ConfigErrors raised inside, or the ``key=value`` override that
    set the offending key: a typo on the command line is reported as such, not as the file's."""
    try:
        yield
    except ConfigError as e:
        if not e.where:
            item = _blamed_override(e.blame_key or e.key, overrides)
            if item is not None:
                okey = item.split("=", 1)[0].strip()
                e.relocate(where=f"override {item}", key=e.key if e.key != okey else "")
            elif overrides:  # a check across keys, some of which may come from the overrides
                e.relocate(where=f"{where} with {' '.join(overrides)}" if where else f"with {' '.join(overrides)}")
            else:
                e.relocate(where=where)
        raise


def _blamed_override(key: str, overrides: Sequence[str]) -> str | None:
    for item in reversed(overrides):  # the last override of a key is the one that counts
        okey = item.split("=", 1)[0].strip()
        if okey and (key == okey or key.startswith((okey + ".", okey + "["))):
            return item
    return None


# ----------------------------------------------------------------------------- overrides


def _coerce(value: str) -> Any:
    """``key=value`` overrides are YAML scalars or flow collections: numbers, booleans, lists."""
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``raw`` with each ``a.b.c=value`` applied (value parsed as YAML: ``[1, 2]``, ``3e-4``,
    ``true``). Sections are created as needed; whether the keys exist is the loader's business."""
    out = copy.deepcopy(dict(raw))
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError("not key=value (e.g. train.steps=1000)", where=f"override {item!r}")
        node = out
        for i, p in enumerate(parts[:-1]):
            if p not in node or node[p] is None:
                node[p] = {}
            if not isinstance(node[p], dict):
                raise ConfigError(f"{'.'.join(parts[: i + 1])!r} is a value, not a section", where=f"override {item}")
            node = node[p]
        node[parts[-1]] = _coerce(value)
    return out


# ----------------------------------------------------------------------------- type-driven conversion


_SCI_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def yaml11_float(v: Any) -> Any:
    """YAML 1.1 reads ``3e-4`` (no dot) as a string; for a float field everyone means the number."""
    return float(v) if isinstance(v, str) and _SCI_FLOAT.match(v) else v


_YAML11_BOOLS = {False: ("no", "off", "false", "n"), True: ("yes", "on", "true", "y")}


def _bool_spelling(value: Any, choices: Sequence[Any]) -> Any:
    """YAML 1.1 reads ``no``/``off``/``yes``/``on`` as booleans; where the allowed strings include exactly
    one spelling of that boolean (``mixed_precision: no``), the user meant that string."""
    if not isinstance(value, bool):
        return value
    spelled = [c for c in choices if isinstance(c, str) and c.lower() in _YAML11_BOOLS[value]]
    return spelled[0] if len(spelled) == 1 else value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(v: Any) -> str:
    return {type(None): "null", bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a mapping"}.get(type(v), type(v).__name__)


def _show(v: Any) -> str:
    text = {None: "null", True: "true", False: "false"}.get(v, None) if isinstance(v, bool | None) else repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


_SINGULAR_PLURAL = {bool: ("true or false", "booleans"), int: ("an integer", "integers"),
                    float: ("a number", "numbers"), str: ("a string", "strings")}


def describe(tp: Any, plural: bool = False) -> str:
    """Human words for a type hint: ``list[int]`` -> "a list of integers"."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp in _SINGULAR_PLURAL:
        return _SINGULAR_PLURAL[tp][plural]
    if tp is Any:
        return "values" if plural else "any value"
    if origin in (Union, types.UnionType):
        opts = [describe(a, plural) for a in args if a is not type(None)]
        return " or ".join(opts) + (" or null" if type(None) in args else "")
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        items = describe(args[0], plural=True) if args and args[0] is not Any else ""
        if origin is tuple and args and (len(args) != 2 or args[1] is not Ellipsis):
            items = ", ".join(describe(a) for a in args)
            return f"lists of ({items})" if plural else f"a list of ({items})"
        return ("lists" if plural else "a list") + (f" of {items}" if items else "")
    if origin in (dict, Mapping) or tp is dict:
        if args and args[1] is not Any:
            return ("mappings" if plural else "a mapping") + f" of {describe(args[0], True)} to {describe(args[1], True)}"
        return "mappings" if plural else "a mapping"
    if dataclasses.is_dataclass(tp):
        return f"{tp.__name__} sections" if plural else f"a mapping of {tp.__name__} fields"
    if isinstance(tp, type) and issubclass(tp, PurePath):
        return "paths" if plural else "a path"
    return getattr(tp, "__name__", str(tp))


def _fail(tp: Any, value: Any, key: str) -> ConfigError:
    return ConfigError(f"expected {describe(tp)}, got {_show(value)}", key=key)


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is object:
        return value
    if origin in (Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise _fail(tp, value, key)
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            try:
                return _convert(options[0], value, key)
            except ConfigError as e:
                if e.key == key and e.message.startswith("expected "):  # say that null is fine too
                    raise _fail(tp, value, key) from None
                raise
        for a in options:
            try:
                return _convert(a, value, key)
            except ConfigError:
                continue
        raise _fail(tp, value, key)
    if origin is Literal:
        value = _bool_spelling(value, args)
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise _fail(tp, value, key)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise _fail(tp, value, key)
        return _build(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _fail(tp, value, key)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _fail(tp, value, key)
    if tp is float:
        value = yaml11_float(value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise _fail(tp, value, key)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _fail(tp, value, key)
    if isinstance(tp, type) and issubclass(tp, PurePath):
        if isinstance(value, str | os.PathLike):
            return tp(value)
        raise _fail(tp, value, key)
    if origin in (list, Sequence) or tp is list:
        if not isinstance(value, list | tuple):
            raise _fail(tp, value, key)
        item = args[0] if args else Any
        return [_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple or tp is tuple:
        if not isinstance(value, list | tuple):
            raise _fail(tp, value, key)
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            item = args[0] if args else Any
            return tuple(_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"expected {len(args)} items, got {len(value)}: {_show(value)}", key=key)
        return tuple(_convert(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise _fail(tp, value, key)
        kt, vt = args if args else (Any, Any)
        return {_convert(kt, k, key): _convert(vt, v, join_key(key, str(k))) for k, v in value.items()}
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _fail(tp, value, key)
    return value


def _yaml_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init and not _metadata(cls, f.name).get("internal")]


def _build(cls: type, raw: Mapping[str, Any], prefix: str) -> Any:
    fields = _yaml_fields(cls)
    names = [f.name for f in fields]
    unknown = [k for k in raw if k not in names]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(str(k), names, n=1) or [n for n in names if n.startswith(str(k))][:1]
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        more = f" and {len(unknown) - 1} more" if len(unknown) > 1 else ""
        err = ConfigError(f"unknown key {k!r}{hint}{more}; allowed: {', '.join(names)}", key=prefix)
        err.blame_key = join_key(prefix, str(k))  # an override that added it is the one to name
        raise err
    missing = [f.name for f in fields if f.name not in raw
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"missing required key{'s' if len(missing) > 1 else ''} "
                          f"{', '.join(map(repr, missing))}", key=prefix)
    hints = _hints(cls)
    kwargs = {}
    for f in fields:
        if f.name in raw:
            key, meta, value = join_key(prefix, f.name), _metadata(cls, f.name), raw[f.name]
            if hints[f.name] is str and "choices" in meta:
                value = _bool_spelling(value, meta["choices"])
            kwargs[f.name] = _check_field(meta, _convert(hints[f.name], value, key), key)
    try:
        obj = cls(**kwargs)
    except ConfigError as e:
        raise e.relocate(key=join_key(prefix, e.key)) from None
    except ValueError as e:  # a __post_init__ check on a value
        raise ConfigError(" ".join(str(e).split()), key=prefix) from e
    _run_validate(obj, prefix)
    return obj


@functools.cache
def _metadata(cls: type, name: str) -> Mapping[str, Any]:
    """Field ``name``'s metadata merged over ``cls``'s dataclass bases: a subclass that only changes a
    default (``time_sampling: str = "uniform"``) keeps the base class's checks."""
    out: dict[str, Any] = {}
    for base in reversed(cls.__mro__):
        f = getattr(base, "__dataclass_fields__", {}).get(name)
        if f is not None:
            out.update(f.metadata)
    return out


def _check_field(m: Mapping[str, Any], value: Any, key: str) -> Any:
    """The range, choice and emptiness checks declared in metadata ``m``; returns ``value``."""
    if not m or value is None:
        return value
    if "choices" in m and value not in m["choices"]:
        raise ConfigError(f"expected one of {', '.join(map(repr, m['choices']))}, got {_show(value)}", key=key)
    if m.get("nonempty") and (not value or (isinstance(value, str) and not value.strip())):
        raise ConfigError("must not be empty", key=key)
    bounds = [(op, m[op]) for op in ("min", "max", "gt", "lt") if op in m]
    if bounds:
        items = list(enumerate(value)) if isinstance(value, list | tuple) else [(None, value)]
        for i, v in items:
            if not isinstance(v, int | float) or isinstance(v, bool):
                continue
            k = key if i is None else f"{key}[{i}]"
            for op, b in bounds:
                ok = {"min": v >= b, "max": v <= b, "gt": v > b, "lt": v < b}[op]
                if not ok:
                    word = {"min": ">=", "max": "<=", "gt": ">", "lt": "<"}[op]
                    raise ConfigError(f"must be {word} {b}, got {_show(v)}", key=k)
    return value


def _run_validate(obj: Any, prefix: str) -> None:
    hook = getattr(obj, "validate", None)
    if not callable(hook):
        return
    try:
        hook()
    except ConfigError as e:
        raise e.relocate(key=join_key(prefix, e.key)) from None
    except ValueError as e:  # a hook not yet raising ConfigError: still a value the user gave
        raise ConfigError(" ".join(str(e).split()), key=prefix) from e


def check_config(obj: Any, prefix: str = "") -> None:
    """Re-check a config dataclass built in code (not loaded): field metadata and ``validate()`` hooks
    of it and its nested sections, errors naming the dotted key. Types are not re-checked."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = join_key(prefix, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_config(value, key)
        else:
            _check_field(_metadata(type(obj), f.name), value, key)
    _run_validate(obj, prefix)
