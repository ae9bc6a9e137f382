"""Behaviour-cloning training of diffusion and flow policies on a demonstration store.

One readable loop, top to bottom. Distribution, mixed precision and device placement come from
Hugging Face Accelerate, so the same file runs on one CPU, one GPU, or several GPUs and nodes via
``accelerate launch`` or ``torchrun`` with no code change.

    robolearn train --recipe policies/diffusion_lowdim.yaml --data data/lift.zarr --out runs/lift \
        train.steps=5000 policy.backbone=transformer

Run directory: ``recipe.yaml`` (resolved), ``checkpoints/step_XXXXXXX/`` and ``checkpoints/last/``
(see ``checkpoint.py``), ``trainer_state.pt`` (optimiser, scheduler, step, RNG) for ``--resume``,
``tb/`` TensorBoard logs, ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from robolearn import resources
from robolearn.config import apply_overrides, config_errors_at, load_config, read_yaml_mapping
from robolearn.data.normalizer import MODES as NORMALIZATIONS
from robolearn.errors import ConfigError, UserError

__all__ = ["DataSection", "Recipe", "TrainSection", "apply_overrides", "load_recipe", "recipe_to_dict", "train"]

MIXED_PRECISION = ("auto", "no", "bf16", "fp16")

# ----------------------------------------------------------------------------- recipe


@dataclass
class DataSection:
    obs_keys: list[str] = field(metadata={"nonempty": True})
    action_key: str = field(default="action", metadata={"nonempty": True})
    n_obs_steps: int = field(default=2, metadata={"min": 1})
    horizon: int = field(default=16, metadata={"min": 1})
    n_action_steps: int = field(default=8, metadata={"min": 1})
    val_ratio: float = field(default=0.05, metadata={"min": 0.0, "lt": 1.0})
    normalization: str = field(default="minmax", metadata={"choices": NORMALIZATIONS})
    in_memory: bool = False
    # decoded frames kept per loader process (see WindowDataset)
    frame_cache_mb: int = field(default=1024, metadata={"min": 0})

    def validate(self) -> None:
        if self.n_obs_steps > self.horizon:
            raise ConfigError(f"must be <= horizon ({self.horizon}), got {self.n_obs_steps}", key="n_obs_steps")
        if self.n_obs_steps - 1 + self.n_action_steps > self.horizon:
            raise ConfigError(f"n_obs_steps - 1 + n_action_steps must be <= horizon, got {self.n_obs_steps} - 1 + "
                              f"{self.n_action_steps} > {self.horizon}", key="n_action_steps")


@dataclass
class TrainSection:
    steps: int = field(default=10000, metadata={"min": 1})
    batch_size: int = field(default=256, metadata={"min": 1})
    lr: float = field(default=1e-4, metadata={"gt": 0.0})
    weight_decay: float = field(default=1e-6, metadata={"min": 0.0})
    warmup_steps: int = field(default=500, metadata={"min": 0})
    grad_clip: float = field(default=1.0, metadata={"min": 0.0})  # 0: no clipping
    num_workers: int = field(default=2, metadata={"min": 0})
    val_every: int = field(default=1000, metadata={"min": 1})
    val_batches: int = field(default=20, metadata={"min": 1})
    ckpt_every: int = field(default=5000, metadata={"min": 1})
    log_every: int = field(default=50, metadata={"min": 1})
    seed: int = field(default=0, metadata={"min": 0})
    # auto: bf16 on CUDA, none on CPU
    mixed_precision: str = field(default="auto", metadata={"choices": MIXED_PRECISION})


@dataclass
class Recipe:
    # The policy config as a dict with a `type`; load_recipe checks it against that type's config class.
    policy: dict[str, Any]
    data: DataSection
    train: TrainSection = field(default_factory=TrainSection)
    name: str = ""


_WINDOW_KEYS = ("n_obs_steps", "horizon", "n_action_steps")


def load_recipe(path: str | os.PathLike, overrides: Sequence[str] = ()) -> Recipe:
    """Load a training recipe (a path, or a name such as ``quickstart`` or ``policies/quickstart.yaml``
    found by :mod:`robolearn.resources`), apply ``key=value`` overrides and check every section, the
    ``policy`` one against its type's config class: any mistake is a one-line ``ConfigError`` naming
    the file (or the override) and the key, before any data is read."""
    from robolearn.policies.factory import make_config

    p = resources.resolve("recipe", path)
    raw = read_yaml_mapping(p, "recipe", "policy, data and train sections")
    with config_errors_at(str(p), overrides):
        recipe = load_config(Recipe, apply_overrides(raw, overrides))
        # Window sizes live in the data section; the policy takes them from there.
        policy = dict(recipe.policy)
        for k in _WINDOW_KEYS:
            if k in policy and policy[k] != getattr(recipe.data, k):
                raise ConfigError(f"is taken from data.{k} ({getattr(recipe.data, k)}); set that instead",
                                  key=f"policy.{k}")
            policy[k] = getattr(recipe.data, k)
        recipe.policy = policy
        make_config(policy, prefix="policy")
    recipe.name = recipe.name or p.stem
    return recipe


def recipe_to_dict(r: Recipe) -> dict[str, Any]:
    return {"name": r.name, "policy": r.policy, "data": asdict(r.data), "train": asdict(r.train)}


# ----------------------------------------------------------------------------- training


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _lr_lambda(warmup: int, total: int):  # noqa: ANN202
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))  # cosine to zero

    return f


def train(recipe: Recipe, data: str | os.PathLike, out: str | os.PathLike, resume: bool = False,
          progress: bool = True) -> dict[str, Any]:
    """Train ``recipe`` on store ``data`` into run directory ``out``; returns final metrics."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import set_seed
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    from robolearn.data.dataset import WindowDataset, make_loader
    from robolearn.policies.checkpoint import save_checkpoint
    from robolearn.policies.factory import make_policy, shape_meta_from_dataset

    out = Path(out)
    tr, dc = recipe.train, recipe.data
    state_path = out / "trainer_state.pt"
    if out.exists() and any(out.iterdir()) and not resume:
        raise UserError(f"run directory {out} is not empty; pass --resume to continue it or choose another --out")
    if resume and not state_path.is_file():
        raise UserError(f"--resume: {out} has no trainer_state.pt to resume from")

    mp = tr.mixed_precision
    if mp == "auto":
        mp = "bf16" if torch.cuda.is_available() else "no"
    # Accelerate keeps its settings in a per-process singleton and refuses a second Accelerator with
    # another precision; start each run afresh (the process group, if any, is kept), so train() can be
    # called again in one process (a notebook, a benchmark loop, the tests) with other settings.
    AcceleratorState._reset_state(reset_partial_state=False)
    acc = Accelerator(mixed_precision=mp, cpu=not torch.cuda.is_available())
    set_seed(tr.seed, device_specific=True)  # different data order per process, same init below
    main = acc.is_main_process

    # --- data: one store, a train and a validation split by episode
    kw = dict(obs_keys=dc.obs_keys, action_key=dc.action_key, n_obs_steps=dc.n_obs_steps, horizon=dc.horizon,
              n_action_steps=dc.n_action_steps, val_ratio=dc.val_ratio, seed=tr.seed, in_memory=dc.in_memory,
              frame_cache_mb=dc.frame_cache_mb)
    train_ds = WindowDataset(data, split="train", **kw)
    val_ds = WindowDataset(data, split="val", **kw) if dc.val_ratio > 0 else None
    if len(train_ds) < tr.batch_size:
        raise UserError(f"{data}: {len(train_ds)} training windows, fewer than one batch of {tr.batch_size}")
    train_loader = make_loader(train_ds, tr.batch_size, shuffle=True, num_workers=tr.num_workers, seed=tr.seed)
    val_loader = (make_loader(val_ds, tr.batch_size, shuffle=True, num_workers=0, seed=tr.seed, drop_last=False)
                  if val_ds is not None and len(val_ds) else None)

    # --- policy, with normalisation statistics of the whole store inside it
    _seed_everything(tr.seed)  # identical initial weights on every process
    policy = make_policy(recipe.policy, shape_meta_from_dataset(train_ds))
    policy.set_normalizer(train_ds.normalizer(dc.normalization))
    opt = torch.optim.AdamW(policy.parameters(), lr=tr.lr, weight_decay=tr.weight_decay, betas=(0.95, 0.999))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(tr.warmup_steps, tr.steps))
    model, opt, train_loader = acc.prepare(policy, opt, train_loader)

    step = 0
    if resume:
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        unwrapped = acc.unwrap_model(model)
        unwrapped.load_state_dict(state["model"])
        if unwrapped.ema is not None and state.get("ema") is not None:
            unwrapped.ema.load_state_dict(state["ema"], state["ema_step"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step = int(state["step"])
        torch.set_rng_state(state["rng"])
    out.mkdir(parents=True, exist_ok=True)
    if main:
        (out / "recipe.yaml").write_text(yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False))
    writer = SummaryWriter(str(out / "tb")) if main else None
    metrics_file = open(out / "metrics.jsonl", "a", buffering=1) if main else None  # noqa: SIM115 - line-buffered: tail -f works

    def validate() -> float | None:
        if val_loader is None:
            return None
        unwrapped = acc.unwrap_model(model)
        unwrapped.eval()
        losses = []
        with torch.no_grad():
            for i, batch in enumerate(val_loader):
                if i >= tr.val_batches:
                    break
                losses.append(float(unwrapped.compute_loss(batch)))
        unwrapped.train()
        return float(np.mean(losses)) if losses else None

    def checkpoint(tag: str) -> None:
        acc.wait_for_everyone()
        if not main:
            return
        unwrapped = acc.unwrap_model(model)
        extra = {"step": step, "recipe": recipe_to_dict(recipe), "data": str(data)}
        path = save_checkpoint(unwrapped, out / "checkpoints" / tag, extra=extra)
        last = out / "checkpoints" / "last"
        if last.exists():
            shutil.rmtree(last)
        shutil.copytree(path, last)
        tmp = state_path.with_suffix(".tmp")
        ema = unwrapped.ema
        torch.save({"model": unwrapped.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "step": step, "rng": torch.get_rng_state(),
                    "ema": ema.state_dict() if ema is not None else None, "ema_step": ema.step if ema else 0}, tmp)
        os.replace(tmp, state_path)

    # --- the loop
    model.train()
    bar = tqdm(total=tr.steps, initial=step, desc=f"train {recipe.name}", disable=not (main and progress),
               dynamic_ncols=True)
    t_start, loss_ema, last_val = time.perf_counter(), None, None
    while step < tr.steps:
        for batch in train_loader:
            with acc.autocast():
                loss = model(batch)  # Policy.forward == compute_loss, so DDP syncs gradients
            acc.backward(loss)
            if tr.grad_clip:
                acc.clip_grad_norm_(model.parameters(), tr.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            acc.unwrap_model(model).update_ema()
            step += 1

            loss_v = float(loss.detach())
            loss_ema = loss_v if loss_ema is None else 0.98 * loss_ema + 0.02 * loss_v
            bar.update(1)
            bar.set_postfix(loss=f"{loss_ema:.4f}", val=f"{last_val:.4f}" if last_val is not None else "-",
                            refresh=False)
            if main and (step % tr.log_every == 0 or step == tr.steps):
                writer.add_scalar("train/loss", loss_v, step)
                writer.add_scalar("train/lr", sched.get_last_lr()[0], step)
                metrics_file.write(json.dumps({"step": step, "loss": loss_v, "lr": sched.get_last_lr()[0]}) + "\n")
            if step % tr.val_every == 0 or step == tr.steps:
                last_val = validate() if main else None
                if main and last_val is not None:
                    writer.add_scalar("val/loss", last_val, step)
                    metrics_file.write(json.dumps({"step": step, "val_loss": last_val}) + "\n")
            if step % tr.ckpt_every == 0 or step == tr.steps:
                checkpoint(f"step_{step:07d}")
            if step >= tr.steps:
                break
    bar.close()
    # Replicas must hold identical weights after every step; a broken gradient sync shows up here.
    params = acc.unwrap_model(model).net.parameters()
    checksum = torch.stack([p.detach().double().sum() for p in params]).sum().reshape(1).to(acc.device)
    sums = acc.gather(checksum).cpu()
    result = {"steps": step, "train_loss": loss_ema, "val_loss": last_val,
              "seconds": time.perf_counter() - t_start, "run": str(out), "processes": acc.num_processes,
              "mixed_precision": acc.mixed_precision,
              "replicas_in_sync": bool(torch.allclose(sums, sums[0].expand_as(sums), rtol=0, atol=1e-9)),
              "main": main}
    if main:
        writer.close()
        metrics_file.close()
        (out / "result.json").write_text(json.dumps(result, indent=2))
    acc.end_training()
    return result
