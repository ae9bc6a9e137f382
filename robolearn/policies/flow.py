"""Flow-matching policies: rectified flow (few-step Euler) and MeanFlow (one step).

Convention for both: ``z_t = (1 - t) * x + t * eps`` with ``t = 0`` the data and ``t = 1`` noise, so
the velocity is ``v = eps - x`` and sampling integrates from t = 1 down to 0. Times enter the
denoiser's sinusoidal embedding multiplied by ``time_scale`` (config).

MeanFlow (Geng et al., 2025, "Mean Flows for One-step Generative Modeling") learns the average
velocity ``u(z, r, t) = 1/(t - r) * integral_r^t v(z_s, s) ds``. Differentiating ``(t - r) u = integral``
in t gives the MeanFlow identity ``u = v - (t - r) * du/dt``, with the total derivative
``du/dt = v . d_z u + d_t u``, one forward-mode JVP with tangent (v, 0, 1) in (z, r, t). The regression
target uses that identity under stop-gradient. One sample is then ``x = eps - u(eps, 0, 1)``:
exactly one network evaluation.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from robolearn.errors import ConfigError
from robolearn.policies.base import Policy, PolicyConfig, PolicyNet

TIME_SAMPLINGS = ("uniform", "logit_normal")


def _sample_times(n: int, how: str, mean: float, std: float, device: torch.device) -> Tensor:
    if how == "uniform":
        return torch.rand(n, device=device)
    if how == "logit_normal":
        return torch.sigmoid(torch.randn(n, device=device) * std + mean)
    raise ValueError(f"unknown time_sampling {how!r}; use one of {', '.join(TIME_SAMPLINGS)}")


@dataclass
class FlowConfig(PolicyConfig):
    type: str = "flow"
    # Euler steps from noise to data.
    num_inference_steps: int = field(default=10, metadata={"min": 1})
    # Training time distribution; logit_normal puts more weight on intermediate times.
    time_sampling: str = field(default="uniform", metadata={"choices": TIME_SAMPLINGS})
    time_mean: float = 0.0
    time_std: float = field(default=1.0, metadata={"gt": 0.0})
    # t in [0, 1] is multiplied by this before the sinusoidal embedding (the range of diffusion steps).
    time_scale: float = field(default=1000.0, metadata={"gt": 0.0})
    # Training-time real-time chunking (Black et al., 2025): half the training chunks come with their first
    # 1..prefix_actions actions given (clean, plus a mask channel) and the loss on the rest only. Deployed
    # under latency, a new chunk is then sampled to continue the actions that execute while it is computed
    # (deploy --blend inpaint) instead of contradicting them. 0: off (no extra input channels).
    prefix_actions: int = field(default=0, metadata={"min": 0})

    def validate(self) -> None:
        super().validate()
        if self.horizon is not None and self.prefix_actions >= self.horizon:
            raise ConfigError(f"must be < horizon ({self.horizon}), got {self.prefix_actions}", key="prefix_actions")


class FlowPolicy(Policy):
    """Rectified flow: regress the velocity ``eps - x`` at a random point of the straight path."""

    policy_type = "flow"
    config_class = FlowConfig
    n_times = 1

    def _denoise(self, net: PolicyNet, z: Tensor, times: Tensor, cond: Tensor,
                 prefix: tuple[Tensor, Tensor] | None) -> Tensor:
        if not self.prefix_actions:
            return net.denoiser(z, times, cond)
        y, mask = prefix if prefix is not None else (torch.zeros_like(z), z.new_zeros(1, z.shape[1], 1))
        mask = mask.expand(z.shape[0], -1, -1)
        return net.denoiser(torch.cat([z, y * mask, mask], dim=-1), times, cond)

    def _loss(self, net: PolicyNet, cond: Tensor, action: Tensor) -> Tensor:
        c = self.config
        b, h, _ = action.shape
        t = _sample_times(b, c.time_sampling, c.time_mean, c.time_std, action.device)
        eps = torch.randn_like(action)
        z = action + t[:, None, None] * (eps - action)
        if not c.prefix_actions:
            return F.mse_loss(net.denoiser(z, t[:, None] * c.time_scale, cond), eps - action)
        # Half the batch as plain chunks (as evaluation runs them), half with 1..prefix_actions actions given.
        n = torch.randint(1, c.prefix_actions + 1, (b,), device=action.device)
        n = torch.where(torch.rand(b, device=action.device) < 0.5, torch.zeros_like(n), n)
        mask = (torch.arange(h, device=action.device)[None, :] < n[:, None]).float()[..., None]
        z = mask * action + (1.0 - mask) * z  # the given actions enter clean, as at deployment
        v = self._denoise(net, z, t[:, None] * c.time_scale, cond, (action, mask))
        free = 1.0 - mask
        return ((v - (eps - action)).pow(2) * free).sum() / (free.sum() * action.shape[-1]).clamp_min(1.0)

    def _sample(self, net: PolicyNet, cond: Tensor, noise: Tensor, generator: torch.Generator | None,
                prefix: tuple[Tensor, Tensor] | None = None) -> Tensor:
        n = self.config.num_inference_steps
        z = noise
        t = torch.empty(noise.shape[0], 1, device=noise.device)
        for i in range(n):
            if prefix is not None:
                z = prefix[1] * prefix[0] + (1.0 - prefix[1]) * z
            v = self._denoise(net, z, t.fill_((1.0 - i / n) * self.config.time_scale), cond, prefix)
            z = z - v / n
        return z if prefix is None else prefix[1] * prefix[0] + (1.0 - prefix[1]) * z


@dataclass
class MeanFlowConfig(FlowConfig):
    """FlowConfig's fields (and checks) with MeanFlow's defaults, plus the r != t mix and loss weight."""

    type: str = "meanflow"
    # 1 = one network evaluation; more steps chain average velocities over shorter intervals.
    num_inference_steps: int = 1
    # Fraction of training pairs with r != t; the rest (r = t) is plain flow matching.
    ratio_r_neq_t: float = field(default=0.25, metadata={"min": 0.0, "max": 1.0})
    # Distribution of the two times (t = the larger); the paper's logit_normal(-0.4, 1) rarely
    # samples t near 1, the time one-step sampling starts from.
    time_sampling: str = "uniform"
    time_mean: float = -0.4
    time_std: float = 1.0
    # Unlike rectified flow, keep the embedding's frequencies low: the target contains du/dt, and fast
    # sinusoids of t make that derivative large and noisy (training was unstable at 100 or 1000).
    time_scale: float = 1.0
    # Adaptive loss weight 1 / (err + eps) ** power (stop-gradient); 0 gives plain MSE.
    adaptive_weight_power: float = field(default=1.0, metadata={"min": 0.0})
    adaptive_weight_eps: float = field(default=1e-3, metadata={"gt": 0.0})

    def validate(self) -> None:
        super().validate()
        if self.prefix_actions:
            raise ConfigError("is rectified flow's (type: flow); MeanFlow takes no given actions", key="prefix_actions")


class MeanFlowPolicy(Policy):
    """One-step policy: the denoiser, conditioned on (t, t - r), predicts the average velocity."""

    policy_type = "meanflow"
    config_class = MeanFlowConfig
    n_times = 2

    def _u(self, net: PolicyNet, z: Tensor, r: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        # Conditioning on the interval length t - r (rather than r) worked best in the paper.
        return net.denoiser(z, torch.stack([t, t - r], dim=-1) * self.config.time_scale, cond)

    def _loss(self, net: PolicyNet, cond: Tensor, action: Tensor) -> Tensor:
        c = self.config
        b, dev = action.shape[0], action.device
        t0 = _sample_times(b, c.time_sampling, c.time_mean, c.time_std, dev)
        t1 = _sample_times(b, c.time_sampling, c.time_mean, c.time_std, dev)
        t, r = torch.maximum(t0, t1), torch.minimum(t0, t1)
        r = torch.where(torch.rand(b, device=dev) < c.ratio_r_neq_t, r, t)
        eps = torch.randn_like(action)
        z = action + t[:, None, None] * (eps - action)
        u, target = self.mean_velocity_and_target(net, cond, z, r, t, eps - action)
        err = (u - target).pow(2).mean(dim=(1, 2))
        if c.adaptive_weight_power == 0:
            return err.mean()
        w = (err.detach() + c.adaptive_weight_eps).pow(-c.adaptive_weight_power)
        return (w * err).mean()

    def mean_velocity_and_target(self, net: PolicyNet, cond: Tensor, z: Tensor, r: Tensor, t: Tensor,
                                 v: Tensor) -> tuple[Tensor, Tensor]:
        """u(z, r, t) (with its graph) and the MeanFlow target ``v - (t - r) du/dt`` (detached)."""

        cond32 = cond.float()

        def u_fn(z_: Tensor, r_: Tensor, t_: Tensor) -> Tensor:
            return self._u(net, z_, r_, t_, cond32)

        # In fp32 even under mixed precision: forward-mode AD does not go through CPU autocast (bf16
        # weights meet fp32 tangents), and du/dt is a small difference that bf16 would drown.
        with warnings.catch_warnings(), torch.autocast(device_type=z.device.type, enabled=False):
            # torch's forward-AD setup scripts a decomposition on first use and warns that jit is deprecated.
            warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=DeprecationWarning)
            # Tangent (v, 0, 1): du/dt along the flow, z moving with velocity v while r stays fixed.
            u, dudt = torch.func.jvp(u_fn, (z, r, t), (v, torch.zeros_like(r), torch.ones_like(t)))
        # The primal u keeps its autograd graph (the loss trains through it); the target is a constant.
        return u, (v - (t - r)[:, None, None] * dudt).detach()

    def _sample(self, net: PolicyNet, cond: Tensor, noise: Tensor, generator: torch.Generator | None) -> Tensor:
        n = self.config.num_inference_steps
        z = noise
        for i in range(n):
            t = torch.full((noise.shape[0],), 1.0 - i / n, device=noise.device)
            r = torch.full_like(t, 1.0 - (i + 1) / n)
            z = z - (t - r)[:, None, None] * self._u(net, z, r, t, cond)
        return z
