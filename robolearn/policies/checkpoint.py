"""Policy checkpoints: a directory anyone can inspect without robolearn.

    CKPT/
      config.json        policy type, resolved config, shape_meta, EMA step, format version
      model.safetensors  the policy's state dict (network + normalisation buffers)
      ema.safetensors    the EMA copy of the network (when EMA is on)
      normalizer.json    the Normalizer statistics the buffers came from
      extra.json         caller's JSON (epoch, metrics, ...), when given

Each file is written under a temporary name and renamed, so a crash never leaves a half-written file.
Loading never touches the network.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from robolearn.data.normalizer import Normalizer
from robolearn.errors import MissingFileError, UserError
from robolearn.policies.base import Policy, config_diff, config_from_dict, config_to_dict, flatten_dict
from robolearn.policies.factory import make_policy, policy_class
from robolearn.policies.shapes import ShapeMeta

FORMAT = "robolearn.policy"
VERSION = 1
_MAX_NAMES = 8


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_json(path: Path, obj: Any) -> None:
    _atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n"))


def _tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses views and shared storage; clone to plain CPU tensors.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def save_checkpoint(policy: Policy, path: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``policy`` (weights, EMA weights, config, normaliser) into directory ``path``."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    if extra is not None:
        try:
            extra_text = json.dumps(dict(extra), indent=2)
        except TypeError as e:
            raise TypeError(f"extra must be JSON-serialisable: {e}") from None
    _atomic_write(out / "model.safetensors", lambda p: save_file(_tensors(policy.state_dict()), str(p)))
    if policy.ema is not None:
        ema = policy.ema
        _atomic_write(out / "ema.safetensors", lambda p: save_file(_tensors(ema.state_dict()), str(p),
                                                                  metadata={"step": str(ema.step)}))
    else:
        (out / "ema.safetensors").unlink(missing_ok=True)
    _write_json(out / "normalizer.json", policy.normalizer.json)
    if extra is not None:
        _atomic_write(out / "extra.json", lambda p: p.write_text(extra_text + "\n"))
    else:
        (out / "extra.json").unlink(missing_ok=True)
    _write_json(out / "config.json", {
        "format": FORMAT,
        "version": VERSION,
        "policy_type": policy.policy_type,
        "config": config_to_dict(policy.config),
        "shape_meta": policy.shape_meta.to_json(),
        "ema_step": policy.ema.step if policy.ema is not None else None,
        "torch_version": torch.__version__,
    })
    return out


def read_checkpoint_meta(path: str | os.PathLike) -> dict[str, Any]:
    """config.json of a checkpoint, plus ``extra`` (extra.json or None)."""
    root = Path(path)
    cfg_path = root / "config.json"
    if not cfg_path.is_file():
        raise MissingFileError(f"{root} is not a policy checkpoint: no config.json")
    try:
        meta = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{cfg_path} is not a {FORMAT} checkpoint: invalid JSON ({e})") from None
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if fmt != FORMAT:
        raise UserError(f"{cfg_path} is not a {FORMAT} checkpoint (format {fmt!r})")
    if int(meta.get("version", 0)) > VERSION:
        raise UserError(f"{root} was written by a newer robolearn (format version {meta['version']} > {VERSION})")
    extra = root / "extra.json"
    meta["extra"] = json.loads(extra.read_text()) if extra.is_file() else None
    return meta


def _names(items: Iterable[str]) -> str:
    items = list(items)
    shown = ", ".join(items[:_MAX_NAMES])
    return shown + (f" and {len(items) - _MAX_NAMES} more" if len(items) > _MAX_NAMES else "")


def _tensor_problems(what: str, saved: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> list[str]:
    problems = []
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]
    shapes = [f"{k} {tuple(saved[k].shape)} vs {tuple(expected[k].shape)}"
              for k in expected if k in saved and saved[k].shape != expected[k].shape]
    if missing:
        problems.append(f"{what}: tensors missing from the checkpoint: {_names(missing)}")
    if unexpected:
        problems.append(f"{what}: unexpected tensors in the checkpoint: {_names(unexpected)}")
    if shapes:
        problems.append(f"{what}: shape mismatch (checkpoint vs model): {_names(shapes)}")
    return problems


def load_state_into(policy: Policy, path: str | os.PathLike, *, ignore_fields: Iterable[str] = ()) -> Policy:
    """Load a checkpoint into an existing policy, refusing any mismatch.

    Raises :class:`~robolearn.errors.UserError` (a ``ValueError``) naming every difference: policy type, config fields (dotted names, except
    ``ignore_fields``), observation/action shapes, and missing, unexpected or mis-shaped tensors."""
    root = Path(path)
    meta = read_checkpoint_meta(root)
    problems: list[str] = []
    if meta["policy_type"] != policy.policy_type:
        problems.append(f"policy type: checkpoint {meta['policy_type']!r}, model {policy.policy_type!r}")
    mine_cfg = config_to_dict(policy.config)
    every = config_diff(meta["config"], mine_cfg)
    checked = config_diff(meta["config"], mine_cfg, ignore_fields)
    # A field added since the checkpoint was written reads as its default (checkpoints stay loadable).
    defaults = flatten_dict(config_to_dict(type(policy.config)()))
    for name, (theirs, mine) in checked.items():
        if not (theirs == "<absent>" and name in defaults and defaults[name] == mine):
            problems.append(f"config {name}: checkpoint {theirs!r}, model {mine!r}")
    overridden = every.keys() - checked.keys()
    # Read through ShapeMeta so that checkpoints written with the older tensor-layout form compare equal.
    for name, (theirs, mine) in config_diff(ShapeMeta.from_json(meta["shape_meta"]).to_json(),
                                            policy.shape_meta.to_json(), ("n_obs_steps", "horizon")).items():
        problems.append(f"shape_meta {name}: checkpoint {theirs!r}, model {mine!r}")
    state = load_file(str(root / "model.safetensors"))
    model_problems = _tensor_problems("model", state, policy.state_dict())
    problems += model_problems
    ema_state = None
    ema_file = root / "ema.safetensors"
    if policy.ema is not None:
        if ema_file.is_file():
            ema_state = load_file(str(ema_file))
            if not model_problems:  # otherwise the EMA copy repeats the same differences
                problems += _tensor_problems("ema", ema_state, policy.ema.state_dict())
        else:
            problems.append("ema: the model uses EMA but the checkpoint has no ema.safetensors")
    if problems and overridden:
        problems.append(f"config fields overridden at load: {', '.join(sorted(overridden))}")
    if problems:
        raise UserError(f"checkpoint {root} does not match the {policy.policy_type} policy:\n  - "
                         + "\n  - ".join(problems))
    policy.load_state_dict(state, strict=True)
    if policy.ema is not None and ema_state is not None:
        policy.ema.load_state_dict(ema_state, step=int(meta.get("ema_step") or 0))
    norm = root / "normalizer.json"
    policy.normalizer.json = json.loads(norm.read_text()) if norm.is_file() else None
    return policy


def load_policy(path: str | os.PathLike, device: str | torch.device = "cpu",
                overrides: Mapping[str, Any] | None = None) -> Policy:
    """Rebuild the policy a checkpoint was saved from, load its weights, and put it in eval mode.

    ``overrides`` (a nested dict, e.g. ``{"num_inference_steps": 4}``) changes config fields that do
    not affect the weights; changing architecture fields fails with the mismatch named."""
    meta = read_checkpoint_meta(path)
    cls = policy_class(meta["policy_type"])
    cfg_dict = dict(meta["config"])
    ignore: list[str] = []
    if overrides:
        cfg_dict = _merge(cfg_dict, overrides)
        ignore = list(flatten_dict(overrides))
    cfg = config_from_dict(cls.config_class, cfg_dict, where=str(Path(path) / "config.json"))
    policy = make_policy(cfg, ShapeMeta.from_json(meta["shape_meta"]))
    load_state_into(policy, path, ignore_fields=ignore)
    return policy.to(device).eval()


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def normalizer_of(path: str | os.PathLike) -> Normalizer | None:
    """The ``Normalizer`` saved with a checkpoint (None when the policy had none recorded)."""
    norm = Path(path) / "normalizer.json"
    if not norm.is_file():
        return None
    d = json.loads(norm.read_text())
    return Normalizer.from_json(d) if d else None
