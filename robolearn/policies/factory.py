"""Build a policy from a config (dict or dataclass) and the shapes of the data it will see."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from robolearn.errors import ConfigError, UserError, join_key
from robolearn.features import Feature
from robolearn.policies.base import Policy, PolicyConfig, config_from_dict
from robolearn.policies.diffusion import DiffusionPolicy
from robolearn.policies.flow import FlowPolicy, MeanFlowPolicy
from robolearn.policies.shapes import ShapeMeta, policy_feature

POLICY_TYPES: dict[str, type[Policy]] = {
    cls.policy_type: cls for cls in (DiffusionPolicy, FlowPolicy, MeanFlowPolicy)
}


def policy_class(policy_type: str) -> type[Policy]:
    if policy_type not in POLICY_TYPES:
        raise ConfigError(f"unknown policy type {policy_type!r}; use one of {', '.join(POLICY_TYPES)}", key="type")
    return POLICY_TYPES[policy_type]


def make_config(config: Mapping[str, Any] | PolicyConfig, where: str = "", prefix: str = "") -> PolicyConfig:
    """The config dataclass of a dict with a ``type`` key (diffusion, flow, meanflow), or ``config`` itself.

    Every key, type and range is checked (see :mod:`robolearn.config`); errors name ``where`` (a file)
    and the dotted key under ``prefix`` (e.g. ``policy`` in a recipe)."""
    if isinstance(config, PolicyConfig):
        return config
    if not isinstance(config, Mapping):
        raise ConfigError(f"expected a mapping with a 'type', got {config!r}", key=prefix, where=where)
    if "type" not in config:
        raise ConfigError(f"needs a 'type' ({', '.join(POLICY_TYPES)})", key=prefix or "policy", where=where)
    try:
        cls = policy_class(config["type"]).config_class
    except ConfigError as e:
        raise e.relocate(where=where, key=join_key(prefix, e.key)) from None
    return config_from_dict(cls, config, where, prefix)


def make_policy(config: Mapping[str, Any] | PolicyConfig, shape_meta: ShapeMeta | Mapping[str, Any]) -> Policy:
    """A freshly initialised policy of ``config["type"]`` for data described by ``shape_meta``.

    Call ``policy.set_normalizer(dataset.normalizer())`` before training."""
    cfg = make_config(config)
    return policy_class(cfg.type)(cfg, ShapeMeta.coerce(shape_meta))


def shape_meta_from_dataset(ds: Any) -> ShapeMeta:
    """The store's features of a ``WindowDataset``'s keys (the loader yields ``feature.tensor_shape``
    per step); action (A,)."""
    obs: dict[str, Feature] = {k: policy_feature(ds.specs[k]) for k in ds.obs_keys}
    act = ds.specs[ds.action_key]
    if act.kind != "lowdim":
        raise UserError(f"action key {ds.action_key!r} must be low-dim, is {act.kind}")
    if len(act.shape) != 1:
        raise UserError(f"actions must be vectors; {ds.action_key!r} has per-step shape {act.shape}")
    return ShapeMeta(obs=obs, action_dim=math.prod(act.shape), action_key=ds.action_key,
                     n_obs_steps=int(ds.n_obs_steps), horizon=int(ds.horizon))
