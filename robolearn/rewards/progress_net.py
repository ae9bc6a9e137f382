"""A small progress network trained on the store: the per-step reward model for the RL loop.

CPU-cheap (a 4-layer CNN on one camera at 64 px plus an MLP on proprioception, well under a
millisecond per frame) and built from nothing downloaded. Each frame is scored on its own, so its
progress is a potential over states and shaping with it keeps the optimal policy (see ``base.py``).

What it learns from:

- successful episodes: progress = normalised time to the first success step (the ``reward``
  column from simulation marks it; else the episode's end), and the success head says 1 from there on;
- failed episodes (``record --keep-failures`` and the perturbed experts: stall, early release,
  noise): their frames may not rate above ``failure_cap`` (a hinge, since how far a failure got is
  unknown) and their success head says 0 everywhere. This is what keeps a stalled near-miss from
  being rated as done: its last frames look almost like a success, but are labelled as failures.
- with ``from_labels``: per-frame VLM labels in the store's ``progress`` column (``reward label``)
  replace those targets where present (distillation), so the VLM's judgement reaches the RL loop at
  the cost of this network. The success head always learns the true outcome.

Because it scores frames independently, reversed or stalled versions of a clip carry nothing new
for it: reversal reverses its scores exactly (``voc_reversed`` = -``voc``) and a stall repeats a
score; the negatives that matter are real failures. Episodes are split by a hash of their seed,
stratified by kind, and the figures in ``scores.json`` come from the held-out ones only.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from robolearn.errors import UserError
from robolearn.rewards.base import ProgressModel, ProgressScore, check_frames

FORMAT = "robolearn.reward.progress_net"
VERSION = 1
PROPRIO_KEYS = ("robot0_eef_pos", "robot0_gripper_qpos")


@dataclass
class FitConfig:
    data: str
    out: str
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    camera: str | None = None
    image_size: int = 64
    proprio_keys: Sequence[str] = PROPRIO_KEYS  # those the store has are used
    holdout: float = 0.25
    seed: int = 0
    failure_cap: float = 0.8
    from_labels: bool = False
    label_column: str = "progress"
    width: int = 32
    shift: int = 4  # random-shift augmentation, pixels
    episodes: Sequence[int] | None = None  # restrict to these episodes (train + held out)

    def validate(self) -> None:
        if self.steps < 1 or self.batch_size < 2:
            raise UserError("reward fit: steps >= 1 and batch_size >= 2")
        if not 0.0 <= self.holdout < 1.0:
            raise UserError(f"--holdout must be in [0, 1), got {self.holdout}")
        if not 16 <= self.image_size <= 256:
            raise UserError(f"image_size must be 16-256, got {self.image_size}")


class ProgressNet(nn.Module):
    """Frame (+ proprioception) -> (progress logit, success logit)."""

    def __init__(self, image_size: int, proprio_dim: int, width: int = 32) -> None:
        super().__init__()
        w = width

        def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.ReLU(inplace=True)]

        self.cnn = nn.Sequential(*block(3, w // 2, 2), *block(w // 2, w, 2), *block(w, 2 * w, 2),
                                 *block(2 * w, 2 * w, 1))
        side = math.ceil(image_size / 8)
        self.img_fc = nn.Sequential(nn.Flatten(), nn.Linear(2 * w * side * side, 128), nn.ReLU(inplace=True))
        self.proprio = nn.Sequential(nn.Linear(proprio_dim, 64), nn.ReLU(inplace=True)) if proprio_dim else None
        self.head = nn.Sequential(nn.Linear(128 + (64 if proprio_dim else 0), 128), nn.ReLU(inplace=True),
                                  nn.Linear(128, 2))

    def forward(self, images: Tensor, proprio: Tensor | None) -> Tensor:
        """``images`` uint8 (B, 3, H, W); ``proprio`` normalised (B, D). Returns logits (B, 2)."""
        x = self.img_fc(self.cnn(images.float() / 127.5 - 1.0))
        if self.proprio is not None:
            x = torch.cat([x, self.proprio(proprio)], dim=1)
        return self.head(x)


def _resize(frames: np.ndarray, size: int) -> np.ndarray:
    if frames.shape[1:3] == (size, size):
        return frames
    import cv2

    return np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in frames])


def random_shift(x: Tensor, pad: int, gen: torch.Generator) -> Tensor:
    """DrQ's augmentation: replicate-pad by ``pad`` and crop back at a random offset per image."""
    if pad <= 0:
        return x
    h, w = x.shape[-2:]
    xp = F.pad(x.float(), (pad, pad, pad, pad), mode="replicate")
    off = torch.randint(0, 2 * pad + 1, (len(x), 2), generator=gen).tolist()
    # Slicing per image: far cheaper on the CPU than one advanced-indexing gather.
    return torch.stack([xp[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(off)]).to(torch.uint8)


# ---------------------------------------------------------------------------------------- data


def _hash01(*parts: Any) -> float:
    return int(hashlib.sha1(json.dumps(parts).encode()).hexdigest()[:8], 16) / 2**32


def split_episodes(store: Any, holdout: float = 0.25, seed: int = 0,
                   episodes: Sequence[int] | None = None) -> tuple[list[int], list[int]]:
    """(train, held out): per kind of episode (expert success, stall failure, ...) the ``holdout``
    share with the lowest hash of their seed, so the split does not move when episodes are added."""
    from robolearn.rewards.metrics import episode_kind

    eps = list(range(store.n_episodes)) if episodes is None else list(episodes)
    groups: dict[str, list[int]] = {}
    for e in eps:
        groups.setdefault(episode_kind(store.episode_info(e)), []).append(e)
    train, held = [], []
    for members in groups.values():
        ranked = sorted(members, key=lambda e: _hash01(seed, store.episode_info(e).seed, e))
        k = int(round(holdout * len(ranked))) if len(ranked) > 1 else 0
        held += ranked[:k]
        train += ranked[k:]
    return sorted(train), sorted(held)


def success_step(store: Any, episode: int, length: int) -> int:
    """First step of the success state: from the sim's ``reward`` column when there is one."""
    if "reward" in store.columns:
        r, prov = store.read_column("reward", episode)
        hit = np.flatnonzero(np.nan_to_num(r) > 0)
        if prov is not None and len(hit):
            return int(hit[0])
    return length - 1


@dataclass
class _Data:
    images: np.ndarray  # (N, 3, S, S) uint8
    proprio: np.ndarray  # (N, D) float32, raw
    progress: np.ndarray  # (N,) target, NaN = none
    cap: np.ndarray  # (N,) upper bound on progress (failures), inf = none
    success: np.ndarray  # (N,) 0/1 success-state target
    group: np.ndarray  # (N,) 0 success before success state, 1 success state, 2 failure
    labelled_episodes: int = 0


def load_frames(store: Any, episodes: Sequence[int], key: str, proprio_keys: Sequence[str], size: int,
                cfg: FitConfig | None = None) -> _Data:
    imgs, pros, prog, cap, succ, group = [], [], [], [], [], []
    labelled = 0
    for e in episodes:
        info = store.episode_info(e)
        d = store.read_episode(e, [key, *proprio_keys])
        n = len(d[key])
        imgs.append(_resize(d[key], size).transpose(0, 3, 1, 2))
        pros.append(np.concatenate([d[k].reshape(n, -1) for k in proprio_keys], 1) if proprio_keys
                    else np.zeros((n, 0), np.float32))
        label = None
        if cfg is not None and cfg.from_labels and cfg.label_column in store.columns:
            vals, prov = store.read_column(cfg.label_column, e)
            if prov is not None and not np.isnan(vals).all():
                label = np.clip(vals.astype(np.float64), 0, 1)
                labelled += 1
        if info.success:
            s = success_step(store, e, n)
            t = np.minimum(1.0, np.arange(n) / max(s, 1))
            prog.append(t if label is None else label)
            cap.append(np.full(n, np.inf))
            st = (np.arange(n) >= s).astype(np.float32)
            succ.append(st)
            group.append(st.astype(np.int64))
        else:
            prog.append(np.full(n, np.nan) if label is None else label)
            cap.append(np.full(n, cfg.failure_cap if cfg else 0.8))
            succ.append(np.zeros(n, np.float32))
            group.append(np.full(n, 2))
    return _Data(np.concatenate(imgs), np.concatenate(pros).astype(np.float32), np.concatenate(prog),
                 np.concatenate(cap), np.concatenate(succ), np.concatenate(group), labelled)


# ---------------------------------------------------------------------------------------- model


@dataclass
class NetMeta:
    image_key: str
    image_size: int
    proprio_keys: list[str]
    proprio_mean: list[float]
    proprio_std: list[float]
    width: int = 32
    tasks: list[str] = field(default_factory=list)
    format: str = FORMAT
    version: int = VERSION
    extra: dict[str, Any] = field(default_factory=dict)


class ProgressNetModel(ProgressModel):
    """The trained network as a :class:`ProgressModel` (per frame, so ``markov``)."""

    name = "progress_net"
    markov = True

    def __init__(self, net: ProgressNet, meta: NetMeta, path: str | None = None) -> None:
        self.net = net.eval()
        self.meta = meta
        self.path = path
        self.proprio_keys = tuple(meta.proprio_keys)
        self._mean = torch.tensor(meta.proprio_mean, dtype=torch.float32)
        self._std = torch.tensor(meta.proprio_std, dtype=torch.float32)

    @classmethod
    def load(cls, path: str | Path) -> ProgressNetModel:
        from safetensors.torch import load_file

        path = Path(path)
        try:
            d = json.loads((path / "config.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"{path}/config.json is unreadable ({e}); re-run `robolearn reward fit`") from None
        if d.get("format") != FORMAT:
            raise UserError(f"{path} is not a progress network (format {d.get('format')!r})")
        if d.get("version") != VERSION:
            raise UserError(f"{path}: progress network version {d.get('version')}, this robolearn reads {VERSION}")
        meta = NetMeta(**{k: v for k, v in d.items() if k in NetMeta.__dataclass_fields__})
        net = ProgressNet(meta.image_size, len(meta.proprio_mean), meta.width)
        net.load_state_dict(load_file(str(path / "model.safetensors")))
        return cls(net, meta, str(path))

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.net.state_dict().items()}, str(path / "model.safetensors"))
        (path / "config.json").write_text(json.dumps(asdict(self.meta), indent=2))

    def logits(self, images: np.ndarray, proprio: np.ndarray | None) -> Tensor:
        x = torch.from_numpy(np.ascontiguousarray(images))
        p = None
        if self.proprio_keys:
            p = (torch.from_numpy(np.asarray(proprio, np.float32)) - self._mean) / self._std
        return self.net(x, p)

    @torch.no_grad()
    def score(self, frames: np.ndarray, task: str, proprio: Mapping[str, np.ndarray] | None = None) -> ProgressScore:
        frames = check_frames(frames)
        n = len(frames)
        if self.proprio_keys:
            missing = [k for k in self.proprio_keys if not proprio or k not in proprio]
            if missing:
                raise UserError(f"progress network {self.path or ''} reads proprioception {missing}; pass them")
            pro = np.concatenate([np.asarray(proprio[k], np.float32).reshape(n, -1) for k in self.proprio_keys], 1)
        else:
            pro = None
        imgs = _resize(frames, self.meta.image_size).transpose(0, 3, 1, 2)
        out = []
        for a in range(0, n, 512):
            out.append(self.logits(imgs[a:a + 512], None if pro is None else pro[a:a + 512]))
        z = torch.sigmoid(torch.cat(out)).numpy()
        return ProgressScore(progress=z[:, 0].astype(np.float32), success=float(z[-1, 1]),
                             info={"success_per_frame": z[:, 1]})

    def provenance(self) -> dict[str, Any]:
        return {"backend": self.name, "path": self.path, "tasks": self.meta.tasks,
                "from_labels": self.meta.extra.get("from_labels", False)}


# ---------------------------------------------------------------------------------------- training


def fit(cfg: FitConfig, progress: bool = True) -> dict[str, Any]:
    """Train on the store's training split, score the held-out split, save model and figures in
    ``cfg.out`` (``model.safetensors``, ``config.json``, ``scores.json``). Returns the figures."""
    from tqdm import tqdm

    from robolearn.data.store import DemoStore
    from robolearn.rewards.metrics import image_key, score_store

    cfg.validate()
    t_start = time.perf_counter()
    store = DemoStore.open(cfg.data)
    key = image_key(store, cfg.camera)
    pkeys = [k for k in cfg.proprio_keys if k in store.keys]
    train_eps, held = split_episodes(store, cfg.holdout, cfg.seed, cfg.episodes)
    infos = [store.episode_info(e) for e in train_eps]
    n_succ = sum(i.success for i in infos)
    if n_succ < 2:
        raise UserError(f"{cfg.data}: the training split has {n_succ} successful episodes; record more "
                         "(robolearn record ... --episodes N)")
    if n_succ == len(infos):
        import warnings

        warnings.warn(f"{cfg.data} has no failed episodes: the success head learns nothing about failures; "
                      "record some with --keep-failures or --perturb stall", stacklevel=2)
    if cfg.from_labels and cfg.label_column not in store.columns:
        raise UserError(f"--from-labels: {cfg.data} has no {cfg.label_column!r} column; label it first "
                         f"(robolearn reward label --data {cfg.data} ...)")
    data = load_frames(store, train_eps, key, pkeys, cfg.image_size, cfg)
    if cfg.from_labels and not data.labelled_episodes:
        raise UserError(f"--from-labels: no training episode of {cfg.data} has {cfg.label_column!r} labels")
    mean = data.proprio.mean(0) if pkeys else np.zeros(0)
    std = data.proprio.std(0) + 1e-3 if pkeys else np.zeros(0)

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    net = ProgressNet(cfg.image_size, data.proprio.shape[1], cfg.width)
    meta = NetMeta(image_key=key, image_size=cfg.image_size, proprio_keys=pkeys, proprio_mean=mean.tolist(),
                   proprio_std=std.tolist(), width=cfg.width, tasks=sorted({i.task for i in infos}),
                   extra={"from_labels": cfg.from_labels, "train_episodes": train_eps, "held_out": held,
                          "store": str(cfg.data), "steps": cfg.steps, "fit": asdict(cfg)})
    model = ProgressNetModel(net, meta)
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, s / cfg.steps))))
    # Sampling shares: frames before success, success-state frames (few but decisive), failures.
    share = np.array([0.45, 0.2, 0.35])
    counts = np.bincount(data.group, minlength=3).astype(np.float64)
    share = np.where(counts > 0, share, 0.0)
    weights = torch.from_numpy(share[data.group] / counts[data.group].clip(1))
    images = torch.from_numpy(data.images)
    pro = (torch.from_numpy(data.proprio) - torch.from_numpy(mean).float()) / torch.from_numpy(std).float()
    prog_t = torch.from_numpy(data.progress).float()
    cap_t = torch.from_numpy(data.cap).float()
    succ_t = torch.from_numpy(data.success).float()
    bar = tqdm(range(cfg.steps), desc="reward fit", unit="step", disable=not progress)
    for step in bar:
        idx = torch.multinomial(weights, cfg.batch_size, replacement=True, generator=gen)
        z = net(random_shift(images[idx], cfg.shift, gen), pro[idx] if pkeys else None)
        p = torch.sigmoid(z[:, 0])
        y, c = prog_t[idx], cap_t[idx]
        has = ~torch.isnan(y)
        loss_prog = ((p - torch.nan_to_num(y)) ** 2 * has).sum() / has.sum().clamp(min=1)
        loss_cap = (F.relu(p - c) ** 2).mean()
        loss_succ = F.binary_cross_entropy_with_logits(z[:, 1], succ_t[idx])
        loss = loss_prog + loss_cap + 0.5 * loss_succ
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0:
            bar.set_postfix(progress=f"{loss_prog.item():.4f}", cap=f"{loss_cap.item():.4f}",
                            success=f"{loss_succ.item():.3f}", refresh=False)
    net.eval()
    train_seconds = time.perf_counter() - t_start
    model.path = str(cfg.out)
    model.save(cfg.out)
    scores: dict[str, Any] = {"voc": None, "voc_reversed": None, "auroc": None, "n_success": 0, "n_failure": 0}
    if held:
        scores = score_store(model, store, cfg.out, episodes=held, camera=key, plots=6)
    scores.update(steps=cfg.steps, train_seconds=train_seconds, seconds=time.perf_counter() - t_start,
                  train_episodes=len(train_eps), held_out=held, labelled_episodes=data.labelled_episodes)
    (Path(cfg.out) / "scores.json").write_text(json.dumps(scores, indent=2, default=_default))
    return scores


def _default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o).__name__)
