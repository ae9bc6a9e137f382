"""Build a policy from a config (dict or dataclass) and the shapes of the data it will see."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

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
        raise ValueError(f"unknown policy type {policy_type!r}; use one of {', '.join(POLICY_TYPES)}")
    return POLICY_TYPES[policy_type]


def make_config(config: Mapping[str, Any] | PolicyConfig) -> PolicyConfig:
    """The config dataclass of a dict with a ``type`` key (diffusion, flow, meanflow), or ``config`` itself."""
    if isinstance(config, PolicyConfig):
        return config
    if "type" not in config:
        raise ValueError(f"the policy config needs a 'type' ({', '.join(POLICY_TYPES)})")
    return config_from_dict(policy_class(config["type"]).config_class, config)


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
        raise ValueError(f"action key {ds.action_key!r} must be low-dim, is {act.kind}")
    if len(act.shape) != 1:
        raise ValueError(f"actions must be vectors; {ds.action_key!r} has per-step shape {act.shape}")
    return ShapeMeta(obs=obs, action_dim=math.prod(act.shape), action_key=ds.action_key,
                     n_obs_steps=int(ds.n_obs_steps), horizon=int(ds.horizon))
