"""Denoisers over an action sequence, shared by the diffusion and flow policies.

Every backbone maps ``(x (B, T, A), times (B, n_times), cond (B, cond_dim)) -> (B, T, A)``:
``times`` holds the diffusion timestep, or flow times scaled to [0, 1000] (MeanFlow passes two: t and
t - r). The output is whatever the policy trains it to predict (noise, sample, velocity).

Both backbones avoid ``scaled_dot_product_attention`` and other ops without forward-mode AD, because
MeanFlow differentiates the network with ``torch.func.jvp``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robolearn.config import check_config
from robolearn.errors import ConfigError

BACKBONES = ("unet", "transformer")


@dataclass
class UNetConfig:
    down_dims: tuple[int, ...] = field(default=(256, 512, 1024), metadata={"nonempty": True, "min": 1})
    kernel_size: int = field(default=5, metadata={"min": 1})
    n_groups: int = field(default=8, metadata={"min": 1})
    time_embed_dim: int = field(default=128, metadata={"min": 2})

    def validate(self) -> None:
        if any(d % self.n_groups for d in self.down_dims):
            raise ConfigError(f"{list(self.down_dims)} must be divisible by n_groups ({self.n_groups})", key="down_dims")
        if self.kernel_size % 2 == 0:
            raise ConfigError(f"must be odd so the sequence length is kept, got {self.kernel_size}", key="kernel_size")
        if self.time_embed_dim % 2:
            raise ConfigError(f"must be even, got {self.time_embed_dim}", key="time_embed_dim")


@dataclass
class TransformerConfig:
    d_model: int = field(default=256, metadata={"min": 1})
    n_layers: int = field(default=8, metadata={"min": 1})
    n_heads: int = field(default=4, metadata={"min": 1})
    mlp_ratio: float = field(default=4.0, metadata={"gt": 0})
    dropout: float = field(default=0.1, metadata={"min": 0.0, "lt": 1.0})
    time_embed_dim: int = field(default=128, metadata={"min": 2})

    def validate(self) -> None:
        if self.d_model % self.n_heads:
            raise ConfigError(f"{self.d_model} must be divisible by n_heads ({self.n_heads})", key="d_model")
        if self.time_embed_dim % 2:
            raise ConfigError(f"must be even, got {self.time_embed_dim}", key="time_embed_dim")


class TimeEmbedding(nn.Module):
    """Sinusoidal features of each time input, concatenated, then an MLP."""

    def __init__(self, n_times: int, dim: int) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"time_embed_dim must be even, got {dim}")
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(n_times * dim, 4 * dim), nn.Mish(), nn.Linear(4 * dim, dim))

    def forward(self, times: Tensor) -> Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=times.device, dtype=times.dtype) / half)
        args = times[..., None] * freqs  # (B, n_times, half)
        emb = torch.cat([args.sin(), args.cos()], dim=-1).flatten(1)
        return self.mlp(emb)


# ---------------------------------------------------------------- 1-D conditional U-Net


class _ConvBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int, groups: int) -> None:
        super().__init__(nn.Conv1d(cin, cout, k, padding=k // 2), nn.GroupNorm(groups, cout), nn.Mish())


class FiLMResBlock(nn.Module):
    """Two conv blocks; the conditioning scales and shifts the features in between (FiLM)."""

    def __init__(self, cin: int, cout: int, cond_dim: int, k: int, groups: int) -> None:
        super().__init__()
        self.block1 = _ConvBlock(cin, cout, k, groups)
        self.block2 = _ConvBlock(cout, cout, k, groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * cout))
        self.skip = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        h = self.block1(x)
        scale, shift = self.film(cond)[..., None].chunk(2, dim=1)
        h = h * (1.0 + scale) + shift  # 1 + scale: an untrained FiLM layer leaves the features alone
        return self.block2(h) + self.skip(x)


class ConditionalUnet1D(nn.Module):
    """A U-Net over time: the action sequence is a 1-D signal with A channels.

    Each level has two FiLM residual blocks; all but the last halve the length. Sequences whose length
    is not a multiple of 2 ** (levels - 1) are zero-padded at the end and cropped back."""

    def __init__(self, action_dim: int, cond_dim: int, n_times: int, config: UNetConfig,
                 in_dim: int | None = None) -> None:
        super().__init__()
        check_config(config, "unet")
        k, g, dims = config.kernel_size, config.n_groups, list(config.down_dims)
        self.time_embed = TimeEmbedding(n_times, config.time_embed_dim)
        c = config.time_embed_dim + cond_dim
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        cin = in_dim or action_dim  # more input channels than outputs: conditioning channels (a prefix)
        for i, d in enumerate(dims):
            self.down.append(nn.ModuleList([FiLMResBlock(cin, d, c, k, g), FiLMResBlock(d, d, c, k, g)]))
            if i < len(dims) - 1:
                self.downsample.append(nn.Conv1d(d, d, 3, stride=2, padding=1))
            cin = d
        self.mid = nn.ModuleList([FiLMResBlock(cin, cin, c, k, g), FiLMResBlock(cin, cin, c, k, g)])
        self.upsample = nn.ModuleList()
        self.up = nn.ModuleList()
        for i in reversed(range(len(dims) - 1)):
            self.upsample.append(nn.ConvTranspose1d(dims[i + 1], dims[i + 1], 4, stride=2, padding=1))
            self.up.append(nn.ModuleList([FiLMResBlock(dims[i + 1] + dims[i], dims[i], c, k, g),
                                          FiLMResBlock(dims[i], dims[i], c, k, g)]))
        self.final = nn.Sequential(_ConvBlock(dims[0], dims[0], k, g), nn.Conv1d(dims[0], action_dim, 1))
        self.multiple = 2 ** (len(dims) - 1)

    def forward(self, x: Tensor, times: Tensor, cond: Tensor) -> Tensor:
        length = x.shape[1]
        c = torch.cat([self.time_embed(times), cond], dim=-1)
        h = x.transpose(1, 2)
        pad = -length % self.multiple
        if pad:
            h = F.pad(h, (0, pad))
        skips = []
        for i, (b1, b2) in enumerate(self.down):
            h = b2(b1(h, c), c)
            if i < len(self.downsample):
                skips.append(h)
                h = self.downsample[i](h)
        for b in self.mid:
            h = b(h, c)
        for upsample, (b1, b2) in zip(self.upsample, self.up, strict=True):
            h = torch.cat([upsample(h), skips.pop()], dim=1)
            h = b2(b1(h, c), c)
        return self.final(h)[..., :length].transpose(1, 2)


# ---------------------------------------------------------------- transformer


class _Attention(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        # Written out rather than F.scaled_dot_product_attention, which has no forward-mode AD (jvp).
        att = torch.softmax(q @ k.transpose(-2, -1) * (q.shape[-1] ** -0.5), dim=-1)
        y = (self.drop(att) @ v).transpose(1, 2).reshape(b, n, d)
        return self.out(y)


class _Block(nn.Module):
    """Pre-norm block with adaLN-Zero: the time embedding sets a shift, scale and gate per sublayer.

    Gates start at zero, so an untrained block is the identity and the denoiser starts as a linear
    map of its input; diffusion and flow targets are close to such maps, which speeds up training."""

    def __init__(self, d: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False)
        self.attn = _Attention(d, heads, dropout)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False)
        hidden = int(d * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))
        self.drop = nn.Dropout(dropout)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        nn.init.zeros_(self.modulation[1].weight)
        nn.init.zeros_(self.modulation[1].bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c)[:, None].chunk(6, dim=-1)
        x = x + gate1 * self.drop(self.attn(self.norm1(x) * (1 + scale1) + shift1))
        return x + gate2 * self.drop(self.mlp(self.norm2(x) * (1 + scale2) + shift2))


class TransformerDenoiser(nn.Module):
    """A transformer over [one token per observation step, action tokens]; the time conditions
    every block through adaLN-Zero modulation.

    Attention is bidirectional (not causal): the whole chunk is denoised jointly, there is no
    autoregressive order to respect, and every action token may use every observation token."""

    def __init__(self, action_dim: int, cond_dim: int, n_cond_tokens: int, n_times: int, horizon: int,
                 config: TransformerConfig, in_dim: int | None = None) -> None:
        super().__init__()
        check_config(config, "transformer")
        if cond_dim % n_cond_tokens:
            raise ValueError(f"cond_dim {cond_dim} is not a multiple of the {n_cond_tokens} observation tokens")
        d = config.d_model
        self.n_cond_tokens = n_cond_tokens
        self.time_embed = TimeEmbedding(n_times, config.time_embed_dim)
        self.time_proj = nn.Linear(config.time_embed_dim, d)
        self.cond_proj = nn.Linear(cond_dim // n_cond_tokens, d)
        self.in_proj = nn.Linear(in_dim or action_dim, d)
        self.pos = nn.Parameter(torch.randn(1, n_cond_tokens + horizon, d) * 0.02)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(_Block(d, config.n_heads, config.mlp_ratio, config.dropout)
                                    for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, action_dim)

    def forward(self, x: Tensor, times: Tensor, cond: Tensor) -> Tensor:
        b, length = x.shape[:2]
        c = self.time_proj(self.time_embed(times))
        tokens = torch.cat([self.cond_proj(cond.view(b, self.n_cond_tokens, -1)), self.in_proj(x)], dim=1)
        h = self.drop(tokens + self.pos[:, : self.n_cond_tokens + length])
        for block in self.blocks:
            h = block(h, c)
        return self.head(self.norm(h[:, self.n_cond_tokens :]))


def make_backbone(name: str, unet: UNetConfig, transformer: TransformerConfig, *, action_dim: int, cond_dim: int,
                  n_cond_tokens: int, n_times: int, horizon: int, in_dim: int | None = None) -> nn.Module:
    """The denoiser: (B, horizon, in_dim) in, (B, horizon, action_dim) out; ``in_dim`` defaults to action_dim."""
    if name == "unet":
        return ConditionalUnet1D(action_dim, cond_dim, n_times, unet, in_dim)
    if name == "transformer":
        return TransformerDenoiser(action_dim, cond_dim, n_cond_tokens, n_times, horizon, transformer, in_dim)
    raise ValueError(f"unknown backbone {name!r}; use one of {', '.join(BACKBONES)}")
