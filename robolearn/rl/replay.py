"""Replay: n-step transitions from several environments, and RLPD-style mixing with demonstrations.

A transition holds ``obs`` (features), ``base`` (the base's normalised action), ``residual`` (what
was added), the n-step discounted ``reward``, the ``discount`` to apply to the bootstrap value
(``gamma ** k``, 0 after a terminal state) and ``next_obs``/``next_base`` at the bootstrap state.

:class:`NStepCollector` turns one-step transitions, arriving interleaved from ``n_envs``
environments, into n-step ones per environment: a transition is complete ``n`` steps later, or at
its episode's end, where the sum stops (a terminal state bootstraps nothing; a time-limit
truncation bootstraps from the last observation).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

FIELDS = ("obs", "base", "residual", "reward", "discount", "next_obs", "next_base")


class NStepCollector:
    """Per-environment windows of one-step transitions -> n-step transitions to ``sink``."""

    def __init__(self, n_envs: int, n_step: int, gamma: float, sink: Callable[[dict[str, np.ndarray]], None]) -> None:
        if n_step < 1:
            raise ValueError(f"n_step must be >= 1, got {n_step}")
        self.n, self.gamma, self.sink = n_step, gamma, sink
        self.windows: list[deque[dict[str, Any]]] = [deque() for _ in range(n_envs)]

    def add(self, env: int, obs: np.ndarray, base: np.ndarray, residual: np.ndarray, reward: float,
            next_obs: np.ndarray, next_base: np.ndarray, terminal: bool, end: bool) -> None:
        """One step of environment ``env``. ``terminal``: the task ended (success), nothing to bootstrap;
        ``end``: the episode ends here (terminal or truncated)."""
        w = self.windows[env]
        w.append({"obs": obs, "base": base, "residual": residual, "reward": float(reward)})
        if len(w) == self.n and not end:
            self._emit(w.popleft(), w, next_obs, next_base, terminal=False)
        if end:
            while w:
                self._emit(w.popleft(), w, next_obs, next_base, terminal)

    def reset(self, env: int) -> None:
        """Drop what is pending in ``env`` (an episode abandoned mid-way, e.g. for an evaluation)."""
        self.windows[env].clear()

    def _emit(self, first: dict[str, Any], rest: deque, next_obs: np.ndarray, next_base: np.ndarray,
              terminal: bool) -> None:
        steps = [first, *rest]
        ret = sum(self.gamma ** k * s["reward"] for k, s in enumerate(steps))
        discount = 0.0 if terminal else self.gamma ** len(steps)
        self.sink({"obs": first["obs"], "base": first["base"], "residual": first["residual"], "reward": ret,
                   "discount": discount, "next_obs": next_obs, "next_base": next_base})


class ReplayBuffer:
    """A ring buffer of transitions (float32 arrays), saved and restored with ``np.savez``."""

    def __init__(self, capacity: int, obs_dim: int, action_dim: int) -> None:
        self.capacity = capacity
        shapes = {"obs": obs_dim, "base": action_dim, "residual": action_dim, "reward": 0, "discount": 0,
                  "next_obs": obs_dim, "next_base": action_dim}
        self.data = {k: np.zeros((capacity, d) if d else (capacity,), np.float32) for k, d in shapes.items()}
        self.size = 0
        self.pos = 0

    def __len__(self) -> int:
        return self.size

    def add(self, t: Mapping[str, Any]) -> None:
        for k in FIELDS:
            self.data[k][self.pos] = t[k]
        self.pos = (self.pos + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        idx = rng.integers(0, self.size, n)
        return {k: v[idx] for k, v in self.data.items()}

    def save(self, path: str | Path) -> None:
        tmp = Path(path).with_suffix(".tmp.npz")
        np.savez(tmp, size=self.size, pos=self.pos, **{k: v[: self.size] for k, v in self.data.items()})
        tmp.replace(path)

    def load(self, path: str | Path) -> None:
        with np.load(path) as z:
            n = int(z["size"])
            for k in FIELDS:
                self.data[k][:n] = z[k][: self.capacity]
            self.size, self.pos = min(n, self.capacity), int(z["pos"]) % self.capacity


def sample_mixed(online: ReplayBuffer, demos: ReplayBuffer | None, batch: int, demo_ratio: float,
                 rng: np.random.Generator) -> dict[str, np.ndarray]:
    """RLPD: a share ``demo_ratio`` of every batch from the demonstrations, the rest online. With
    demonstrations in the batch, ``demo`` (B,) marks their rows with 1 (for ``actor.demo_reg``)."""
    if demos is None or len(demos) == 0 or demo_ratio <= 0:
        return online.sample(batch, rng)
    if len(online) == 0:
        return demos.sample(batch, rng) | {"demo": np.ones(batch, np.float32)}
    nd = int(round(batch * demo_ratio))
    a, b = demos.sample(nd, rng), online.sample(batch - nd, rng)
    out = {k: np.concatenate([a[k], b[k]]) for k in a}
    out["demo"] = np.r_[np.ones(nd, np.float32), np.zeros(batch - nd, np.float32)]
    return out


def demo_transitions(policy: Any, keys: list[str], store_path: str | Path, n_step: int, gamma: float,
                     scale: float | np.ndarray, episodes: int | None = None,
                     within_bound: bool = False) -> ReplayBuffer:
    """The store's successful episodes as residual transitions.

    The base is run over each recorded episode exactly as in a rollout (a :class:`PolicyAgent` fed the
    recorded observations, chunk boundaries included), so ``base`` is what the base would have
    proposed there; the residual is the demonstrated action minus that, clipped to the residual's
    bound. Reward: the recorded per-tick success (``reward`` column) or 1 at the last tick, and the
    episode ends at its first success (as online episodes do).

    ``within_bound``: keep only the steps whose demonstrated action the residual can reach from the base's
    (|demo - base| <= scale in every dimension; ``scale``: one bound, or one per action dimension). A
    clipped step would credit a residual at its bound with the return of an action it cannot take; from a weak base that is most steps (53% of the entries of the
    can bench's demos). Off by default: dropping them did worse there (README, Residual RL)."""
    import torch

    from robolearn.data.store import DemoStore
    from robolearn.rl.residual import normalize_action, obs_features
    from robolearn.rollout import PolicyAgent

    store = DemoStore.open(store_path)
    feats = {k: policy.shape_meta.obs[k] for k in policy.obs_keys}
    agent = PolicyAgent(policy, feats, n_envs=1)
    todo = [i for i in range(store.n_episodes) if store.episode_info(i).success][:episodes]
    rows: list[dict[str, np.ndarray]] = []
    for ep in todo:
        data = store.read_episode(ep, keys=[*policy.obs_keys, policy.action_key])
        n = len(data[policy.action_key])
        try:
            succ, _ = store.read_column("reward", ep)
            hits = np.flatnonzero(np.asarray(succ) > 0)
            end = int(hits[0]) + 1 if len(hits) else n
        except Exception:  # noqa: BLE001 - stores without the column: success at the last tick
            end = n
        agent.reset(0, 0)
        obs_rows = [{k: data[k][t] for k in policy.obs_keys} for t in range(min(end + 1, n))]
        base = np.stack([agent.act({0: obs_rows[t]})[0] for t in range(len(obs_rows))])
        with torch.no_grad():
            f = obs_features(policy, keys, obs_rows).numpy()
            bn = normalize_action(policy, base).numpy()
            an = normalize_action(policy, data[policy.action_key][: len(obs_rows)]).numpy()
        res = np.clip(an - bn, -scale, scale)
        ep_rows: list[dict[str, np.ndarray]] = []
        collector = NStepCollector(1, n_step, gamma, ep_rows.append)
        for t in range(end):
            last = t == end - 1
            t1 = min(t + 1, len(obs_rows) - 1)
            collector.add(0, f[t], bn[t], res[t], float(last), f[t1], bn[t1], terminal=last, end=last)
        if within_bound:  # one env: the collector emits step t's transition t-th
            reach = np.all(np.abs(an - bn) <= scale + 1e-6, axis=1)[:end]
            ep_rows = [r for r, ok in zip(ep_rows, reach, strict=True) if ok]
        rows += ep_rows
    buf = ReplayBuffer(max(1, len(rows)), policy_obs_dim(policy, keys), policy.action_dim)
    for r in rows:
        buf.add(r)
    return buf


def policy_obs_dim(policy: Any, keys: list[str]) -> int:
    return int(sum(np.prod(policy.shape_meta.obs[k].tensor_shape) for k in keys))
