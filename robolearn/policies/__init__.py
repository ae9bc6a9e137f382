"""Visuomotor policies: diffusion (DDPM/DDIM), rectified flow and one-step MeanFlow.

Typical use::

    ds = WindowDataset(store, obs_keys, n_obs_steps=2, horizon=16, n_action_steps=8)
    policy = make_policy({"type": "diffusion", "backbone": "unet", "n_action_steps": 8},
                         shape_meta_from_dataset(ds))
    policy.set_normalizer(ds.normalizer())
    ...  # loss = policy.compute_loss(batch); step; policy.update_ema()
    save_checkpoint(policy, "ckpt/")
    policy = load_policy("ckpt/")
    actions = policy.executable_actions(policy.predict_action(obs))
"""

from robolearn.policies.backbones import ConditionalUnet1D, TransformerConfig, TransformerDenoiser, UNetConfig
from robolearn.policies.base import Policy, PolicyConfig, executable_actions
from robolearn.policies.checkpoint import load_policy, load_state_into, read_checkpoint_meta, save_checkpoint
from robolearn.policies.diffusion import DiffusionConfig, DiffusionPolicy
from robolearn.policies.ema import EMA, EMAConfig
from robolearn.policies.encoders import EncoderConfig, ObsEncoder, ResNet18GN
from robolearn.policies.factory import POLICY_TYPES, make_config, make_policy, shape_meta_from_dataset
from robolearn.policies.flow import FlowConfig, FlowPolicy, MeanFlowConfig, MeanFlowPolicy
from robolearn.policies.shapes import ShapeMeta

__all__ = [
    "POLICY_TYPES",
    "EMA",
    "ConditionalUnet1D",
    "DiffusionConfig",
    "DiffusionPolicy",
    "EMAConfig",
    "EncoderConfig",
    "FlowConfig",
    "FlowPolicy",
    "MeanFlowConfig",
    "MeanFlowPolicy",
    "ObsEncoder",
    "Policy",
    "PolicyConfig",
    "ResNet18GN",
    "ShapeMeta",
    "TransformerConfig",
    "TransformerDenoiser",
    "UNetConfig",
    "executable_actions",
    "load_policy",
    "load_state_into",
    "make_config",
    "make_policy",
    "read_checkpoint_meta",
    "save_checkpoint",
    "shape_meta_from_dataset",
]
