"""The residual actor, the critic ensemble, and base + residual as one policy-like object.

Everything here works in the base policy's *normalised* action space (its own normaliser, so
``[-1, 1]`` is the demonstrations' range under min-max normalisation): the residual actor sees the
current step's low-dim observation features and the base's action for this step and adds a
correction ``scale * tanh(.)``. Its last layer starts at zero, so before any update the combined
policy is exactly the base. The critics score (features, base action, residual).

A fine-tuned checkpoint is a directory with ``residual.json`` (the actor's config, the base's path
and the SHA-256 of its weights, checked when loaded) and ``actor.safetensors``; ``robolearn eval``
runs it like any other policy through :class:`ResidualAgent`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from robolearn.errors import MissingFileError, UserError
from robolearn.features import Feature
from robolearn.rollout import PolicyAgent

FORMAT = "robolearn.residual"
VERSION = 1
LOG_STD_MIN, LOG_STD_MAX = -5.0, 1.0


# ---------------------------------------------------------------- features of the base policy


def lowdim_keys(policy: Any) -> list[str]:
    """The base's low-dim observation keys: what the residual and the critics read."""
    keys = [k for k in policy.obs_keys if policy.shape_meta.obs[k].kind == "lowdim"]
    if not keys:
        raise UserError("the base policy reads no low-dim observation; the residual needs proprioception")
    return keys


def _dev(policy: Any) -> torch.device:
    return policy.normalizer.is_set.device


def obs_features(policy: Any, keys: list[str], values: Mapping[str, np.ndarray] | list[Mapping[str, np.ndarray]]) -> Tensor:
    """(B, D) normalised low-dim features of this step, for one observation dict or a list of them."""
    rows = [values] if isinstance(values, Mapping) else list(values)
    out = []
    for k in keys:
        x = torch.as_tensor(np.stack([np.asarray(r[k], np.float32).reshape(-1) for r in rows])).to(_dev(policy))
        out.append(policy.normalizer.normalize(k, x.reshape(len(rows), *policy.shape_meta.obs[k].tensor_shape))
                   .reshape(len(rows), -1))
    return torch.cat(out, 1).float().cpu()


def normalize_action(policy: Any, action: np.ndarray | Tensor) -> Tensor:
    x = torch.as_tensor(np.asarray(action, np.float32)).to(_dev(policy))
    return policy.normalizer.normalize(policy.action_key, x).float().cpu()


def apply_residual(policy: Any, base: np.ndarray, residual: Tensor) -> np.ndarray:
    """``base`` (raw) plus a normalised-space ``residual`` mapped to raw units (the normaliser's linear
    part), so that a zero residual returns ``base`` bit for bit."""
    k, residual = policy.action_key, residual.to(_dev(policy))
    delta = policy.normalizer.unnormalize(k, residual) - policy.normalizer.unnormalize(k, torch.zeros_like(residual))
    return (np.asarray(base, np.float32) + delta.cpu().numpy()).astype(np.float32)


# ---------------------------------------------------------------- networks


def mlp(inp: int, hidden: int, layers: int, out: int) -> nn.Sequential:
    mods: list[nn.Module] = []
    d = inp
    for _ in range(layers):
        mods += [nn.Linear(d, hidden), nn.LayerNorm(hidden), nn.ReLU()]
        d = hidden
    mods.append(nn.Linear(d, out))
    return nn.Sequential(*mods)


@dataclass
class ActorConfig:
    obs_dim: int
    action_dim: int
    hidden: int = 256
    layers: int = 2
    # Bound of the correction, in normalised action units: one for every dimension, or one per dimension.
    scale: float | list[float] = 0.1
    stochastic: bool = False  # SAC: a squashed Gaussian; TD3: deterministic

    def bound(self) -> Tensor:
        """The bound per action dimension, (action_dim,)."""
        b = torch.as_tensor(self.scale, dtype=torch.float32).flatten()
        if b.numel() == 1:
            return b.expand(self.action_dim).clone()
        if b.numel() != self.action_dim:
            raise UserError(f"the residual's scale has {b.numel()} entries for {self.action_dim} action dimensions")
        return b


class ResidualActor(nn.Module):
    """``residual = bound * tanh(f(features, base_action))``, zero at initialisation."""

    def __init__(self, cfg: ActorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # Not in the state dict: checkpoints keep the bound in residual.json's actor config.
        self.register_buffer("bound", cfg.bound(), persistent=False)
        out = cfg.action_dim * (2 if cfg.stochastic else 1)
        self.net = mlp(cfg.obs_dim + cfg.action_dim, cfg.hidden, cfg.layers, out)
        last = self.net[-1]
        nn.init.zeros_(last.weight)  # step 0: exactly the base
        nn.init.zeros_(last.bias)

    def forward(self, obs: Tensor, base: Tensor) -> Tensor:
        """The deterministic correction (the mean for SAC)."""
        h = self.net(torch.cat([obs, base], -1))
        return self.bound * torch.tanh(h[..., : self.cfg.action_dim])

    def sample(self, obs: Tensor, base: Tensor) -> tuple[Tensor, Tensor]:
        """SAC: a reparameterised sample and its log-probability (tanh-corrected)."""
        h = self.net(torch.cat([obs, base], -1))
        mean, log_std = h.chunk(2, -1)
        # Zero-initialised: log_std starts at the middle of its range.
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(log_std) + 1)
        std = log_std.exp()
        u = mean + std * torch.randn_like(mean)
        y = torch.tanh(u)
        logp = (-0.5 * ((u - mean) / std) ** 2 - log_std - 0.5 * np.log(2 * np.pi)).sum(-1)
        logp = logp - torch.log(self.bound * (1 - y.pow(2)) + 1e-6).sum(-1)
        return self.bound * y, logp


class EnsembleLinear(nn.Module):
    """``n`` independent linear layers applied in one batched matmul: (E, B, in) -> (E, B, out)."""

    def __init__(self, n: int, inp: int, out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, inp, out))
        self.bias = nn.Parameter(torch.zeros(n, 1, out))
        bound = 1 / np.sqrt(inp)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class CriticEnsemble(nn.Module):
    """``n`` Q-networks with LayerNorm on (features, base action, residual): Q values (E, B)."""

    def __init__(self, obs_dim: int, action_dim: int, n: int = 2, hidden: int = 256, layers: int = 2,
                 residual_gain: float = 1.0) -> None:
        super().__init__()
        if n < 2:
            raise UserError(f"the critic ensemble needs at least 2 members, got {n}")
        self.n = n
        # The residual enters multiplied by this (e.g. 1 / actor.scale): a correction of ~0.05 next to
        # inputs of ~1 leaves Q's slope in it (what the actor climbs) to the slowest-learning weights.
        self.register_buffer("residual_gain", torch.tensor(float(residual_gain)), persistent=False)
        mods: list[nn.Module] = []
        d = obs_dim + 2 * action_dim
        for _ in range(layers):
            mods += [EnsembleLinear(n, d, hidden), nn.LayerNorm(hidden), nn.ReLU()]
            d = hidden
        mods.append(EnsembleLinear(n, d, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, obs: Tensor, base: Tensor, residual: Tensor) -> Tensor:
        x = torch.cat([obs, base, residual * self.residual_gain], -1)
        return self.net(x.unsqueeze(0).expand(self.n, *x.shape)).squeeze(-1)

    def min_pair(self, q: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The minimum over a random pair of members (REDQ-style): (E, B) -> (B,)."""
        idx = torch.randperm(self.n, generator=generator)[:2]
        return q[idx].min(0).values


# ---------------------------------------------------------------- base + residual as one policy


def file_hash(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def base_hash(base_ckpt: str | os.PathLike) -> str:
    """What identifies a base: its weights (and EMA weights) and config."""
    root = Path(base_ckpt)
    parts = [file_hash(root / n) for n in ("config.json", "model.safetensors", "ema.safetensors")
             if (root / n).is_file()]
    return hashlib.sha256("".join(parts).encode()).hexdigest()


class ResidualPolicy:
    """A frozen base policy and a residual actor: ``act(features, base action) -> action``."""

    def __init__(self, base: Any, actor: ResidualActor, base_path: str, keys: list[str]) -> None:
        self.base = base
        self.actor = actor.eval()
        self.base_path = base_path
        self.keys = keys
        self.policy_type = f"residual+{base.policy_type}"
        self.shape_meta = base.shape_meta
        self.obs_keys = base.obs_keys
        self.config = base.config

    @torch.no_grad()
    def residual(self, obs: Tensor, base_n: Tensor) -> Tensor:
        return self.actor(obs, base_n)

    def save(self, path: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> Path:
        from safetensors.torch import save_file

        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / f".actor.tmp-{os.getpid()}"
        save_file({k: v.detach().cpu().contiguous() for k, v in self.actor.state_dict().items()}, str(tmp))
        os.replace(tmp, out / "actor.safetensors")
        meta = {"format": FORMAT, "version": VERSION, "actor": asdict(self.actor.cfg), "keys": self.keys,
                "base": str(Path(self.base_path).resolve()), "base_sha256": base_hash(self.base_path),
                "extra": dict(extra or {})}
        tmp = out / f".residual.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(tmp, out / "residual.json")
        return out


def is_residual_checkpoint(path: str | os.PathLike) -> bool:
    return (Path(path) / "residual.json").is_file()


def load_residual(path: str | os.PathLike, device: str = "cpu", overrides: Mapping[str, Any] | None = None,
                  base: str | os.PathLike | None = None) -> ResidualPolicy:
    """Load a fine-tuned checkpoint; refuses a base whose weights changed since (by SHA-256)."""
    from safetensors.torch import load_file

    from robolearn.policies.checkpoint import load_policy

    root = Path(path)
    if not is_residual_checkpoint(root):
        raise MissingFileError(f"{root} is not a residual checkpoint: no residual.json")
    meta = json.loads((root / "residual.json").read_text())
    if meta.get("format") != FORMAT or int(meta.get("version", 0)) > VERSION:
        raise UserError(f"{root}/residual.json is not a {FORMAT} checkpoint this robolearn reads")
    base_path = Path(base or meta["base"])
    if not (base_path / "config.json").is_file():
        raise MissingFileError(f"{root}: its base policy {base_path} is missing; restore it (or pass its new path)")
    got = base_hash(base_path)
    if got != meta["base_sha256"]:
        raise UserError(f"{root}: the base policy at {base_path} is not the one this residual was trained on "
                        f"(SHA-256 {got[:12]} != {meta['base_sha256'][:12]}); restore the original base")
    policy = load_policy(base_path, device="cpu", overrides=overrides)
    actor = ResidualActor(ActorConfig(**meta["actor"]))
    actor.load_state_dict(load_file(str(root / "actor.safetensors")))
    return ResidualPolicy(policy, actor, str(base_path), list(meta["keys"]))


class ResidualAgent(PolicyAgent):
    """A :class:`PolicyAgent` of the base whose every action gets the residual's correction.

    The residual reads this tick's low-dim observation, so every tick's observation is needed
    (pushing each one into the base's history leaves it exactly as when pushed only before calls)."""

    def __init__(self, policy: ResidualPolicy, features: Mapping[str, Feature], n_envs: int = 1) -> None:
        super().__init__(policy.base, features, n_envs)
        self.residual_policy = policy
        self.last_base: dict[int, np.ndarray] = {}

    def observation_needed(self, i: int) -> bool:
        return True

    def act(self, observations: Mapping[int, Mapping[str, np.ndarray] | None]) -> dict[int, np.ndarray]:
        base = super().act(observations)
        if not base:
            return base
        envs = list(base)
        rp = self.residual_policy
        b = np.stack([base[i] for i in envs])
        self.last_base = dict(base)
        feats = obs_features(rp.base, rp.keys, [observations[i] for i in envs])  # type: ignore[misc]
        bn = normalize_action(rp.base, b)
        a = apply_residual(rp.base, b, rp.residual(feats, bn))
        return {i: a[row] for row, i in enumerate(envs)}
