"""Tiny untrained policy checkpoints for a simulated task (built, not trained: evaluation tests only
need a policy with the right inputs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from robolearn.data.normalizer import KeyStats, Normalizer
from robolearn.features import Feature
from robolearn.policies import make_policy, save_checkpoint
from robolearn.sim.env import lowdim_shapes

TINY_POLICY = {
    "type": "flow", "num_inference_steps": 2, "n_action_steps": 4,
    "unet": {"down_dims": [16, 32], "time_embed_dim": 16},
    "encoder": {"lowdim_hidden_dims": [16], "lowdim_feature_dim": 16, "resnet_width": 8, "image_feature_dim": 16},
}


def tiny_checkpoint(path: Path, task: str = "lift", cameras: tuple[str, ...] = (), size: int = 32,
                    lowdim: tuple[str, ...] = ("robot0_eef_pos", "robot0_gripper_qpos", "object"),
                    policy: dict | None = None, seed: int = 0) -> Path:
    shapes = lowdim_shapes(task)
    obs = {k: Feature(shapes[k], "float32") for k in lowdim}
    obs |= {f"{c}_image": Feature((size, size, 3), "uint8", "rgb") for c in cameras}
    meta = {"obs": obs, "action_dim": 7, "n_obs_steps": 2, "horizon": 8}
    torch.manual_seed(seed)
    pol = make_policy(policy or TINY_POLICY, meta)
    rng = np.random.default_rng(seed)
    # Statistics wide enough that the untrained policy's actions stay small and the arm moves gently.
    stats = {k: KeyStats.compute(rng.normal(size=(64, *shapes[k])).astype(np.float32)) for k in lowdim}
    stats["action"] = KeyStats.compute(rng.uniform(-0.3, 0.3, size=(64, 7)).astype(np.float32))
    pol.set_normalizer(Normalizer(stats))
    return save_checkpoint(pol, path)
