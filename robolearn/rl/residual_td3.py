"""Residual off-policy RL on a frozen base policy (TD3 by default, SAC with ``algo: sac``).

One file, top to bottom: the recipe, then ``finetune`` — set-up, the collection loop, the update,
evaluation, checkpoints. After ResFiT ("Residual Off-Policy RL for Finetuning Behavior Cloning
Policies") and Policy Decorator: the diffusion/flow base proposes action chunks through the same
:class:`~robolearn.rollout.PolicyAgent` as evaluation (reset with every episode); a small actor adds
a bounded per-step correction (``robolearn.rl.residual``); a critic ensemble with LayerNorm learns
n-step returns (min over a random pair), trained critic-only for a warm-up, at a configurable
update-to-data ratio, on batches half demonstrations, half online data (RLPD).

    robolearn finetune --policy runs/can --rig sim:can --steps 200000 --out runs/can_rl [key=value ...]

Run directory: ``recipe.yaml``, ``checkpoints/last/`` (residual + a hash-checked reference to its
base; ``robolearn eval --policy RUN`` runs it), ``checkpoints/step_NNNNNNN/`` (the residual each
evaluation scored, so a figure on the curve can be re-run), ``state.pt`` + ``replay.npz`` (everything needed to
resume after a kill), ``curve.jsonl`` (evaluations), ``tb/`` (TensorBoard), ``result.json``.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from robolearn.errors import ConfigError, UserError

TRAIN_SEED_BASE = 2_000_000  # training episodes: away from recording (0, 1, ...) and eval (1,000,000...) seeds
ALGOS = ("td3", "sac")

# ----------------------------------------------------------------------------- the recipe


@dataclass
class ActorSection:
    hidden: int = field(default=256, metadata={"min": 1})
    layers: int = field(default=2, metadata={"min": 1})
    scale: float = field(default=0.1, metadata={"gt": 0.0})  # bound of the correction, normalised units
    # Per action dimension, multipliers of scale for the bound (empty: 1 for every dimension): the reach
    # only; exploration noise, target noise and reg stay in units of scale. A base that stops short in
    # one direction (can: closes 4 cm above the can) needs more reach there than in the others.
    dim_scale: list[float] = field(default_factory=list)
    lr: float = field(default=3e-4, metadata={"gt": 0.0})
    # Pull toward the base (TD3+BC-style): the actor loss becomes -Q / mean|Q| + reg * mean((residual/scale)^2)
    # so a correction must buy value to stay. 0: plain -Q.
    reg: float = field(default=0.0, metadata={"min": 0.0})
    # Per action dimension, multipliers of reg (empty: 1 everywhere). The learned translation correction
    # stays at ~3% of a 0.5 bound under reg 0.1 (README), so a weaker pull in x, y, z alone
    # (e.g. [0.1,0.1,0.1,1,1,1,1]) lets it grow where the reach is, and keeps rotation and gripper held.
    reg_dims: list[float] = field(default_factory=list)
    # Pull toward the *demonstrated* correction on the batch's demonstration rows: + demo_reg *
    # mean(((residual - (demo action - base action)) / scale)^2) there. reg pulls every correction
    # toward zero, so the actor only leaves the base where the critic is sure; the demonstrations say
    # in which direction the expert differed from the base (can: lower before the close). 0: off.
    demo_reg: float = field(default=0.0, metadata={"min": 0.0})
    # Rate of an exponential moving average of the actor's weights, per actor update (0: off). When on,
    # the average is what is evaluated and checkpointed (as diffusion_policy's EMA model); the online actor
    # still explores. The online actor's success swings by ~0.1 between evaluations 25k steps apart.
    ema: float = field(default=0.0, metadata={"min": 0.0, "lt": 1.0})

    def validate(self) -> None:
        if any(m <= 0 for m in self.dim_scale):
            raise ConfigError(f"every entry must be > 0, got {self.dim_scale}", key="dim_scale")
        if any(m < 0 for m in self.reg_dims):
            raise ConfigError(f"every entry must be >= 0, got {self.reg_dims}", key="reg_dims")


@dataclass
class CriticSection:
    n: int = field(default=2, metadata={"min": 2})  # ensemble members; targets take the min of a random pair
    hidden: int = field(default=256, metadata={"min": 1})
    layers: int = field(default=2, metadata={"min": 1})
    lr: float = field(default=3e-4, metadata={"gt": 0.0})
    # Feed the critics the residual in units of actor.scale (x 1/scale) rather than raw normalised units.
    residual_unit: bool = False


@dataclass
class DemoSection:
    store: str = "auto"  # auto: the store the base was trained on; "": no demonstrations
    ratio: float = field(default=0.5, metadata={"min": 0.0, "max": 1.0})  # share of every batch
    episodes: int | None = field(default=None, metadata={"min": 1})
    # Only the steps whose action the residual can reach from the base's (see replay.demo_transitions).
    # Off: on can from a 0.18 base it did worse (0.08 against 0.40 at 50k env steps, README).
    within_bound: bool = False


@dataclass
class EnvSection:
    n_envs: int = field(default=4, metadata={"min": 1})
    workers: int = field(default=2, metadata={"min": 0})  # processes stepping the envs; 0: in this process
    max_steps: int | None = field(default=None, metadata={"min": 1})  # None: the task's horizon


@dataclass
class EvalSection:
    every: int = field(default=10000, metadata={"min": 1})  # env steps between evaluations
    episodes: int = field(default=50, metadata={"min": 1})  # fixed seeds 1,000,000 onwards, as `robolearn eval`
    # With actor.ema: also evaluate the online actor on the same seeds (curve: success_online), side by side.
    compare_online: bool = False


@dataclass
class RewardSection:
    spec: str = ""  # "": sparse success only; else a progress model (`reward fit` dir, gvl:URL, clip:PATH)
    image_size: int = field(default=84, metadata={"min": 8})  # the reward camera's render size
    lam_start: float = 1.0
    lam_end: float = 1.0
    lam_steps: int = field(default=0, metadata={"min": 0})  # env steps to anneal lambda over
    lam_kind: str = field(default="linear", metadata={"choices": ("linear", "cosine")})
    min_voc: float = 0.9
    min_auroc: float = 0.9
    force: bool = False  # use a model that fails its gate (with a warning)


@dataclass
class SACSection:
    init_alpha: float = field(default=0.1, metadata={"gt": 0.0})
    target_entropy: float | None = None  # None: -action_dim


@dataclass
class FinetuneRecipe:
    name: str = ""
    algo: str = field(default="td3", metadata={"choices": ALGOS})
    gamma: float = field(default=0.99, metadata={"gt": 0.0, "max": 1.0})
    n_step: int = field(default=3, metadata={"min": 1})
    batch_size: int = field(default=256, metadata={"min": 2})
    utd: int = field(default=1, metadata={"min": 1})  # gradient updates per env step
    tau: float = field(default=0.005, metadata={"gt": 0.0, "max": 1.0})
    policy_delay: int = field(default=2, metadata={"min": 1})
    explore_noise: float = field(default=0.5, metadata={"min": 0.0})  # x actor.scale (TD3), in every dimension
    # Per action dimension, multipliers of explore_noise (e.g. [1,1,1,1,1,1,6]: 6x the noise on the gripper,
    # whose command only acts through its sign, so small noise never tries a flipped one); empty: 1 everywhere.
    explore_dims: list[float] = field(default_factory=list)
    # AR(1) coefficient of that noise in time (0: white). A correction that persists for ~1/(1-rho)
    # ticks moves the arm somewhere; white noise at the same std averages out within a few ticks.
    explore_corr: float = field(default=0.0, metadata={"min": 0.0, "lt": 1.0})
    target_noise: float = field(default=0.2, metadata={"min": 0.0})  # x actor.scale (TD3 smoothing)
    target_noise_clip: float = field(default=0.5, metadata={"min": 0.0})
    learning_starts: int = field(default=1000, metadata={"min": 1})  # online transitions before updates
    critic_warmup: int = field(default=5000, metadata={"min": 0})  # env steps of critic-only updates
    buffer: int = field(default=300_000, metadata={"min": 1})
    ckpt_every: int = field(default=5000, metadata={"min": 1})
    log_every: int = field(default=1000, metadata={"min": 1})
    seed: int = field(default=0, metadata={"min": 0})
    # bf16: the learner's forward and backward passes under autocast (weights, optimiser state, targets
    # and losses stay fp32). On a CPU with AVX512-BF16 a 10-critic step is ~1.8x faster (README); on
    # one without, slower. Acting and evaluation stay fp32.
    mixed_precision: str = field(default="no", metadata={"choices": ("no", "bf16")})
    actor: ActorSection = field(default_factory=ActorSection)
    critic: CriticSection = field(default_factory=CriticSection)
    demos: DemoSection = field(default_factory=DemoSection)
    env: EnvSection = field(default_factory=EnvSection)
    eval: EvalSection = field(default_factory=EvalSection)
    reward: RewardSection = field(default_factory=RewardSection)
    sac: SACSection = field(default_factory=SACSection)

    def validate(self) -> None:
        if any(m < 0 for m in self.explore_dims):
            raise ConfigError(f"every entry must be >= 0, got {self.explore_dims}", key="explore_dims")
        if self.batch_size * self.demos.ratio < 1 and self.demos.ratio > 0:
            raise ConfigError(f"batch_size {self.batch_size} x demos.ratio {self.demos.ratio} < 1 sample",
                              key="demos.ratio")


def load_finetune_recipe(path: str | os.PathLike = "residual_td3", overrides: Sequence[str] = ()) -> FinetuneRecipe:
    """A fine-tuning recipe (name or path, found like training recipes), ``key=value`` overrides applied."""
    from robolearn import resources
    from robolearn.config import load_yaml_config

    p = resources.resolve("recipe", path)
    r = load_yaml_config(FinetuneRecipe, p, "recipe", overrides)
    r.name = r.name or p.stem
    return r


# ----------------------------------------------------------------------------- the learner


class ExploreNoise:
    """Gaussian exploration noise per environment, AR(1)-correlated in time:
    ``n_t = rho * n_(t-1) + sqrt(1 - rho^2) * std * eps``. Every tick's noise has the same std as white
    noise; ``rho = 0`` is white noise. Each episode starts from a fresh stationary draw (:meth:`reset`)."""

    def __init__(self, n_envs: int, dim: int, std: float | torch.Tensor, corr: float, seed: int = 0) -> None:
        if not 0.0 <= corr < 1.0:
            raise ValueError(f"explore_corr {corr} is outside [0, 1)")
        self.std, self.corr = torch.as_tensor(std, dtype=torch.float32), float(corr)  # std: scalar or per dim
        self.gen = torch.Generator().manual_seed(seed)
        self.state = torch.randn(n_envs, dim, generator=self.gen) * self.std

    def reset(self, env: int) -> None:
        self.state[env] = torch.randn(self.state.shape[1], generator=self.gen) * self.std

    def sample(self) -> torch.Tensor:
        """(n_envs, dim): this tick's noise for every env (advances every env's state one tick)."""
        eps = torch.randn(self.state.shape, generator=self.gen) * self.std
        self.state = self.corr * self.state + (1.0 - self.corr ** 2) ** 0.5 * eps
        return self.state.clone()


class ResidualLearner:
    """Actor, critic ensemble, their targets and optimisers; ``update`` is one gradient step.

    Inputs are normalised: ``obs`` features (B, D), ``base`` actions (B, A), ``residual`` (B, A)."""

    def __init__(self, cfg: FinetuneRecipe, obs_dim: int, action_dim: int) -> None:
        from robolearn.rl.residual import ActorConfig, CriticEnsemble, ResidualActor

        self.cfg = cfg
        self.sac = cfg.algo == "sac"
        a, c = cfg.actor, cfg.critic
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.actor = ResidualActor(ActorConfig(obs_dim, action_dim, a.hidden, a.layers, actor_bound(a, action_dim),
                                               stochastic=self.sac))
        self.scale = self.actor.bound  # (action_dim,): the reach
        # Noise and the pull toward the base are in units of actor.scale in every dimension, so
        # dim_scale widens the reach without weakening the pull (reg on residual/bound would be
        # 9x weaker at 3x the bound: can fell to 0.32 that way, README).
        self.unit = float(a.scale)
        self.reg_w = torch.as_tensor(reg_weights(a, action_dim), dtype=torch.float32)  # (action_dim,)
        dims = _per_dimension(cfg.explore_dims, action_dim, "explore_dims") if cfg.explore_dims else [1.0] * action_dim
        self.explore_std = torch.as_tensor(dims, dtype=torch.float32) * cfg.explore_noise * self.unit  # (action_dim,)
        self.critic = CriticEnsemble(obs_dim, action_dim, c.n, c.hidden, c.layers,
                                     residual_gain=1.0 / self.unit if c.residual_unit else 1.0)
        self.actor_t, self.critic_t = copy.deepcopy(self.actor), copy.deepcopy(self.critic)
        # The averaged actor (actor.ema); ``deployed`` is what evaluation and checkpoints use.
        self.actor_ema = copy.deepcopy(self.actor).requires_grad_(False) if a.ema > 0 else None
        self.opt_a = torch.optim.Adam(self.actor.parameters(), lr=a.lr, foreach=True)
        self.opt_c = torch.optim.Adam(self.critic.parameters(), lr=c.lr, foreach=True)
        self.log_alpha = torch.tensor(float(np.log(cfg.sac.init_alpha)), requires_grad=True)
        self.opt_alpha = torch.optim.Adam([self.log_alpha], lr=a.lr)
        self.target_entropy = cfg.sac.target_entropy if cfg.sac.target_entropy is not None else -float(action_dim)
        self.bf16 = cfg.mixed_precision == "bf16"

    def _autocast(self) -> torch.autocast:
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, base: torch.Tensor, explore: bool,
            noise: torch.Tensor | None = None) -> torch.Tensor:
        """The residual to execute: with exploration noise (TD3) or sampled (SAC) when ``explore``.
        ``noise``: the TD3 noise to add (e.g. from :class:`ExploreNoise`); None draws white noise."""
        if not explore:
            return self.actor(obs, base)
        if self.sac:
            return self.actor.sample(obs, base)[0]
        if noise is None:
            noise = torch.randn(base.shape, generator=self.gen) * self.explore_std
        return (self.actor(obs, base) + noise).clamp(-self.scale, self.scale)

    def update(self, batch: dict[str, np.ndarray], train_actor: bool) -> dict[str, float]:
        """One critic step on an n-step batch; an actor (and SAC temperature) step when ``train_actor``."""
        cfg, scale, unit, critic = self.cfg, self.scale, self.unit, self.critic
        bt = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in batch.items()}
        o, b, r, ret, disc, o2, b2 = (bt[k] for k in ("obs", "base", "residual", "reward", "discount", "next_obs",
                                                       "next_base"))
        # Targets: n-step return + discounted min over a random pair of target critics at the next state.
        with torch.no_grad(), self._autocast():
            if self.sac:
                r2, logp2 = self.actor.sample(o2, b2)
                r2, logp2 = r2.float(), logp2.float()
                q_next = critic.min_pair(self.critic_t(o2, b2, r2).float(), self.gen) - self.log_alpha.exp() * logp2
            else:
                noise = (torch.randn(r.shape, generator=self.gen) * cfg.target_noise * unit).clamp(
                    -cfg.target_noise_clip * unit, cfg.target_noise_clip * unit)
                r2 = (self.actor_t(o2, b2).float() + noise).clamp(-scale, scale)
                q_next = critic.min_pair(self.critic_t(o2, b2, r2).float(), self.gen)
            y = ret + disc * q_next
        with self._autocast():
            q = critic(o, b, r).float()  # (E, B): every member regresses to the same target
        loss_c = (q - y).pow(2).mean(1).sum()
        self.opt_c.zero_grad(set_to_none=True)
        loss_c.backward()
        self.opt_c.step()
        logs = {"q": float(q.detach().mean()), "critic_loss": float(loss_c.detach())}
        if train_actor:  # after the critic-only warm-up, every policy_delay updates
            with self._autocast():
                if self.sac:
                    res, logp = self.actor.sample(o, b)
                    res, logp = res.float(), logp.float()
                    q_pi = critic(o, b, res).float().mean(0)
                    loss_a = (self.log_alpha.exp().detach() * logp - q_pi).mean()
                else:
                    res = self.actor(o, b).float()
                    q_pi = critic(o, b, res).float().mean(0)
                    loss_a = -q_pi.mean()
            if cfg.actor.reg > 0 or cfg.actor.demo_reg > 0:  # Q normalised: the pulls mean the same whatever
                loss_a = loss_a / q_pi.detach().abs().mean().clamp_min(1e-6)  # the reward's scale
            if cfg.actor.reg > 0:
                pen = ((res / unit).pow(2) * self.reg_w).mean()
                loss_a = loss_a + cfg.actor.reg * pen
                logs["residual_penalty"] = float(pen.detach())
            rows = bt["demo"] > 0 if "demo" in bt else None
            if cfg.actor.demo_reg > 0 and rows is not None and bool(rows.any()):
                pull = ((res[rows] - r[rows]) / unit).pow(2).mean()
                loss_a = loss_a + cfg.actor.demo_reg * pull
                logs["demo_pull"] = float(pull.detach())
            self.opt_a.zero_grad(set_to_none=True)
            loss_a.backward()
            self.opt_a.step()
            if self.sac:
                loss_alpha = -(self.log_alpha * (logp.detach() + self.target_entropy)).mean()
                self.opt_alpha.zero_grad(set_to_none=True)
                loss_alpha.backward()
                self.opt_alpha.step()
            soft_update(self.actor_t, self.actor, cfg.tau)
            if self.actor_ema is not None:
                soft_update(self.actor_ema, self.actor, cfg.actor.ema)
            logs["actor_loss"] = float(loss_a.detach())
        soft_update(self.critic_t, critic, cfg.tau)
        return logs

    @property
    def deployed(self) -> torch.nn.Module:
        """The actor to evaluate and checkpoint: the weight average when actor.ema is on."""
        return self.actor_ema if self.actor_ema is not None else self.actor

    _PARTS = ("actor", "critic", "actor_t", "critic_t", "opt_a", "opt_c", "opt_alpha")

    def state_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k).state_dict() for k in self._PARTS}
        if self.actor_ema is not None:
            d["actor_ema"] = self.actor_ema.state_dict()
        return d | {"log_alpha": self.log_alpha.detach().clone(), "gen": self.gen.get_state()}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        for k in self._PARTS:
            getattr(self, k).load_state_dict(d[k])
        if self.actor_ema is not None:
            self.actor_ema.load_state_dict(d["actor_ema"])
        with torch.no_grad():
            self.log_alpha.copy_(d["log_alpha"])
        self.gen.set_state(d["gen"])


# ----------------------------------------------------------------------------- helpers


def _per_dimension(values: list[float], action_dim: int, key: str) -> list[float]:
    """A recipe's per-action-dimension list, checked against the base's action size."""
    if len(values) != action_dim:
        raise ConfigError(f"{len(values)} entries, but the base's actions have {action_dim} dimensions", key=key)
    return [float(m) for m in values]


def reg_weights(a: ActorSection, action_dim: int) -> list[float]:
    """The pull toward the base per action dimension: ``reg_dims``, or 1 everywhere."""
    return _per_dimension(a.reg_dims, action_dim, "actor.reg_dims") if a.reg_dims else [1.0] * action_dim


def actor_bound(a: ActorSection, action_dim: int) -> float | list[float]:
    """The recipe's residual bound: ``scale``, or ``scale`` times each of ``dim_scale``."""
    if not a.dim_scale:
        return a.scale
    return [a.scale * m for m in _per_dimension(a.dim_scale, action_dim, "actor.dim_scale")]


def soft_update(target: torch.nn.Module, source: torch.nn.Module, tau: float) -> None:
    with torch.no_grad():  # one fused call: per-tensor lerps cost more than the update's matmuls here
        torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


def _fill_defaults(d: dict[str, Any], defaults: dict[str, Any]) -> None:
    for k, v in defaults.items():
        if k not in d:
            d[k] = v
        elif isinstance(v, dict) and isinstance(d[k], dict):
            _fill_defaults(d[k], v)


def _task_of(rig: str) -> str:
    if not rig.startswith("sim:"):
        raise UserError(f"--rig {rig}: fine-tuning runs on simulated rigs (sim:TASK) for now")
    return rig[4:]


def run_episodes(pool: Any, base: Any, keys: list[str], actor: Any, seeds: Sequence[int]) -> dict[int, bool]:
    """Success per seed of the base (``actor`` None) or base + deterministic residual on ``pool``'s envs
    in lockstep (one base call per chunk boundary for all); seeds handed out in order."""
    from robolearn.rl.residual import apply_residual, normalize_action, obs_features
    from robolearn.rollout import PolicyAgent

    agent = PolicyAgent(base, {k: base.shape_meta.obs[k] for k in base.obs_keys}, pool.n_envs)
    todo = list(seeds)[::-1]
    seed_of: dict[int, int] = {}
    out: dict[int, bool] = {}
    obs: dict[int, Any] = {}

    def start(envs: list[int]) -> None:
        want = {i: todo.pop() for i in envs if todo}
        for i, s in want.items():
            seed_of[i] = s
            agent.reset(i, s)
        obs.update(pool.reset(want))

    start(list(range(pool.n_envs)))
    while obs:
        envs = sorted(obs)
        base_act = agent.act({i: obs[i] for i in envs})
        b = np.stack([base_act[i] for i in envs])
        if actor is not None:
            with torch.no_grad():
                bn = normalize_action(base, b)
                b = apply_residual(base, b, actor(obs_features(base, keys, [obs[i] for i in envs]), bn))
        res = pool.step({i: b[row] for row, i in enumerate(envs)})
        ended = []
        for i in envs:
            o, succ, trunc = res[i]
            obs[i] = o
            if succ or trunc:
                out[seed_of[i]] = succ
                del obs[i]
                ended.append(i)
        if ended:
            start(ended)
    return out


# ----------------------------------------------------------------------------- the loop


def _view_tick(live: Any, agent: Any, o: dict[str, np.ndarray], action: np.ndarray, reward: float, success: bool,
               progress: float | None, episode: int, seen: list[int]) -> None:
    """Environment 0's tick into the live view (which only queues it): what it saw, the executed action
    (base + residual), the reward and progress, and the base's chunk whenever a new one starts."""
    from robolearn.features import CONTROL_STREAM
    from robolearn.rigs.base import Sample

    t = time.monotonic()
    images = {k: v for k, v in o.items() if k.endswith("_image")}
    obs = {CONTROL_STREAM: Sample({k: v for k, v in o.items() if k not in images}, t, t)}
    obs |= {k[: -len("_image")]: Sample({k: v}, t, t) for k, v in images.items()}
    scalars = {"reward": reward, "success": float(success), "episode": float(episode)}
    if progress is not None:
        scalars["progress"] = progress
    live.log_tick(t, obs, action=np.asarray(action), scalars=scalars)
    if agent.chunk_count[0] != seen[0]:  # after the tick: the view draws the chunk from this tick's eef
        seen[0] = agent.chunk_count[0]
        live.log_chunk(t, "executing", agent.last_chunk[0])


def finetune(policy: str | os.PathLike, rig: str, out: str | os.PathLike, steps: int,
             reward: str | None = None, recipe: str | os.PathLike = "residual_td3", overrides: Sequence[str] = (),
             progress: bool = True, on_eval: Callable[[dict[str, Any]], None] | None = None,
             view: str | None = None, base_success: float | None = None) -> dict[str, Any]:
    """Fine-tune a residual on base checkpoint ``policy`` for ``steps`` env steps into ``out``.

    Resumes by itself when ``out`` holds a run's ``state.pt`` (same base and recipe). ``view``: a live
    Rerun view of environment 0's training episodes (``robolearn.viz.live.make_view``). ``base_success``:
    the base's success rate already measured on the evaluation seeds (``robolearn eval`` uses the same
    ones), which saves evaluating the base again."""
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    from robolearn.eval.runner import EVAL_SEED_BASE, resolve_checkpoint
    from robolearn.policies.checkpoint import load_policy, read_checkpoint_meta
    from robolearn.rl.envs import EnvPool
    from robolearn.rl.replay import (
        NStepCollector,
        ReplayBuffer,
        demo_transitions,
        policy_obs_dim,
        sample_mixed,
    )
    from robolearn.rl.residual import (
        ResidualPolicy,
        apply_residual,
        base_hash,
        lowdim_keys,
        normalize_action,
        obs_features,
    )

    # ---- set-up: recipe, base, output directory (fail before starting anything heavy)
    if reward:
        overrides = [*overrides, f"reward.spec={reward}"]
    cfg = load_finetune_recipe(recipe, overrides)
    task = _task_of(rig)
    if steps < 1:
        raise UserError(f"--steps must be at least 1, got {steps}")
    base_ckpt = resolve_checkpoint(policy)
    base = load_policy(base_ckpt).eval()
    images = [k for k in base.obs_keys if base.shape_meta.obs[k].kind != "lowdim"]
    if images:
        raise UserError(f"{base_ckpt} reads images ({', '.join(images)}); fine-tuning supports low-dim bases for now")
    keys = lowdim_keys(base)
    obs_dim, adim = policy_obs_dim(base, keys), base.action_dim
    out = Path(out)
    state_path = out / "state.pt"
    resume = state_path.is_file()
    run_info = {"base": str(Path(base_ckpt).resolve()), "base_sha256": base_hash(base_ckpt), "rig": rig,
                "recipe": asdict(cfg)}
    if resume:
        prev = yaml.safe_load((out / "recipe.yaml").read_text())
        if prev["base_sha256"] != run_info["base_sha256"] or prev["rig"] != rig:
            raise UserError(f"{out} fine-tunes another base or rig; choose a new --out")
        # How many processes step the envs changes nothing learnt: a resumed run may use another count.
        mine = json.loads(json.dumps(run_info["recipe"]))
        # A field added to the recipe since that run started holds its default there.
        _fill_defaults(prev["recipe"], json.loads(json.dumps(asdict(FinetuneRecipe()))))
        for r in (prev["recipe"], mine):
            r["env"].pop("workers", None)
        if prev["recipe"] != mine:
            diff = sorted(k for k in mine if mine[k] != prev["recipe"].get(k))
            raise UserError(f"{out} was started with another recipe (differs in {', '.join(diff)}); "
                            "choose a new --out or use the same settings")
    elif out.exists():
        # A run that failed before its first save left only these (and the step-0 evaluation's
        # checkpoint): start it afresh.
        left = {p.name for p in out.iterdir()}
        ck = out / "checkpoints"
        if left - {"recipe.yaml", "tb", "curve.jsonl", "checkpoints"} or \
                (ck.is_dir() and any(c.name != "step_0000000" for c in ck.iterdir())):
            raise UserError(f"{out} is not empty and holds no fine-tuning state; choose a new --out")
        (out / "curve.jsonl").unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(run_info)), sort_keys=False))

    dense = None
    camera = None
    if cfg.reward.spec:
        from robolearn.rewards import DenseReward, GateConfig, LambdaSchedule, load_gated_reward
        from robolearn.sim.tasks import load_task

        model = load_gated_reward(cfg.reward.spec, gate=GateConfig(cfg.reward.min_voc, cfg.reward.min_auroc),
                                  force=cfg.reward.force)
        image_key = getattr(getattr(model, "meta", None), "image_key", "agentview_image")
        camera = image_key[: -len("_image")]
        sched = LambdaSchedule(cfg.reward.lam_start, cfg.reward.lam_end, cfg.reward.lam_steps, kind=cfg.reward.lam_kind)
        text = load_task(task).instruction
        dense = [DenseReward(model, text, cfg.gamma, sched) for _ in range(cfg.env.n_envs)]

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    learner = ResidualLearner(cfg, obs_dim, adim)
    actor = learner.deployed  # evaluated and checkpointed (the EMA of the online actor with actor.ema)
    online = ReplayBuffer(cfg.buffer, obs_dim, adim)
    st = {"env_steps": 0, "updates": 0, "episodes": 0, "next_seed": TRAIN_SEED_BASE, "next_eval": 0,
          "curve": [], "base_success": None, "wall_s": 0.0}
    if base_success is not None and st["base_success"] is None:
        st["base_success"] = float(base_success)
    if resume:
        s = torch.load(state_path, map_location="cpu", weights_only=False)
        learner.load_state_dict(s["learner"])
        st.update(s["progress"])
        rng.bit_generator.state = s["np_rng"]
        torch.set_rng_state(s["torch_rng"])
        if (out / "replay.npz").is_file():
            online.load(out / "replay.npz")

    demos = None
    demo_store = cfg.demos.store
    if demo_store == "auto":
        demo_store = (read_checkpoint_meta(base_ckpt).get("extra") or {}).get("data", "")
    if cfg.demos.ratio > 0 and demo_store:
        if not Path(demo_store).exists():
            raise UserError(f"demonstration store {demo_store} is missing; set demos.store=PATH or demos.ratio=0")
        demos = demo_transitions(base, keys, demo_store, cfg.n_step, cfg.gamma, learner.scale.numpy(),
                                 cfg.demos.episodes,
                                 within_bound=cfg.demos.within_bound)

    def save_state() -> None:
        # The recent-episode window survives a resume: restarted empty, it would read the short (successful)
        # episodes that end first after the restart, and the success curve would jump to 1 at every resume.
        st["recent_success"], st["recent_return"] = list(recent), list(returns)
        ResidualPolicy(base, actor, str(base_ckpt), keys).save(
            out / "checkpoints" / "last", extra={"env_steps": st["env_steps"], "task": task, "algo": cfg.algo})
        online.save(out / "replay.npz")
        tmp = state_path.with_suffix(".tmp")
        torch.save({"learner": learner.state_dict(), "progress": st, "np_rng": rng.bit_generator.state,
                    "torch_rng": torch.get_rng_state()}, tmp)
        os.replace(tmp, state_path)

    # ---- collection
    n = cfg.env.n_envs
    live = None
    if view is not None:
        from robolearn.viz.live import make_view

        live = make_view(view)
    view_seen = [0]
    writer = SummaryWriter(str(out / "tb"))
    pool = EnvPool(task, n, cfg.env.workers, camera=camera, image_size=cfg.reward.image_size,
                   max_steps=cfg.env.max_steps)
    eval_seeds = list(range(EVAL_SEED_BASE, EVAL_SEED_BASE + cfg.eval.episodes))
    from robolearn.rollout import PolicyAgent

    agent = PolicyAgent(base, {k: base.shape_meta.obs[k] for k in base.obs_keys}, n)
    collector = NStepCollector(n, cfg.n_step, cfg.gamma, online.add)
    recent: deque[float] = deque(st.get("recent_success", []), maxlen=50)
    returns: deque[float] = deque(st.get("recent_return", []), maxlen=50)
    drift: deque[float] = deque(maxlen=50)
    ep_ret = np.zeros(n)
    logs: dict[str, float] = {}
    res_mag: deque[float] = deque(maxlen=1000)
    t_wall = time.perf_counter() - st["wall_s"]
    steps_at_start = st["env_steps"]
    t_start = time.perf_counter()
    bar = tqdm(total=steps, initial=min(st["env_steps"], steps), desc=f"finetune {rig}", unit="step",
               disable=not progress, dynamic_ncols=True)
    obs: dict[int, Any] = {}
    pending: dict[int, tuple] = {}
    # Correlated TD3 exploration; white noise (explore_corr 0) keeps the learner's own generator.
    explorer = (ExploreNoise(n, adim, learner.explore_std, cfg.explore_corr,
                             seed=cfg.seed + 1 + st["episodes"])
                if cfg.algo == "td3" and cfg.explore_corr > 0 else None)

    def proprio(o: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        pk = dense[0].model.proprio_keys if dense else ()
        return {k: o[k] for k in pk} if pk else None

    def start(envs: list[int]) -> None:
        seeds = {}
        for i in envs:
            seeds[i] = st["next_seed"]
            st["next_seed"] += 1
            agent.reset(i, seeds[i])
            collector.reset(i)
            if explorer is not None:
                explorer.reset(i)
            pending.pop(i, None)
            ep_ret[i] = 0.0
        obs.update(pool.reset(seeds))
        if dense:
            for i in envs:
                dense[i].reset(obs[i][f"{camera}_image"], proprio(obs[i]))

    def score(a: torch.nn.Module) -> float:
        a.eval()
        rr = run_episodes(pool, base, keys, a, eval_seeds)
        a.train()
        return float(np.mean([rr[s] for s in eval_seeds]))

    def evaluate_now() -> None:
        t0 = time.perf_counter()
        pool.set_render(False)  # the base and the residual read low-dim state only
        if st["base_success"] is None:
            rb = run_episodes(pool, base, keys, None, eval_seeds)
            st["base_success"] = float(np.mean([rb[s] for s in eval_seeds]))
        if st["env_steps"] == 0:
            succ = st["base_success"]  # the residual is zero at step 0: exactly the base (tested)
        else:
            succ = score(actor)
        row = {"env_steps": st["env_steps"], "success": succ, "base_success": st["base_success"],
               "episodes": len(eval_seeds)}
        if cfg.eval.compare_online and learner.actor_ema is not None:
            row["success_online"] = succ if st["env_steps"] == 0 else score(learner.actor)
            writer.add_scalar("eval/success_online", row["success_online"], st["env_steps"])
        row |= {"wall_s": time.perf_counter() - t_wall, "eval_s": time.perf_counter() - t0,
                "train_success_recent": float(np.mean(recent)) if recent else None}
        st["curve"].append(row)
        # The residual this row scored, kept (a few hundred kB): `robolearn eval --policy` re-runs any point.
        ResidualPolicy(base, actor, str(base_ckpt), keys).save(
            out / "checkpoints" / f"step_{st['env_steps']:07d}",
            extra={"env_steps": st["env_steps"], "task": task, "algo": cfg.algo, "success": succ})
        with open(out / "curve.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        writer.add_scalar("eval/success", succ, st["env_steps"])
        writer.add_scalar("eval/base_success", st["base_success"], st["env_steps"])
        bar.set_postfix(eval=f"{succ:.2f}", base=f"{st['base_success']:.2f}", refresh=False)
        if on_eval is not None:
            on_eval(row)
        st["next_eval"] = st["env_steps"] + cfg.eval.every
        pool.set_render(True)
        start(list(range(n)))  # evaluation used the envs: fresh training episodes

    try:
        start(list(range(n)))
        while st["env_steps"] < steps:
            if st["env_steps"] >= st["next_eval"]:
                evaluate_now()
            envs = list(range(n))
            base_act = agent.act({i: obs[i] for i in envs})
            b = np.stack([base_act[i] for i in envs])
            with torch.no_grad():
                f = obs_features(base, keys, [obs[i] for i in envs])
                bn = normalize_action(base, b)
                res = learner.act(f, bn, explore=True, noise=None if explorer is None else explorer.sample())
            act = apply_residual(base, b, res)
            res_mag.append(float(res.abs().mean()))
            # The previous tick's transitions are complete now that their next state's base action is known.
            for i, p in pending.items():
                collector.add(i, *p, next_obs=f[i].numpy(), next_base=bn[i].numpy(), terminal=False, end=False)
            pending.clear()
            # Updates run while the workers step the physics (they see the buffer up to the last tick).
            pool.step_async({i: act[i] for i in envs})
            if len(online) >= cfg.learning_starts:
                for _ in range(cfg.utd * n):
                    st["updates"] += 1
                    train_actor = st["env_steps"] >= cfg.critic_warmup and st["updates"] % cfg.policy_delay == 0
                    batch = sample_mixed(online, demos, cfg.batch_size, cfg.demos.ratio, rng)
                    logs.update(learner.update(batch, train_actor))
            results = pool.step_wait()
            ended = []
            for i in envs:
                o2, succ, trunc = results[i]
                r = float(succ)
                if dense:
                    dense[i].global_step = st["env_steps"]
                    r = dense[i].step(o2[f"{camera}_image"], proprio(o2), float(succ), terminal=succ)
                if live is not None and i == 0:
                    _view_tick(live, agent, obs[0], act[0], r, succ, dense[0].progress if dense else None,
                               st["episodes"], view_seen)
                ep_ret[i] += r
                if succ or trunc:
                    # Bootstrap a truncated episode from its last state (the base's next action there).
                    if succ:
                        f2, b2 = np.zeros(obs_dim, np.float32), np.zeros(adim, np.float32)
                    else:
                        nb = agent.act({i: o2})[i]
                        with torch.no_grad():
                            f2 = obs_features(base, keys, o2)[0].numpy()
                            b2 = normalize_action(base, nb[None])[0].numpy()
                    collector.add(i, f[i].numpy(), bn[i].numpy(), res[i].numpy(), r, f2, b2, terminal=succ, end=True)
                    recent.append(float(succ))
                    returns.append(float(ep_ret[i]))
                    if dense:
                        phi = dense[i].potential(o2[f"{camera}_image"], proprio(o2))
                        drift.append(abs(phi - float(succ)))
                    st["episodes"] += 1
                    ended.append(i)
                else:
                    pending[i] = (f[i].numpy(), bn[i].numpy(), res[i].numpy(), r)
                    obs[i] = o2
            st["env_steps"] += n
            bar.update(n)
            if ended:
                start(ended)
            if st["env_steps"] % cfg.log_every < n:
                es = st["env_steps"]
                sps = (es - steps_at_start) / max(time.perf_counter() - t_start, 1e-9)
                for k, v in logs.items():
                    writer.add_scalar(f"train/{k}", v, es)
                if recent:
                    writer.add_scalar("train/success", float(np.mean(recent)), es)
                    writer.add_scalar("train/return", float(np.mean(returns)), es)
                if drift:
                    writer.add_scalar("reward/dense_vs_success_drift", float(np.mean(drift)), es)
                writer.add_scalar("train/residual_abs", float(np.mean(res_mag)), es)
                writer.add_scalar("train/env_steps_per_s", sps, es)
                bar.set_postfix(train=f"{np.mean(recent):.2f}" if recent else "-",
                                eval=f"{st['curve'][-1]['success']:.2f}" if st["curve"] else "-",
                                q=f"{logs.get('q', 0):.2f}", refresh=False)
            if st["env_steps"] % cfg.ckpt_every < n:
                st["wall_s"] = time.perf_counter() - t_wall
                save_state()
        if not st["curve"] or st["curve"][-1]["env_steps"] != st["env_steps"]:
            evaluate_now()
        st["wall_s"] = time.perf_counter() - t_wall
        save_state()
    finally:
        bar.close()
        writer.close()
        pool.close()
        if live is not None:
            live.close()
    sps = (st["env_steps"] - steps_at_start) / max(time.perf_counter() - t_start, 1e-9)
    result = {"env_steps": st["env_steps"], "updates": st["updates"], "episodes": st["episodes"],
              "base_success": st["base_success"], "success": st["curve"][-1]["success"] if st["curve"] else None,
              "curve": st["curve"], "wall_s": st["wall_s"], "env_steps_per_s": sps,
              # Over the whole run, every resume included (a call that had nothing left to do reports 0 above).
              "env_steps_per_s_overall": st["env_steps"] / max(st["wall_s"], 1e-9), "algo": cfg.algo,
              "reward": cfg.reward.spec or "sparse", "demo_transitions": len(demos) if demos else 0,
              "checkpoint": str(out / "checkpoints" / "last")}
    (out / "result.json").write_text(json.dumps(result, indent=2))
    return result
