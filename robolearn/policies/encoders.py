"""Observation encoders: low-dim keys through an MLP, each camera through its own ResNet-18.

The encoder turns the ``n_obs_steps`` observations of a window into one flat conditioning vector
``(B, n_obs_steps * per_step_dim)``; step features are laid out time-major so the transformer
denoiser can split them back into one token per observation step.

Images are trained from scratch, so the ResNet uses GroupNorm: BatchNorm's running statistics
drift under the EMA and behave differently between training and inference with small batches.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from robolearn.config import check_config
from robolearn.errors import ConfigError, UserError
from robolearn.policies.shapes import ShapeMeta

_CAMERA_SUFFIX = re.compile(r"[_/.](image|images|rgb|color|depth)$")


@dataclass
class EncoderConfig:
    # Low-dim keys (normalised, concatenated per step) go through Linear+Mish layers of these widths.
    lowdim_hidden_dims: tuple[int, ...] = field(default=(256,), metadata={"min": 1})
    lowdim_feature_dim: int = field(default=64, metadata={"min": 1})
    # Channels of the first ResNet stage; 64 is the standard ResNet-18, smaller is cheaper.
    resnet_width: int = field(default=64, metadata={"min": 1})
    # Project each camera's pooled ResNet features to this size; None keeps 8 * resnet_width.
    image_feature_dim: int | None = field(default=None, metadata={"min": 1})
    # Side of the crop relative to the image (random in training, centred at inference); 1 = no crop.
    crop_ratio: float = field(default=0.9, metadata={"gt": 0.0, "max": 1.0})
    # Depth keys become an extra input channel of the camera they pair with (or their own encoder).
    use_depth: bool = True
    # rgb key -> depth key; None pairs by name (``cam_image`` with ``cam_depth``).
    depth_pairs: dict[str, str] | None = None
    # Depth in metres is clipped to [0, depth_max_m] and scaled to [-1, 1].
    depth_max_m: float = field(default=2.0, metadata={"gt": 0.0})


def module_name(key: str) -> str:
    """A key usable as a submodule / state-dict name (no dots)."""
    return re.sub(r"[^0-9A-Za-z_]", "_", key) or "_"


# ---------------------------------------------------------------- cropping


def crop_size(hw: tuple[int, int], ratio: float) -> tuple[int, int]:
    return max(1, round(hw[0] * ratio)), max(1, round(hw[1] * ratio))


def random_crop(x: Tensor, size: tuple[int, int], generator: torch.Generator | None = None) -> Tensor:
    """An independent random ``size`` crop of each image in ``x`` (N, C, H, W)."""
    n, c, h_in, w_in = x.shape
    h, w = size
    dev = x.device
    top = torch.randint(0, h_in - h + 1, (n,), generator=generator, device=generator.device if generator else dev)
    left = torch.randint(0, w_in - w + 1, (n,), generator=generator, device=generator.device if generator else dev)
    rows = (top.to(dev)[:, None] + torch.arange(h, device=dev))[:, None, :, None]
    cols = (left.to(dev)[:, None] + torch.arange(w, device=dev))[:, None, None, :]
    # One gather instead of a Python loop over the batch.
    return x[torch.arange(n, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None], rows, cols]


def center_crop(x: Tensor, size: tuple[int, int]) -> Tensor:
    h_in, w_in = x.shape[-2:]
    top, left = (h_in - size[0]) // 2, (w_in - size[1]) // 2
    return x[..., top : top + size[0], left : left + size[1]]


class CropAug(nn.Module):
    """Random crop in training mode, centre crop of the same size in eval mode."""

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) == self.size:
            return x
        return random_crop(x, self.size) if self.training else center_crop(x, self.size)


# ---------------------------------------------------------------- ResNet-18 with GroupNorm


def _gn(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(max(1, channels // 16), channels)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = _gn(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = _gn(cout)
        # Zero-init the last norm so each block starts as the identity: stabler from-scratch training.
        nn.init.zeros_(self.norm2.weight)
        self.down = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _gn(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return torch.relu(h + self.down(x))


class ResNet18GN(nn.Module):
    """ResNet-18 (stem, 4 stages of 2 basic blocks, global average pool) with GroupNorm."""

    def __init__(self, in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 7, 2, 3, bias=False), _gn(width), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        )
        stages, cin = [], width
        for i, cout in enumerate((width, 2 * width, 4 * width, 8 * width)):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(_BasicBlock(cin, cout, stride), _BasicBlock(cout, cout, 1)))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.out_dim = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x)).mean(dim=(-2, -1))


class CameraEncoder(nn.Module):
    """Crop + ResNet-18 (+ projection) for one camera; input (B, T, C, H, W) already scaled to [-1, 1]."""

    def __init__(self, in_channels: int, hw: tuple[int, int], config: EncoderConfig) -> None:
        super().__init__()
        self.crop = CropAug(crop_size(hw, config.crop_ratio))
        self.backbone = ResNet18GN(in_channels, config.resnet_width)
        if config.image_feature_dim:
            self.proj: nn.Module = nn.Linear(self.backbone.out_dim, config.image_feature_dim)
            self.out_dim = config.image_feature_dim
        else:
            self.proj = nn.Identity()
            self.out_dim = self.backbone.out_dim

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.shape[:3]
        # Crop (B, T*C, H, W) so all steps and channels (rgb + depth) of a sample share one crop window.
        x = self.crop(x.flatten(1, 2)).unflatten(1, (t, c))
        f = self.backbone(x.flatten(0, 1))
        return self.proj(f).view(b, t, -1)


def _camera_name(key: str) -> str:
    return _CAMERA_SUFFIX.sub("", key)


def pair_cameras(shape_meta: ShapeMeta, config: EncoderConfig) -> list[tuple[str | None, str | None]]:
    """(rgb key, depth key) per camera; either may be None (rgb-only or depth-only camera)."""
    rgb = shape_meta.keys_of("rgb")
    depth = shape_meta.keys_of("depth") if config.use_depth else []
    if config.depth_pairs is not None:
        pairs = dict(config.depth_pairs)
        for r, d in pairs.items():
            if r not in rgb or d not in depth:
                raise ConfigError(f"maps {r!r} -> {d!r}, but the rgb keys are {rgb} and the depth keys are {depth}",
                                  key="encoder.depth_pairs")
    else:
        by_name = {_camera_name(d): d for d in depth}
        pairs = {r: by_name[_camera_name(r)] for r in rgb if _camera_name(r) in by_name}
    cams: list[tuple[str | None, str | None]] = [(r, pairs.get(r)) for r in rgb]
    cams += [(None, d) for d in depth if d not in pairs.values()]
    for r, d in cams:
        if r and d and shape_meta.obs[r].tensor_shape[1:] != shape_meta.obs[d].tensor_shape[1:]:
            raise UserError(f"cannot stack depth {d!r} {shape_meta.obs[d].tensor_shape[1:]} onto rgb {r!r} "
                             f"{shape_meta.obs[r].tensor_shape[1:]}: image sizes differ")
    return cams


class ObsEncoder(nn.Module):
    """All observation keys of a window -> one flat conditioning vector.

    Expects low-dim keys already normalised by the policy; images raw as the dataset yields them."""

    def __init__(self, shape_meta: ShapeMeta, config: EncoderConfig, n_obs_steps: int) -> None:
        super().__init__()
        check_config(config, "encoder")
        self.n_obs_steps = n_obs_steps
        self.depth_max_m = float(config.depth_max_m)
        self.lowdim_keys = shape_meta.keys_of("lowdim")
        self.cameras = pair_cameras(shape_meta, config)
        self.per_step_dim = 0
        self.lowdim: nn.Module | None = None
        if self.lowdim_keys:
            d_in = sum(math.prod(shape_meta.obs[k].tensor_shape) for k in self.lowdim_keys)
            layers: list[nn.Module] = []
            for h in config.lowdim_hidden_dims:
                layers += [nn.Linear(d_in, h), nn.Mish()]
                d_in = h
            layers.append(nn.Linear(d_in, config.lowdim_feature_dim))
            self.lowdim = nn.Sequential(*layers)
            self.per_step_dim += config.lowdim_feature_dim
        self.cams = nn.ModuleDict()
        for r, d in self.cameras:
            ref = r or d
            assert ref is not None
            shape = shape_meta.obs[ref].tensor_shape
            c = (shape_meta.obs[r].tensor_shape[0] if r else 0) + (1 if d else 0)
            enc = CameraEncoder(c, (shape[1], shape[2]), config)
            self.cams[module_name(ref)] = enc
            self.per_step_dim += enc.out_dim
        if self.per_step_dim == 0:
            raise UserError("no observation key is used by the encoder")
        self.out_dim = self.per_step_dim * n_obs_steps

    @property
    def obs_keys(self) -> list[str]:
        """Keys the encoder reads (depth keys are dropped when ``use_depth`` is off)."""
        return self.lowdim_keys + [k for cam in self.cameras for k in cam if k]

    def forward(self, obs: dict[str, Tensor]) -> Tensor:
        feats = []
        if self.lowdim is not None:
            x = torch.cat([obs[k].flatten(2) for k in self.lowdim_keys], dim=-1)
            feats.append(self.lowdim(x))
        for (r, d), enc in zip(self.cameras, self.cams.values(), strict=True):
            chans = []
            if r:
                chans.append(obs[r] * 2.0 - 1.0)
            if d:
                chans.append(obs[d].clamp(0.0, self.depth_max_m) * (2.0 / self.depth_max_m) - 1.0)
            feats.append(enc(torch.cat(chans, dim=2)))
        return torch.cat(feats, dim=-1).flatten(1)
