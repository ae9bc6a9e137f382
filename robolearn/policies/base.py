"""The policy interface shared by the diffusion and flow policies.

A policy maps the last ``n_obs_steps`` observations to a chunk of ``horizon`` actions. Chunk index
``i`` lines up with observation step ``i`` of the training window, so index ``n_obs_steps - 1`` is
the action for *now*: a controller executes ``chunk[:, n_obs_steps - 1 : n_obs_steps - 1 + n_action_steps]``
(see ``executable_actions``) and then asks for a new chunk (receding horizon).

Normalisation statistics are buffers inside the module, so they travel in the state dict and in
checkpoints; ``predict_action`` takes and returns raw (unnormalised) values.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from robolearn.config import check_config, load_config, yaml11_float  # noqa: F401 - yaml11_float re-exported
from robolearn.data.normalizer import Normalizer
from robolearn.errors import ConfigError, UserError
from robolearn.policies.backbones import BACKBONES, TransformerConfig, UNetConfig, make_backbone
from robolearn.policies.ema import EMA, EMAConfig
from robolearn.policies.encoders import EncoderConfig, ObsEncoder, module_name
from robolearn.policies.shapes import ShapeMeta


@dataclass
class PolicyConfig:
    """Fields shared by every policy; subclasses add their generative-model settings."""

    type: str = ""
    # None: taken from shape_meta (i.e. from the dataset the policy is built for).
    n_obs_steps: int | None = field(default=None, metadata={"min": 1})
    horizon: int | None = field(default=None, metadata={"min": 1})
    # None: horizon // 2, capped so the executed actions stay inside the chunk.
    n_action_steps: int | None = field(default=None, metadata={"min": 1})
    backbone: str = field(default="unet", metadata={"choices": BACKBONES})
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)

    def validate(self) -> None:
        # Field types and ranges are the loader's (robolearn.config); here only how fields relate.
        # Window sizes left None come from the data (resolve_config), which checks them again.
        n, h, a = self.n_obs_steps, self.horizon, self.n_action_steps
        if n is not None and h is not None and n > h:
            raise ConfigError(f"must be <= horizon ({h}), got {n}", key="n_obs_steps")
        if n is not None and h is not None and a is not None and n - 1 + a > h:
            raise ConfigError(f"n_obs_steps - 1 + n_action_steps must be <= horizon, got {n} - 1 + {a} > {h}",
                              key="n_action_steps")


# ---------------------------------------------------------------- config <-> dict


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) config dataclass: tuples become lists."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_dict(cls: type, d: Mapping[str, Any], where: str = "", prefix: str = "") -> Any:
    """Build config dataclass ``cls`` from a (nested) dict with the typed loader of
    :mod:`robolearn.config`: unknown keys, wrong types and out-of-range values raise ``ConfigError``
    naming ``where`` and the dotted key under ``prefix``; missing fields default."""
    return load_config(cls, d, where, prefix=prefix)


def flatten_dict(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (empty mappings stay as values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.update(flatten_dict(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_diff(a: Mapping[str, Any], b: Mapping[str, Any], ignore: Iterable[str] = ()) -> dict[str, tuple[Any, Any]]:
    """Dotted field name -> (value in a, value in b) for every field that differs."""
    fa, fb = flatten_dict(a), flatten_dict(b)
    skip = set(ignore)
    missing = object()
    out = {}
    for k in sorted(set(fa) | set(fb)):
        if k in skip or any(k.startswith(s + ".") for s in skip):
            continue
        va, vb = fa.get(k, missing), fb.get(k, missing)
        if va != vb:
            out[k] = ("<absent>" if va is missing else va, "<absent>" if vb is missing else vb)
    return out


# ---------------------------------------------------------------- normalisation buffers


class _AffineStats(nn.Module):
    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        for name, v in (("n_scale", 1.0), ("n_bias", 0.0), ("u_scale", 1.0), ("u_bias", 0.0)):
            self.register_buffer(name, torch.full(shape, v, dtype=torch.float32))


class NormalizerModule(nn.Module):
    """Per-key affine maps ``normalize(x) = x * n_scale + n_bias`` (and back) held as buffers.

    The maps are recovered from any ``Normalizer`` through its public API (images of 0 and 1), so
    every mode (minmax, gaussian, quantile, identity) lands in the same four buffers."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        super().__init__()
        self.shapes = {k: tuple(s) for k, s in shapes.items()}
        self._names: dict[str, str] = {}
        self.stats = nn.ModuleDict()
        for k, shape in self.shapes.items():
            name = module_name(k)
            while name in self.stats:
                name += "_"
            self._names[k] = name
            self.stats[name] = _AffineStats(shape)
        self.register_buffer("is_set", torch.zeros((), dtype=torch.bool))
        self.json: dict[str, Any] | None = None  # the Normalizer this was set from, for checkpoints

    def set(self, normalizer: Normalizer) -> None:
        missing = [k for k in self.shapes if k not in normalizer.stats]
        if missing:
            raise ValueError(f"the normalizer has no statistics for {', '.join(missing)} "
                             f"(it has {', '.join(normalizer.stats) or 'none'})")
        for k, shape in self.shapes.items():
            stat_shape = tuple(np.asarray(normalizer.stats[k].min).shape)
            if stat_shape != shape:
                raise ValueError(f"normalizer statistics of {k!r} have shape {stat_shape}, the policy expects {shape}")
            zero, one = np.zeros(shape, np.float32), np.ones(shape, np.float32)
            n0, n1 = normalizer.normalize(k, zero), normalizer.normalize(k, one)
            u0, u1 = normalizer.unnormalize(k, zero), normalizer.unnormalize(k, one)
            st = self.stats[self._names[k]]
            for buf, v in (("n_scale", n1 - n0), ("n_bias", n0), ("u_scale", u1 - u0), ("u_bias", u0)):
                getattr(st, buf).copy_(torch.as_tensor(np.asarray(v, np.float32)))
        self.is_set.fill_(True)
        self.json = normalizer.to_json()

    def _stats(self, key: str) -> _AffineStats:
        if not bool(self.is_set):
            raise RuntimeError("the policy has no normalisation statistics; call "
                               "policy.set_normalizer(dataset.normalizer()) before training")
        return self.stats[self._names[key]]

    def normalize(self, key: str, x: Tensor) -> Tensor:
        st = self._stats(key)
        return x * st.n_scale + st.n_bias

    def unnormalize(self, key: str, x: Tensor) -> Tensor:
        st = self._stats(key)
        return x * st.u_scale + st.u_bias


# ---------------------------------------------------------------- the policy


class PolicyNet(nn.Module):
    """The trainable part of a policy (what EMA averages): observation encoder + denoiser."""

    def __init__(self, obs_encoder: ObsEncoder, denoiser: nn.Module) -> None:
        super().__init__()
        self.obs_encoder = obs_encoder
        self.denoiser = denoiser


def executable_actions(chunk: Tensor, n_obs_steps: int, n_action_steps: int) -> Tensor:
    """The actions of a (B, horizon, A) chunk to execute now: the one aligned with the latest
    observation (index ``n_obs_steps - 1``) and the ``n_action_steps - 1`` after it."""
    start = n_obs_steps - 1
    if start + n_action_steps > chunk.shape[1]:
        raise ValueError(f"a chunk of {chunk.shape[1]} actions has no steps {start}..{start + n_action_steps - 1}")
    return chunk[:, start : start + n_action_steps]


def resolve_config(config: PolicyConfig, shape_meta: ShapeMeta) -> PolicyConfig:
    """A copy of ``config`` with the window sizes filled from ``shape_meta``, validated."""
    updates: dict[str, Any] = {}
    for name in ("n_obs_steps", "horizon"):
        mine, theirs = getattr(config, name), getattr(shape_meta, name)
        if mine is None and theirs is None:
            raise UserError(f"{name} is set neither in the config nor in shape_meta")
        if mine is not None and theirs is not None and mine != theirs:
            raise UserError(f"config {name}={mine} disagrees with the data's {name}={theirs}")
        updates[name] = mine if mine is not None else theirs
    if config.n_action_steps is None:
        updates["n_action_steps"] = max(1, min(updates["horizon"] // 2, updates["horizon"] - updates["n_obs_steps"] + 1))
    resolved = dataclasses.replace(copy.deepcopy(config), **updates)  # no sharing with the caller's object
    check_config(resolved)
    return resolved


class Policy(nn.Module):
    """Base class: observation encoding, normalisation, EMA and the public API.

    Subclasses set ``policy_type``, ``config_class`` and ``n_times`` and implement ``_loss`` and
    ``_sample`` in normalised action space.

    Training loop contract: ``loss = policy.compute_loss(batch)``; backward; optimiser step;
    ``policy.update_ema()``. The optimiser takes ``policy.parameters()``, which excludes the EMA copy.
    Inference (``predict_action``) uses the EMA weights when EMA is on.
    """

    policy_type: ClassVar[str] = ""
    config_class: ClassVar[type[PolicyConfig]] = PolicyConfig
    n_times: ClassVar[int] = 1  # time inputs of the denoiser

    def __init__(self, config: PolicyConfig, shape_meta: ShapeMeta | Mapping[str, Any]) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        if config.type != self.policy_type:
            raise ValueError(f"config type {config.type!r} does not match policy type {self.policy_type!r}")
        self.shape_meta = ShapeMeta.coerce(shape_meta)
        self.config = resolve_config(config, self.shape_meta)
        cfg = self.config
        encoder = ObsEncoder(self.shape_meta, cfg.encoder, cfg.n_obs_steps)
        # A policy trained with given leading actions (flow's prefix_actions) also reads them and their mask.
        in_dim = 2 * self.action_dim + 1 if self.prefix_actions else None
        denoiser = make_backbone(cfg.backbone, cfg.unet, cfg.transformer, action_dim=self.action_dim,
                                 cond_dim=encoder.out_dim, n_cond_tokens=cfg.n_obs_steps, n_times=self.n_times,
                                 horizon=cfg.horizon, in_dim=in_dim)
        self.net = PolicyNet(encoder, denoiser)
        shapes = {k: self.shape_meta.obs[k].tensor_shape for k in encoder.lowdim_keys}
        shapes[self.action_key] = (self.action_dim,)
        self.normalizer = NormalizerModule(shapes)
        self.ema: EMA | None = EMA(self.net, cfg.ema) if cfg.ema.enabled else None

    # ------------------------------------------------------------ properties

    @property
    def n_obs_steps(self) -> int:
        return int(self.config.n_obs_steps)  # type: ignore[arg-type]

    @property
    def horizon(self) -> int:
        return int(self.config.horizon)  # type: ignore[arg-type]

    @property
    def n_action_steps(self) -> int:
        return int(self.config.n_action_steps)  # type: ignore[arg-type]

    @property
    def action_dim(self) -> int:
        return self.shape_meta.action_dim

    @property
    def prefix_actions(self) -> int:
        """How many leading chunk actions the policy can be given (0: none; see FlowConfig)."""
        return int(getattr(self.config, "prefix_actions", 0) or 0)

    @property
    def action_key(self) -> str:
        return self.shape_meta.action_key

    @property
    def obs_keys(self) -> list[str]:
        return self.net.obs_encoder.obs_keys

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def inference_net(self) -> PolicyNet:
        """The weights ``predict_action`` uses: the EMA copy when EMA is on."""
        return self.ema.shadow if self.ema is not None else self.net  # type: ignore[return-value]

    # ------------------------------------------------------------ setup

    def set_normalizer(self, normalizer: Normalizer) -> None:
        """Copy the statistics of the low-dim obs keys and the action into the module's buffers."""
        self.normalizer.set(normalizer)

    def update_ema(self) -> None:
        """Call after each optimiser step."""
        if self.ema is not None:
            self.ema.update(self.net)

    def _apply(self, fn: Any, recurse: bool = True) -> Policy:
        # .to() / .cuda() / .double() must also move the EMA copy, which is not a registered submodule.
        super()._apply(fn, recurse)
        if self.ema is not None:
            self.ema.shadow._apply(fn, recurse)
        return self

    # ------------------------------------------------------------ public API

    def executable_actions(self, chunk: Tensor) -> Tensor:
        """``chunk[:, n_obs_steps - 1 : n_obs_steps - 1 + n_action_steps]``: what to execute now."""
        return executable_actions(chunk, self.n_obs_steps, self.n_action_steps)

    def compute_loss(self, batch: Mapping[str, Any]) -> Tensor:
        """Training loss of a dataset batch ``{"obs": {...}, "action": (B, horizon, A)}`` (raw values)."""
        obs = self._prepare_obs(batch["obs"], exact=True)
        action = batch["action"].to(self.device, torch.float32)
        b = next(iter(obs.values())).shape[0]
        if tuple(action.shape) != (b, self.horizon, self.action_dim):
            raise ValueError(f"action batch has shape {tuple(action.shape)}, expected "
                             f"({b}, {self.horizon}, {self.action_dim})")
        cond = self.net.obs_encoder(obs)
        return self._loss(self.net, cond, self.normalizer.normalize(self.action_key, action))

    def forward(self, batch: Mapping[str, Any]) -> Tensor:
        """Same as ``compute_loss``: wrappers such as DistributedDataParallel call ``forward``."""
        return self.compute_loss(batch)

    @torch.no_grad()
    def predict_action(self, obs: Mapping[str, Tensor], *, noise: Tensor | None = None,
                       generator: torch.Generator | None = None, use_ema: bool = True,
                       prefix: Tensor | None = None, n_prefix: int = 0) -> Tensor:
        """Action chunk (B, horizon, A), unnormalised, for raw observations (B, T >= n_obs_steps, ...).

        Only the last ``n_obs_steps`` steps are used. ``noise`` (B, horizon, A) or ``generator`` fixes
        the sampling randomness, for reproducible outputs. Image crops follow the module's mode
        (random in train mode, centred in eval mode); the EMA copy is always in eval mode.

        Policies trained with ``prefix_actions``: ``prefix`` (B, horizon, A) raw actions whose first
        ``n_prefix`` (<= prefix_actions) are given; the chunk keeps them and continues from them."""
        net = self.inference_net if use_ema else self.net
        o = self._prepare_obs(obs, exact=False)
        cond = net.obs_encoder(o)
        b = cond.shape[0]
        shape = (b, self.horizon, self.action_dim)
        if noise is None:
            noise = torch.randn(shape, generator=generator, device=generator.device if generator else self.device)
        elif tuple(noise.shape) != shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {shape}")
        if n_prefix:
            if not 0 < n_prefix <= self.prefix_actions or prefix is None:
                raise ValueError(f"this policy takes 0..{self.prefix_actions} given actions (prefix_actions), "
                                 f"got {n_prefix}" + ("" if prefix is not None else " without the actions"))
            y = self.normalizer.normalize(self.action_key, prefix.to(self.device, torch.float32))
            mask = (torch.arange(self.horizon, device=self.device) < n_prefix).float()[None, :, None]
            x = self._sample(net, cond, noise.to(self.device, torch.float32), generator, prefix=(y, mask))
        else:
            x = self._sample(net, cond, noise.to(self.device, torch.float32), generator)
        return self.normalizer.unnormalize(self.action_key, x)

    # ------------------------------------------------------------ subclass hooks

    def _loss(self, net: PolicyNet, cond: Tensor, action: Tensor) -> Tensor:
        raise NotImplementedError

    def _sample(self, net: PolicyNet, cond: Tensor, noise: Tensor, generator: torch.Generator | None) -> Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------ helpers

    def _prepare_obs(self, obs: Mapping[str, Tensor], exact: bool) -> dict[str, Tensor]:
        missing = [k for k in self.obs_keys if k not in obs]
        if missing:
            raise KeyError(f"observation lacks {', '.join(missing)}; the policy reads {', '.join(self.obs_keys)}")
        out: dict[str, Tensor] = {}
        n = self.n_obs_steps
        batch = None
        dev = self.device
        for k in self.obs_keys:
            x = obs[k]
            spec = self.shape_meta.obs[k]
            shape = spec.tensor_shape
            if x.dim() != 2 + len(shape) or tuple(x.shape[2:]) != shape:
                raise ValueError(f"observation {k!r} has shape {tuple(x.shape)}, expected (B, T, {', '.join(map(str, shape))})")
            if (x.shape[1] != n) if exact else (x.shape[1] < n):
                raise ValueError(f"observation {k!r} has {x.shape[1]} steps, the policy needs {n}")
            if batch is not None and x.shape[0] != batch:
                raise ValueError(f"observation {k!r} has batch size {x.shape[0]}, others {batch}")
            batch = x.shape[0]
            x = x[:, -n:]
            # Loaders ship images as uint8 (4x less to copy between processes and to the GPU);
            # scale to [0, 1] only here, on the policy's device.
            x = x.to(dev).float().div_(255.0) if x.dtype == torch.uint8 else x.to(dev, torch.float32)
            out[k] = self.normalizer.normalize(k, x) if spec.kind == "lowdim" else x
        return out

    def extra_repr(self) -> str:
        n = sum(p.numel() for p in self.net.parameters())
        return f"type={self.policy_type}, backbone={self.config.backbone}, params={n / 1e6:.2f}M"

