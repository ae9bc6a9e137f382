"""Diffusion policy: DDPM training, DDPM or DDIM sampling, U-Net or transformer denoiser.

Noise schedules come from ``diffusers``. Sampling with ``ddim`` is deterministic given the initial
noise; ``ddpm`` also draws noise at each step (from ``generator`` when given).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from robolearn.data.normalizer import Normalizer
from robolearn.errors import ConfigError
from robolearn.policies.backbones import (  # noqa: F401 - re-exported: the denoisers live here too
    ConditionalUnet1D,
    TransformerDenoiser,
)
from robolearn.policies.base import Policy, PolicyConfig, PolicyNet

SAMPLERS = ("ddpm", "ddim")
PREDICTION_TYPES = ("epsilon", "sample")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


@dataclass
class DiffusionConfig(PolicyConfig):
    type: str = "diffusion"
    num_train_timesteps: int = field(default=100, metadata={"min": 1})
    beta_schedule: str = field(default="squaredcos_cap_v2", metadata={"choices": BETA_SCHEDULES})
    # What the denoiser predicts: the added noise ("epsilon") or the clean action chunk ("sample").
    prediction_type: str = field(default="epsilon", metadata={"choices": PREDICTION_TYPES})
    # Clip the predicted clean chunk to +-clip_sample_range: normalised actions live in [-1, 1].
    clip_sample: bool = True
    clip_sample_range: float = field(default=1.0, metadata={"gt": 0.0})
    sampler: str = field(default="ddim", metadata={"choices": SAMPLERS})
    num_inference_steps: int = field(default=16, metadata={"min": 1})

    def validate(self) -> None:
        super().validate()
        if self.num_inference_steps > self.num_train_timesteps:
            raise ConfigError(f"must be <= num_train_timesteps ({self.num_train_timesteps}), "
                              f"got {self.num_inference_steps}", key="num_inference_steps")


def _schedulers(cfg: DiffusionConfig) -> tuple[Any, Any]:
    # Imported here: diffusers takes seconds to import and only this policy needs it.
    from diffusers.schedulers.scheduling_ddim import DDIMScheduler
    from diffusers.schedulers.scheduling_ddpm import DDPMScheduler

    common = dict(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                  prediction_type=cfg.prediction_type, clip_sample=cfg.clip_sample,
                  clip_sample_range=cfg.clip_sample_range)
    train = DDPMScheduler(**common)
    if cfg.sampler == "ddpm":
        sample = DDPMScheduler(**common)
    else:
        # "trailing" spacing starts from the last (pure-noise) timestep; "leading" would skip it at few steps.
        sample = DDIMScheduler(**common, timestep_spacing="trailing")
    return train, sample


class DiffusionPolicy(Policy):
    policy_type = "diffusion"
    config_class = DiffusionConfig
    n_times = 1

    def __init__(self, config: DiffusionConfig, shape_meta: Any) -> None:
        super().__init__(config, shape_meta)
        self.train_scheduler, self.sample_scheduler = _schedulers(self.config)  # type: ignore[arg-type]

    def set_normalizer(self, normalizer: Normalizer) -> None:
        super().set_normalizer(normalizer)
        mode = normalizer.modes.get(self.action_key)
        if self.config.clip_sample and mode in ("gaussian", "identity"):
            warnings.warn(f"clip_sample clips normalised actions to +-{self.config.clip_sample_range}, but the action "
                          f"normaliser is {mode!r}, which does not bound them; use minmax or set clip_sample=False",
                          stacklevel=2)

    def _loss(self, net: PolicyNet, cond: Tensor, action: Tensor) -> Tensor:
        noise = torch.randn_like(action)
        t = torch.randint(0, self.config.num_train_timesteps, (action.shape[0],), device=action.device)
        noisy = self.train_scheduler.add_noise(action, noise, t)
        pred = net.denoiser(noisy, t.float()[:, None], cond)
        target = noise if self.config.prediction_type == "epsilon" else action
        return F.mse_loss(pred, target)

    def _sample(self, net: PolicyNet, cond: Tensor, noise: Tensor, generator: torch.Generator | None) -> Tensor:
        sched = self.sample_scheduler
        sched.set_timesteps(self.config.num_inference_steps, device=noise.device)
        x = noise
        times = torch.empty(noise.shape[0], 1, device=noise.device)
        for t in sched.timesteps:
            out = net.denoiser(x, times.fill_(float(t)), cond)
            x = sched.step(out, t, x, generator=generator).prev_sample
        return x
