"""The progress-model interface, potential-based reward shaping and the gates on reward quality.

A progress model scores a clip of frames (plus proprioception where it uses it) for a task text:
progress in [0, 1] per frame (NaN where a backend could not judge a frame) and the probability
that the clip ends in success. The dense reward for RL is potential-based shaping (Ng, Harada &
Russell 1999) over the sparse true success signal::

    r_t = success_t + lambda * (gamma * Phi(s_{t+1}) - Phi(s_t)),      Phi = progress

Any potential keeps the optimal policy of the sparse task, so a wrong progress estimate can slow
learning but not make stalling optimal, as long as ``success`` is the true one. Shaping only works
this way when Phi is a function of the state: backends flagged ``markov`` score each frame on its
own and are the ones to use online. ``lambda`` can be annealed to zero over training.

Gates: a reward model whose held-out VOC or AUROC is below thresholds is refused by the RL loop
(:func:`check_gate`), with the figures in the message, unless forced.
"""

from __future__ import annotations

import json
import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robolearn.errors import MissingFileError, UserError


@dataclass
class ProgressScore:
    """A model's judgement of one clip."""

    progress: np.ndarray  # (T,) float32 in [0, 1], NaN where a frame could not be judged
    success: float  # probability that the clip ends in success; NaN when unknown
    info: dict[str, Any] = field(default_factory=dict)  # backend details (raw answers, cache hits, ...)

    @property
    def missing(self) -> int:
        return int(np.isnan(self.progress).sum())


class ProgressModel(ABC):
    """Scores clips of frames for a task. Subclasses: GVL, CLIP (VLM-RM), the progress network."""

    name: str = "progress"
    # True when each frame's progress depends on that frame alone (a state potential, usable online).
    markov: bool = False

    @abstractmethod
    def score(self, frames: np.ndarray, task: str, proprio: Mapping[str, np.ndarray] | None = None) -> ProgressScore:
        """``frames`` (T, H, W, 3) uint8 in time order; ``proprio`` key -> (T, D) where the model uses it."""

    def provenance(self) -> dict[str, Any]:
        """What produced the scores, for the store's column provenance (never a secret)."""
        return {"backend": self.name}

    # The keys of proprioception the model reads (empty: images only).
    proprio_keys: tuple[str, ...] = ()


def check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if len(frames) == 0:
        raise ValueError("frames: empty clip")
    return frames


# ---------------------------------------------------------------------------------------- shaping


@dataclass
class LambdaSchedule:
    """Shaping weight over RL steps: ``start`` until ``hold`` steps, then to ``end`` over ``steps``."""

    start: float = 1.0
    end: float = 1.0
    steps: int = 0
    hold: int = 0
    kind: str = "linear"  # linear | cosine

    def __post_init__(self) -> None:
        if self.kind not in ("linear", "cosine"):
            raise UserError(f"lambda schedule kind must be linear or cosine, got {self.kind!r}")
        if self.steps < 0 or self.hold < 0:
            raise UserError("lambda schedule steps and hold must be >= 0")

    def __call__(self, step: int) -> float:
        if step <= self.hold:
            return self.start
        x = 1.0 if self.steps == 0 else min(1.0, (step - self.hold) / self.steps)
        w = x if self.kind == "linear" else 0.5 * (1 - math.cos(math.pi * x))
        return self.start + (self.end - self.start) * w


def shaped_rewards(progress: np.ndarray, success: np.ndarray, gamma: float = 0.99, lam: float = 1.0,
                   terminal: bool = False) -> np.ndarray:
    """Dense rewards of one episode: ``progress`` holds Phi(s_0..s_T) (T+1 values, the state after the
    last action included), ``success`` the T sparse rewards. With ``terminal`` the episode ended in an
    absorbing state whose potential is 0 (so the shaping terms sum to -Phi(s_0), independent of the
    policy); a time-limit truncation keeps Phi(s_T), as a bootstrapping learner expects. Missing
    (NaN) potentials are carried forward from the last judged frame, and are 0 before the first."""
    phi = _fill_missing(np.asarray(progress, dtype=np.float64))
    success = np.asarray(success, dtype=np.float64)
    if len(phi) != len(success) + 1:
        raise ValueError(f"need T+1 potentials for T rewards, got {len(phi)} and {len(success)}")
    nxt = phi[1:].copy()
    if terminal:
        nxt[-1] = 0.0
    return (success + lam * (gamma * nxt - phi[:-1])).astype(np.float32)


def _fill_missing(phi: np.ndarray) -> np.ndarray:
    out = phi.copy()
    last = 0.0
    for i, v in enumerate(out):
        if np.isnan(v):
            out[i] = last
        else:
            last = v
    return out


class DenseReward:
    """Online shaped reward for an RL loop over a Markov progress model (one frame per step).

    ``reset(frame, proprio)`` at the start of each episode, then ``step(frame, proprio, success,
    terminal)`` after every env step returns the shaped reward; ``lam`` follows the schedule over
    the calls to ``step`` (or set ``global_step`` yourself)."""

    def __init__(self, model: ProgressModel, task: str, gamma: float = 0.99,
                 schedule: LambdaSchedule | None = None) -> None:
        if not model.markov:
            raise UserError(f"{model.name} scores whole clips; online shaping needs a per-frame (Markov) model")
        self.model = model
        self.task = task
        self.gamma = gamma
        self.schedule = schedule or LambdaSchedule()
        self.global_step = 0
        self._phi: float | None = None

    def potential(self, frame: np.ndarray, proprio: Mapping[str, np.ndarray] | None = None) -> float:
        pro = {k: np.asarray(v)[None] for k, v in proprio.items()} if proprio else None
        p = float(self.model.score(np.asarray(frame)[None], self.task, pro).progress[0])
        return 0.0 if math.isnan(p) else p

    def reset(self, frame: np.ndarray, proprio: Mapping[str, np.ndarray] | None = None) -> None:
        self._phi = self.potential(frame, proprio)

    @property
    def progress(self) -> float | None:
        """The progress (potential) of the latest frame; None before ``reset``."""
        return self._phi

    def step(self, frame: np.ndarray, proprio: Mapping[str, np.ndarray] | None, success: float,
             terminal: bool = False) -> float:
        if self._phi is None:
            raise RuntimeError("call DenseReward.reset() at the start of the episode")
        phi_next = 0.0 if terminal else self.potential(frame, proprio)
        lam = self.schedule(self.global_step)
        self.global_step += 1
        r = float(success) + lam * (self.gamma * phi_next - self._phi)
        self._phi = phi_next
        return r


# ---------------------------------------------------------------------------------------- gates


class RewardGateError(UserError):
    """A reward model below the configured quality thresholds (one line, the figures included)."""


@dataclass
class GateConfig:
    """Thresholds a reward model must meet on held-out episodes before RL may use it."""

    min_voc: float = 0.9
    min_auroc: float = 0.9
    max_voc_reversed: float | None = None  # e.g. -0.9; None: not gated


def check_gate(scores: Mapping[str, Any], gate: GateConfig | None = None, force: bool = False,
               what: str = "reward model") -> list[str]:
    """Raise :class:`RewardGateError` naming every failed figure unless ``force``; returns the
    failures (empty when it passes), which a forced caller should log."""
    gate = gate or GateConfig()
    failures = []

    def fig(name: str) -> float:
        v = scores.get(name)
        return float("nan") if v is None else float(v)

    voc, auroc, rev = fig("voc"), fig("auroc"), fig("voc_reversed")
    if not voc >= gate.min_voc:
        failures.append(f"VOC {voc:.3f} < {gate.min_voc}")
    if not auroc >= gate.min_auroc:
        failures.append(f"AUROC {auroc:.3f} < {gate.min_auroc}")
    if gate.max_voc_reversed is not None and not rev <= gate.max_voc_reversed:
        failures.append(f"reversed-clip VOC {rev:.3f} > {gate.max_voc_reversed}")
    if failures:
        counts = f"{scores.get('n_success', '?')} successes, {scores.get('n_failure', '?')} failures"
        msg = f"{what} fails its quality gate on held-out episodes ({counts}): {'; '.join(failures)}"
        if not force:
            raise RewardGateError(msg + "; improve it (more failures, more steps) or force it (finetune: reward.force=true; reward check: --force)")
        warnings.warn(msg + " (forced)", stacklevel=2)
    return failures


def load_scores(path: str | Path) -> dict[str, Any]:
    """The held-out figures saved next to a reward model (``scores.json``) or in a score directory."""
    p = Path(path)
    if p.is_dir():
        p = p / "scores.json"
    if not p.exists():
        raise MissingFileError(f"no held-out scores at {p}: run `robolearn reward score --reward ... --out DIR`")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{p} is not valid JSON ({e.msg}); re-run `robolearn reward score`") from None
