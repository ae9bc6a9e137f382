"""Real-time-chunking-style inpainting: sample a new chunk that agrees with the actions still to come.

When a new chunk is requested while the previous one is still executing, its first actions overlap
actions that will be executed anyway (those due before the new chunk can arrive: *frozen*) and
actions that could still change (the rest of the overlap). As in real-time chunking (Black et al.,
2025), the new chunk is sampled with that overlap as a soft constraint: a weight per chunk index,
1 on the frozen part, decaying exponentially to 0 over the rest of the overlap, 0 beyond it.

How the constraint enters the sampler is the inpainting of image diffusion (replacement): before
every denoising step the constrained indices of the current sample are pulled towards the known
actions noised to the step's noise level, ``z <- w * noised(known) + (1 - w) * z``, and the final
sample is blended the same way (so the frozen part is exactly the old actions). RTC proper steers
with a guidance gradient through the denoiser; replacement needs no backward pass, which keeps it
cheap on a CPU. For a one-step MeanFlow policy the only noise level is pure noise, so inpainting
reduces to the final blend (a crossfade from the old actions into the new chunk).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor


def overlap_weights(horizon: int, start: int, frozen: int, overlap: int, decay: float = 2.0) -> np.ndarray:
    """Per chunk index: 1 on ``[start, start + frozen)``, exponentially decaying over the rest of
    ``[start, start + overlap)``, 0 elsewhere (``start`` = the chunk index of the first known action)."""
    w = np.zeros(horizon, np.float32)
    frozen = min(frozen, overlap)
    for j in range(overlap):
        i = start + j
        if not 0 <= i < horizon:
            continue
        if j < frozen:
            w[i] = 1.0
        else:
            span = max(1, overlap - frozen)
            w[i] = float(np.exp(-decay * (j - frozen + 1) / span))
    return w


@torch.no_grad()
def predict_inpainted(policy: Any, obs: Mapping[str, Tensor], noise: Tensor, known: Tensor, weights: Tensor,
                      generator: torch.Generator | None = None) -> Tensor:
    """A raw action chunk (B, horizon, A) like ``policy.predict_action``, with ``known`` (B, horizon, A)
    raw actions imposed where ``weights`` (horizon,) is positive.

    A policy trained with given leading actions (``prefix_actions``) takes the leading run of weight 1
    as its prefix instead: the network continues them rather than being pulled towards them."""
    if getattr(policy, "prefix_actions", 0):
        n = 0
        while n < min(policy.prefix_actions, weights.shape[0]) and float(weights[n]) >= 1.0:
            n += 1
        if n:
            return policy.predict_action(obs, noise=noise, generator=generator, prefix=known, n_prefix=n)
    net = policy.inference_net
    cond = net.obs_encoder(policy._prepare_obs(obs, exact=False))  # noqa: SLF001 - the policy's own input path
    dev = policy.device
    z = noise.to(dev, torch.float32)
    y = policy.normalizer.normalize(policy.action_key, known.to(dev, torch.float32))
    w = weights.to(dev, torch.float32)[None, :, None]
    kind = policy.policy_type
    if kind in ("flow", "meanflow"):
        n = policy.config.num_inference_steps
        eps = z.clone()
        for i in range(n):
            t_hi, t_lo = 1.0 - i / n, 1.0 - (i + 1) / n
            z = w * ((1.0 - t_hi) * y + t_hi * eps) + (1.0 - w) * z
            t = torch.full((z.shape[0],), t_hi, device=dev)
            if kind == "flow":
                v = net.denoiser(z, t[:, None] * policy.config.time_scale, cond)
                z = z - v / n
            else:
                r = torch.full_like(t, t_lo)
                z = z - (t - r)[:, None, None] * policy._u(net, z, r, t, cond)  # noqa: SLF001
    elif kind == "diffusion":
        sched = policy.sample_scheduler
        sched.set_timesteps(policy.config.num_inference_steps, device=dev)
        eps = z.clone()
        times = torch.empty(z.shape[0], 1, device=dev)
        for t in sched.timesteps:
            known_t = policy.train_scheduler.add_noise(y, eps, t.reshape(1).expand(z.shape[0]).to(dev))
            z = w * known_t + (1.0 - w) * z
            out = net.denoiser(z, times.fill_(float(t)), cond)
            z = sched.step(out, t, z, generator=generator).prev_sample
    else:
        raise ValueError(f"inpainting does not know policy type {kind!r}")
    z = w * y + (1.0 - w) * z
    return policy.normalizer.unnormalize(policy.action_key, z)
