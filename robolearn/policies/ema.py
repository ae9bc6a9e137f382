"""Exponential moving average of a module's weights, used for inference.

The decay follows a warmup/power schedule: the first update copies the weights, then the decay grows
as ``1 - (1 + n / inv_gamma) ** -power`` towards ``max_decay``. Early in training the average
therefore tracks the model closely (a fixed 0.9999 would be stuck near the random initialisation
for thousands of steps), and later it averages over a long window.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class EMAConfig:
    enabled: bool = True
    power: float = 0.75
    inv_gamma: float = 1.0
    min_decay: float = 0.0
    max_decay: float = 0.9999
    # Updates before this many steps copy the weights instead of averaging.
    update_after_step: int = 0

    def validate(self) -> None:
        if not 0.0 <= self.min_decay <= self.max_decay < 1.0:
            raise ValueError(f"need 0 <= ema.min_decay <= ema.max_decay < 1, got {self.min_decay}, {self.max_decay}")
        if self.power <= 0 or self.inv_gamma <= 0:
            raise ValueError("ema.power and ema.inv_gamma must be positive")
        if self.update_after_step < 0:
            raise ValueError("ema.update_after_step must be >= 0")


class EMA:
    """Holds ``shadow``, a frozen copy of a module whose weights average the module's over updates.

    The shadow is always in eval mode and never requires grad; it is deliberately not a submodule of
    the policy, so ``policy.parameters()`` (what an optimiser sees) excludes it.
    """

    def __init__(self, model: nn.Module, config: EMAConfig | None = None) -> None:
        self.config = config or EMAConfig()
        self.config.validate()
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)
        self.step = 0  # number of update() calls so far

    def decay(self, step: int | None = None) -> float:
        """Decay used by the ``step``-th update (1-based; default: the next one)."""
        c = self.config
        n = (self.step + 1 if step is None else step) - 1 - c.update_after_step
        if n <= 0:
            return 0.0
        d = 1.0 - (1.0 + n / c.inv_gamma) ** -c.power
        return float(min(max(d, c.min_decay), c.max_decay))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.decay()
        self.step += 1
        src = dict(model.named_parameters())
        for name, p in self.shadow.named_parameters():
            if name not in src:
                raise ValueError(f"EMA update: the model has no parameter {name!r}")
            # shadow = d * shadow + (1 - d) * model
            p.lerp_(src[name].detach().to(p.dtype), 1.0 - d)
        src_b = dict(model.named_buffers())
        for name, b in self.shadow.named_buffers():
            b.copy_(src_b[name])  # buffers (statistics, flags) are not averaged

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], step: int) -> None:
        self.shadow.load_state_dict(state)
        self.step = int(step)
