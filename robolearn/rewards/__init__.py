"""Dense rewards from task progress judged on images, kept honest by true success.

One interface (:class:`~robolearn.rewards.base.ProgressModel`) with three backends:

- ``gvl``: a VLM behind an OpenAI-compatible endpoint judges shuffled frames (``gvl.py``);
- ``clip``: CLIP/SigLIP similarity to the goal text with VLM-RM's baseline projection (``clip.py``);
- the progress network trained on the store, small and CPU-cheap (``progress_net.py``), the default
  in simulation and on the robot, distilled from VLM labels when the store has them.

Shaping, annealing and the quality gates are in ``base.py``, the figures (VOC, AUROC) in ``metrics.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from robolearn.errors import MissingFileError, UserError
from robolearn.rewards.base import (
    DenseReward,
    GateConfig,
    LambdaSchedule,
    ProgressModel,
    ProgressScore,
    RewardGateError,
    check_gate,
    load_scores,
    shaped_rewards,
)

__all__ = [
    "DenseReward",
    "GateConfig",
    "LambdaSchedule",
    "ProgressModel",
    "ProgressScore",
    "RewardGateError",
    "check_gate",
    "load_gated_reward",
    "load_reward",
    "load_scores",
    "shaped_rewards",
]


def load_reward(spec: str, **gvl: Any) -> ProgressModel:
    """A progress model from ``REWARD`` (a directory written by ``reward fit``), ``gvl:URL`` (keyword
    arguments go to :class:`~robolearn.rewards.gvl.GVLConfig`) or ``clip:PATH`` (a local CLIP/SigLIP)."""
    if spec.startswith("gvl:"):
        from robolearn.rewards.gvl import GVLConfig, GVLProgressModel

        return GVLProgressModel(GVLConfig(endpoint=spec[4:], **gvl))
    if spec.startswith("clip:"):
        from robolearn.rewards.clip import ClipProgressModel

        return ClipProgressModel.load(spec[5:])
    path = Path(spec)
    if (path / "config.json").exists() and (path / "model.safetensors").exists():
        from robolearn.rewards.progress_net import ProgressNetModel

        return ProgressNetModel.load(path)
    if path.exists():
        raise UserError(f"{spec} is not a reward model (no config.json + model.safetensors): "
                         f"train one with `robolearn reward fit --data STORE --out {spec}`")
    raise MissingFileError(f"no reward model at {spec}: give a directory from `robolearn reward fit`, "
                            "gvl:URL or clip:PATH")


def load_gated_reward(spec: str, scores: str | Path | None = None, gate: GateConfig | None = None,
                      force: bool = False, **gvl: Any) -> ProgressModel:
    """What the RL loop calls: the model, refused (:class:`RewardGateError`) unless its held-out
    figures (``scores``, by default the ``scores.json`` that ``reward fit`` saved beside it) meet
    ``gate``; ``force`` turns the refusal into a warning."""
    model = load_reward(spec, **gvl)
    if scores is None and not spec.startswith(("gvl:", "clip:")):
        scores = Path(spec)
    if scores is None:
        if not force:
            raise RewardGateError(f"{spec} has no held-out figures: run `robolearn reward score --reward {spec} "
                                  "--data STORE --out DIR` and pass that DIR as its scores, or force it")
        return model
    check_gate(load_scores(scores), gate, force=force, what=f"reward {spec}")
    return model
