"""Stored-layout samples -> the tensors a policy reads: the one conversion, shared by training and rollouts.

``WindowDataset`` (training) and the rollout's observation history (evaluation, deployment, RL) both
call :func:`to_tensor`, so what a policy sees at run time cannot drift from what it was trained on:

- rgb   uint8 (..., H, W, C)  -> uint8 (..., C, H, W)  (policies scale to [0, 1] on their own device)
- depth uint16 (..., H, W)    -> float32 metres (..., 1, H, W)
- low-dim (..., D)            -> float32 (..., D)
"""

from __future__ import annotations

import numpy as np
import torch

from robolearn.data.schema import Feature, SchemaError


def to_tensor(feature: Feature, data: np.ndarray, key: str = "") -> torch.Tensor:
    """``data`` of shape (..., *feature.shape) as (..., *feature.tensor_shape); leading axes are kept."""
    data = np.asarray(data)
    n = len(feature.shape)
    if tuple(data.shape[data.ndim - n:]) != feature.shape or data.ndim < n:
        raise SchemaError(f"{key or feature.kind}: expected samples of shape {feature.shape}, "
                          f"got an array of shape {data.shape}")
    if feature.kind == "rgb":
        if data.dtype != np.uint8:
            raise SchemaError(f"{key or 'rgb'}: images must be uint8, got {data.dtype}")
        return torch.from_numpy(np.ascontiguousarray(data)).movedim(-1, -3)
    if feature.kind == "depth":
        metres = torch.from_numpy(data.astype(np.float32))
        return metres.mul_(float(feature.depth_scale)).unsqueeze(-3)  # type: ignore[arg-type]
    return torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
