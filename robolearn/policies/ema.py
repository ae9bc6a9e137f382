"""Exponential moving average of a module's weights, used for inference.

The decay follows a warmup/power schedule: the first update copies the weights, then the decay grows
as ``1 - (1 + n / inv_gamma) ** -power`` towards ``max_decay``. Early in training the average
therefore tracks the model closely (a fixed 0.9999 would be stuck near the random initialisation
for thousands of steps), and later it averages over a long window.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from robolearn.config import check_config
from robolearn.errors import ConfigError


@dataclass
class EMAConfig:
    enabled: bool = True
    power: float = field(default=0.75, metadata={"gt": 0})
    inv_gamma: float = field(default=1.0, metadata={"gt": 0})
    min_decay: float = field(default=0.0, metadata={"min": 0.0, "lt": 1.0})
    max_decay: float = field(default=0.9999, metadata={"min": 0.0, "lt": 1.0})
    # Updates before this many steps copy the weights instead of averaging.
    update_after_step: int = field(default=0, metadata={"min": 0})

    def validate(self) -> None:
        if self.min_decay > self.max_decay:
            raise ConfigError(f"must be <= max_decay ({self.max_decay}), got {self.min_decay}", key="min_decay")


class EMA:
    """Holds ``shadow``, a frozen copy of a module whose weights average the module's over updates.

    The shadow is always in eval mode and never requires grad; it is deliberately not a submodule of
    the policy, so ``policy.parameters()`` (what an optimiser sees) excludes it.
    """

    def __init__(self, model: nn.Module, config: EMAConfig | None = None) -> None:
        self.config = config or EMAConfig()
        check_config(self.config, "ema")
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
