"""Residual RL: zero-init is the base, n-step replay, the critic's values, a biased base corrected,
and `robolearn finetune` end to end on sim:lift (resume, eval of the fine-tuned run)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from eval_helpers import tiny_checkpoint

from robolearn.errors import UserError
from robolearn.rl import load_finetune_recipe
from robolearn.rl.replay import NStepCollector, ReplayBuffer, sample_mixed
from robolearn.rl.residual import (
    ActorConfig,
    ResidualActor,
    ResidualAgent,
    ResidualPolicy,
    load_residual,
    lowdim_keys,
)
from robolearn.rl.residual_td3 import ExploreNoise, ResidualLearner

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


def _recipe(*overrides: str):
    return load_finetune_recipe("residual_td3", list(overrides))


# ---------------------------------------------------------------- zero init, checkpoint, hash


def test_zero_init_reproduces_the_base_bit_for_bit_and_the_checkpoint_checks_its_base(tmp_path):
    from robolearn.policies import load_policy
    from robolearn.rigs import make_rig
    from robolearn.rollout import PolicyAgent, policy_features, run_batched

    ckpt = tiny_checkpoint(tmp_path / "base")
    base = load_policy(ckpt)
    keys = lowdim_keys(base)
    obs_dim = sum(int(np.prod(base.shape_meta.obs[k].shape)) for k in keys)
    actor = ResidualActor(ActorConfig(obs_dim, 7, hidden=32, layers=2, scale=0.1))
    rp = ResidualPolicy(base, actor, str(ckpt), keys)

    def actions(agent_cls, policy):
        with make_rig("sim:lift") as rig:
            agent = agent_cls(policy, policy_features(base, rig), 1)
            ep = run_batched([rig], agent, [7], max_steps=20)[0]
        return ep.control["action"]

    plain = actions(PolicyAgent, base)
    resid = actions(ResidualAgent, rp)
    assert np.array_equal(plain, resid)  # exactly the base, not approximately

    # A non-zero last layer changes the actions, within the bound (scale x the normaliser's range).
    with torch.no_grad():
        actor.net[-1].bias.fill_(5.0)
    moved = actions(ResidualAgent, rp)
    assert not np.array_equal(plain, moved)
    span = base.normalizer.unnormalize("action", torch.ones(7)) - base.normalizer.unnormalize("action", torch.zeros(7))
    assert np.all(np.abs(moved[0] - plain[0]) <= 0.1 * np.abs(span.numpy()) + 1e-6)

    # Saved beside a reference to its base; a changed base is refused by hash.
    rp.save(tmp_path / "rl")
    again = load_residual(tmp_path / "rl")
    assert torch.equal(again.actor.net[-1].bias, actor.net[-1].bias)
    tiny_checkpoint(tmp_path / "base", seed=1)  # other weights at the same path
    with pytest.raises(UserError, match="not the one this residual was trained on"):
        load_residual(tmp_path / "rl")


# ---------------------------------------------------------------- n-step replay


def test_nstep_returns_across_episode_ends_and_interleaved_envs():
    gamma, n = 0.5, 3
    got: list[dict] = []
    c = NStepCollector(2, n, gamma, got.append)
    z = np.zeros(1, np.float32)

    def add(env, t, r, terminal=False, end=False):
        c.add(env, np.array([t], np.float32), z, z, r, np.array([t + 1], np.float32), z, terminal, end)

    # env 0: rewards 1,2,3,4 then truncated (bootstrap); env 1: 10, 20 then terminal; interleaved.
    add(0, 0, 1.0)
    add(1, 100, 10.0)
    add(0, 1, 2.0)
    add(1, 101, 20.0, terminal=True, end=True)
    add(0, 2, 3.0)
    add(0, 3, 4.0, end=True)
    by = {float(t["obs"][0]): t for t in got}
    assert sorted(by) == [0, 1, 2, 3, 100, 101]
    assert by[0]["reward"] == pytest.approx(1 + 0.5 * 2 + 0.25 * 3) and by[0]["discount"] == pytest.approx(0.125)
    assert by[0]["next_obs"][0] == 3  # the state n steps later
    # The last n-1 steps of a truncated episode bootstrap from its final state with fewer steps.
    assert by[1]["reward"] == pytest.approx(2 + 0.5 * 3 + 0.25 * 4) and by[1]["next_obs"][0] == 4
    assert by[2]["reward"] == pytest.approx(3 + 0.5 * 4) and by[2]["discount"] == pytest.approx(0.25)
    assert by[3]["reward"] == pytest.approx(4) and by[3]["discount"] == pytest.approx(0.5)
    # Terminal: no bootstrap, and env 1's sums never mix with env 0's rewards.
    assert by[100]["reward"] == pytest.approx(10 + 0.5 * 20) and by[100]["discount"] == 0.0
    assert by[101]["reward"] == pytest.approx(20) and by[101]["discount"] == 0.0
    # A new episode in env 0 starts a fresh window.
    add(0, 50, 7.0, terminal=True, end=True)
    assert got[-1]["reward"] == 7.0 and float(got[-1]["obs"][0]) == 50


def test_replay_mixes_demonstrations_half_and_half_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    online, demos = ReplayBuffer(100, 1, 1), ReplayBuffer(100, 1, 1)
    for i in range(30):
        t = {"obs": [i], "base": [0], "residual": [0], "reward": 0.0, "discount": 1.0, "next_obs": [i], "next_base": [0]}
        online.add(t)
        demos.add(t | {"reward": 1.0})
    batch = sample_mixed(online, demos, 64, 0.5, rng)
    assert batch["reward"].sum() == 32
    online.save(tmp_path / "r.npz")
    back = ReplayBuffer(100, 1, 1)
    back.load(tmp_path / "r.npz")
    assert len(back) == 30 and np.array_equal(back.data["obs"][:30], online.data["obs"][:30])


# ---------------------------------------------------------------- the critic, the actor


def test_demo_transitions_within_bound_keep_only_reachable_steps(tmp_path):
    """From a base far from the expert most demonstrated steps lie beyond the residual's reach: within_bound
    drops exactly those (every kept residual inside the bound, in order, a subset of all), and with a bound
    that reaches everything it keeps every step."""
    from robolearn.policies.checkpoint import load_policy
    from robolearn.record import RecordConfig, record
    from robolearn.rl.replay import demo_transitions

    store = tmp_path / "lift.zarr"
    record(RecordConfig(rig="sim:lift", out=str(store), episodes=1, seed=0, workers=1))
    policy = load_policy(tiny_checkpoint(tmp_path / "ck"))
    keys = lowdim_keys(policy)

    def residuals(scale: float, within: bool) -> np.ndarray:
        buf = demo_transitions(policy, keys, store, 3, 0.99, scale, within_bound=within)
        return buf.data["residual"][: len(buf)]

    gap = residuals(1e6, False)  # unclipped: demonstrated minus base action, normalised
    scale = float(np.median(np.abs(gap).max(axis=1)))  # about half the steps within reach
    every, kept = residuals(scale, False), residuals(scale, True)
    assert len(every) == len(gap) and 0 < len(kept) < len(every)
    assert np.all(np.abs(kept) <= scale + 1e-6)
    np.testing.assert_array_equal(kept, gap[np.abs(gap).max(axis=1) <= scale + 1e-6])  # those steps, in order
    assert len(residuals(1e6, True)) == len(gap)


def test_critic_learns_the_value_of_a_chain():
    """A 5-state chain walked left to right, reward 1 on reaching the end: Q(s) = gamma^(4-s)."""
    length, gamma = 5, 0.9
    cfg = _recipe(f"gamma={gamma}", "n_step=1", "critic.hidden=64", "actor.hidden=16", "critic.lr=3e-3", "tau=0.05")
    learner = ResidualLearner(cfg, length, 1)
    buf = ReplayBuffer(100, length, 1)
    c = NStepCollector(1, 1, gamma, buf.add)
    eye = np.eye(length, dtype=np.float32)
    z = np.zeros(1, np.float32)
    for s in range(length):
        last = s == length - 1
        c.add(0, eye[s], z, z, float(last), eye[min(s + 1, length - 1)], z, terminal=last, end=last)
    rng = np.random.default_rng(0)
    for _ in range(1500):
        learner.update(buf.sample(32, rng), train_actor=False)
    with torch.no_grad():
        q = learner.critic(torch.from_numpy(eye), torch.zeros(length, 1), torch.zeros(length, 1)).mean(0).numpy()
    want = gamma ** np.arange(length - 1, -1, -1)
    assert np.abs(q - want).max() < 0.05, (q, want)


@pytest.mark.parametrize("algo", ["td3", "sac"])
def test_residual_corrects_a_biased_base_on_a_toy_task(algo):
    """A point must reach |x| < 0.05; the base jumps to an offset point (bias 0.08 per axis) and stays
    there, so it never succeeds. The residual (bound 0.1) learns to cancel the bias."""
    cfg = _recipe("n_step=3", "gamma=0.95", "batch_size=128", "learning_starts=200", "critic_warmup=500",
                  "actor.hidden=64", "critic.hidden=64", "actor.scale=0.1", "explore_noise=0.5", "demos.ratio=0",
                  f"algo={algo}", "sac.init_alpha=0.01")
    learner = ResidualLearner(cfg, 2, 2)
    rng = np.random.default_rng(0)
    bias = np.array([0.08, -0.08], np.float32)
    buf = ReplayBuffer(20000, 2, 2)
    n_envs, horizon = 4, 25
    c = NStepCollector(n_envs, cfg.n_step, cfg.gamma, buf.add)

    def base(x):
        return np.clip(-x + bias, -1, 1).astype(np.float32)

    def episode_success(explore, x, envs=n_envs, learn=False):
        t = np.zeros(envs, int)
        succ = np.zeros(envs, bool)
        done = np.zeros(envs, bool)
        updates = 0
        while not done.all():
            idx = np.flatnonzero(~done)
            b = base(x[idx])
            res = learner.act(torch.from_numpy(x[idx]), torch.from_numpy(b), explore).numpy()
            x2 = x[idx] + b + res
            for row, i in enumerate(idx):
                t[i] += 1
                ok = bool(np.abs(x2[row]).max() < 0.05)
                end = ok or t[i] >= horizon
                if learn:
                    c.add(i, x[i].copy(), b[row], res[row], float(ok), x2[row], base(x2[row][None])[0], ok, end)
                x[i] = x2[row]
                succ[i] |= ok
                done[i] |= end
            if learn and len(buf) >= cfg.learning_starts:
                for _ in range(len(idx)):
                    updates += 1
                    learner.update(buf.sample(cfg.batch_size, rng), train_actor=updates % 2 == 0 and len(buf) > 500)
        return succ

    eval_x = np.random.default_rng(1).uniform(-1, 1, (50, 2)).astype(np.float32)
    before = episode_success(False, eval_x.copy(), envs=50).mean()
    for _ in range(60):
        episode_success(True, rng.uniform(-1, 1, (n_envs, 2)).astype(np.float32), learn=True)
    after = episode_success(False, eval_x.copy(), envs=50).mean()
    assert before == 0.0
    assert after >= 0.9, after


def test_actor_reg_pulls_an_unrewarded_residual_back_to_the_base():
    """Where no correction earns value (every reward 0), actor.reg shrinks the residual; without it the
    residual stays where the critic's noise leaves it."""
    rng = np.random.default_rng(0)
    batch = {"obs": rng.normal(size=(256, 3)), "base": rng.uniform(-1, 1, (256, 2)),
             "residual": rng.uniform(-0.1, 0.1, (256, 2)), "reward": np.zeros(256), "discount": np.full(256, 0.97),
             "next_obs": rng.normal(size=(256, 3)), "next_base": rng.uniform(-1, 1, (256, 2))}
    mags = {}
    for reg in (0.0, 1.0):
        torch.manual_seed(0)
        learner = ResidualLearner(_recipe("actor.hidden=32", "critic.hidden=32", f"actor.reg={reg}"), 3, 2)
        with torch.no_grad():  # start away from zero: a residual at half its bound
            learner.actor.net[-1].bias.fill_(0.55)
        o, b = torch.from_numpy(batch["obs"]).float(), torch.from_numpy(batch["base"]).float()
        for _ in range(300):
            logs = learner.update(batch, train_actor=True)
        with torch.no_grad():
            mags[reg] = float(learner.actor(o, b).abs().mean())
        assert ("residual_penalty" in logs) == (reg > 0)
    assert mags[1.0] < 0.01 < mags[0.0], mags


def test_demo_reg_pulls_the_residual_toward_the_demonstrated_correction_on_demo_rows_only():
    """actor.demo_reg: on the rows sample_mixed marks as demonstrations, the actor is pulled toward the
    demonstrated correction (demo - base); online rows are not. With a zero critic nothing else moves it."""
    rng = np.random.default_rng(0)
    online, demos = ReplayBuffer(512, 1, 1), ReplayBuffer(512, 1, 1)
    for _ in range(512):  # demonstrations at obs +1 corrected by +0.06, online data at obs -1 uncorrected
        t = {"reward": 0.0, "discount": 0.97, "base": [0.0], "next_base": [0.0]}
        demos.add(t | {"obs": [1.0], "next_obs": [1.0], "residual": [0.06]})
        online.add(t | {"obs": [-1.0], "next_obs": [-1.0], "residual": [0.0]})
    batch = sample_mixed(online, demos, 64, 0.25, rng)
    assert batch["demo"].tolist() == [1.0] * 16 + [0.0] * 48 and np.all(batch["obs"][:16] == 1.0)
    assert "demo" not in sample_mixed(online, None, 64, 0.5, rng)

    def run(demo_reg: float) -> tuple[float, float, dict]:
        torch.manual_seed(0)
        learner = ResidualLearner(_recipe("actor.hidden=16", "critic.hidden=16", "actor.scale=0.1",
                                          f"actor.demo_reg={demo_reg}", "actor.lr=3e-3"), 1, 1)
        with torch.no_grad():
            for p in [*learner.critic.parameters(), *learner.critic_t.parameters()]:
                p.zero_()
        for _ in range(300):
            logs = learner.update(sample_mixed(online, demos, 64, 0.25, rng), train_actor=True)
        with torch.no_grad():
            at = learner.actor(torch.tensor([[1.0], [-1.0]]), torch.zeros(2, 1))
        return float(at[0, 0]), float(at[1, 0]), logs

    demo_row, online_row, logs = run(1.0)
    assert abs(demo_row - 0.06) < 0.01 and "demo_pull" in logs, (demo_row, logs)
    assert demo_row - online_row > 0.03  # the pull acts where the demonstrations are, not everywhere
    assert run(0.0)[:2] == (0.0, 0.0)  # off: a zero critic leaves the zero-initialised actor at the base
    with pytest.raises(UserError, match=r"actor\.demo_reg"):
        _recipe("actor.demo_reg=-1")


def test_correlated_exploration_noise_keeps_its_std_and_persists():
    """AR(1) noise: the same per-tick std as white noise, lag-1 autocorrelation rho, so a push lasts;
    a reset env starts afresh while the others keep their state; rho 0 is white noise."""
    for corr in (0.0, 0.9):
        ex = ExploreNoise(4, 7, std=0.05, corr=corr, seed=0)
        x = torch.stack([ex.sample() for _ in range(20000)]).numpy()  # (T, envs, dims)
        assert abs(x.std() - 0.05) < 0.002, (corr, x.std())
        lag1 = np.mean([np.corrcoef(x[:-1, e, d], x[1:, e, d])[0, 1] for e in range(4) for d in range(7)])
        assert abs(lag1 - corr) < 0.03, (corr, lag1)
        # Over 10 ticks the summed noise grows ~10x the std when correlated, ~sqrt(10)x when white.
        s10 = x[: 20000 // 10 * 10].reshape(-1, 10, 4, 7).sum(1).std() / 0.05
        assert (s10 > 6.5) if corr else (2.6 < s10 < 3.7), (corr, s10)
    ex = ExploreNoise(2, 500, std=1.0, corr=0.99, seed=1)
    before = ex.sample()
    ex.reset(0)
    step = ex.sample() - 0.99 * before  # the innovation: std sqrt(1 - 0.99^2) = 0.14 where the push goes on
    assert float(step[1].std()) < 0.2 < 1.0 < float(step[0].std())  # env 1 continues, env 0 drew afresh
    with pytest.raises(ValueError, match="explore_corr"):
        ExploreNoise(1, 1, 0.1, 1.0)
    with pytest.raises(UserError, match="explore_corr"):  # the recipe says so at load time
        _recipe("explore_corr=1.0")


def test_per_dimension_bound_limits_each_dimension_and_travels_with_the_actor():
    """actor.dim_scale: the bound is scale x multiplier per action dimension, for the actor's output,
    explored and target actions and demo residuals, while the pull toward the base stays in units of
    scale; exploration noise may be per dimension; a wrong length or a non-positive entry is a config
    error naming the key."""
    cfg = _recipe("actor.hidden=16", "critic.hidden=16", "actor.scale=0.1", "actor.dim_scale=[1,3,0.5]",
                  "explore_noise=5.0")
    learner = ResidualLearner(cfg, 4, 3)
    bound = torch.tensor([0.1, 0.3, 0.05])
    assert torch.allclose(learner.scale, bound)
    with torch.no_grad():
        learner.actor.net[-1].bias.fill_(10.0)  # saturate: every output at its bound
    o, b = torch.randn(64, 4), torch.rand(64, 3) * 2 - 1
    assert torch.allclose(learner.actor(o, b), bound.expand(64, 3), atol=1e-6)
    explored = learner.act(o, b, explore=True)  # noise 5 x scale: clamped to each dimension's bound
    assert torch.all(explored.abs() <= bound + 1e-6) and torch.all(explored.abs().amax(0) > 0.9 * bound)
    # The pull toward the base is in units of actor.scale in every dimension: a wider bound is reach,
    # not a weaker pull (a saturated actor pays (bound / 0.1)^2 = 1, 9, 0.25).
    rng = np.random.default_rng(0)
    batch = {"obs": rng.normal(size=(32, 4)), "base": rng.uniform(-1, 1, (32, 3)), "residual": np.zeros((32, 3)),
             "reward": np.zeros(32), "discount": np.full(32, 0.97), "next_obs": rng.normal(size=(32, 4)),
             "next_base": rng.uniform(-1, 1, (32, 3))}
    assert learner.update(batch, train_actor=True)["residual_penalty"] == pytest.approx((1 + 9 + 0.25) / 3, rel=1e-4)
    ex = ExploreNoise(2, 3, cfg.explore_noise * learner.scale, corr=0.5, seed=0)
    x = torch.stack([ex.sample() for _ in range(5000)])
    assert torch.allclose(x.std((0, 1)), 5 * bound, rtol=0.08)
    # The bound travels in residual.json's actor config (saved as asdict, loaded as ActorConfig(**...)).
    meta = json.loads(json.dumps(asdict(learner.actor.cfg)))
    assert meta["scale"] == pytest.approx([0.1, 0.3, 0.05])
    assert torch.allclose(ResidualActor(ActorConfig(**meta)).bound, bound)
    with pytest.raises(UserError, match=r"actor\.dim_scale: 2 entries, but the base's actions have 3 dimensions"):
        ResidualLearner(_recipe("actor.dim_scale=[1,2]"), 4, 3)
    with pytest.raises(UserError, match=r"actor\.dim_scale=\[1,0,1\]: every entry must be > 0"):
        _recipe("actor.dim_scale=[1,0,1]")


def test_per_dimension_pull_weights_each_dimension_of_the_penalty():
    """actor.reg_dims: multipliers of reg per action dimension, applied to the penalty the actor pays
    (a 0 frees that dimension); a wrong length or a negative entry is a config error naming the key."""
    cfg = _recipe("actor.hidden=16", "critic.hidden=16", "actor.scale=0.1", "actor.dim_scale=[1,3,0.5]",
                  "actor.reg=0.1", "actor.reg_dims=[0,0.5,4]")
    learner = ResidualLearner(cfg, 4, 3)
    with torch.no_grad():
        learner.actor.net[-1].bias.fill_(10.0)  # saturate: (bound / scale)^2 = 1, 9, 0.25 per dimension
    rng = np.random.default_rng(0)
    batch = {"obs": rng.normal(size=(32, 4)), "base": rng.uniform(-1, 1, (32, 3)), "residual": np.zeros((32, 3)),
             "reward": np.zeros(32), "discount": np.full(32, 0.97), "next_obs": rng.normal(size=(32, 4)),
             "next_base": rng.uniform(-1, 1, (32, 3))}
    got = learner.update(batch, train_actor=True)["residual_penalty"]
    assert got == pytest.approx((0 * 1 + 0.5 * 9 + 4 * 0.25) / 3, rel=1e-4)
    # With a zero critic (zero Q, zero gradient) only the pull moves the actor: the freed dimension's own
    # output bias stays where it was, the others' shrink toward zero.
    flat = ResidualLearner(cfg, 4, 3)
    with torch.no_grad():
        for p in [*flat.critic.parameters(), *flat.critic_t.parameters()]:
            p.zero_()
        flat.actor.net[-1].bias.fill_(0.5)
    for _ in range(20):
        flat.update(batch, train_actor=True)
    bias = flat.actor.net[-1].bias.detach()
    assert float(bias[0]) == 0.5 and float(bias[1]) < 0.499 and float(bias[2]) < 0.499  # Adam: ~lr a step
    with pytest.raises(UserError, match=r"actor\.reg_dims: 2 entries, but the base's actions have 3 dimensions"):
        ResidualLearner(_recipe("actor.reg_dims=[1,2]"), 4, 3)
    with pytest.raises(UserError, match=r"actor\.reg_dims=\[1,-1,1\]: every entry must be >= 0"):
        _recipe("actor.reg_dims=[1,-1,1]")


def test_per_dimension_exploration_scales_each_dimensions_noise():
    """explore_dims: multipliers of explore_noise per action dimension, for white and correlated noise
    alike, still clamped to each dimension's bound; empty is the old scalar noise draw for draw; a wrong
    length or a negative entry is a config error naming the key."""
    cfg = _recipe("actor.hidden=16", "critic.hidden=16", "actor.scale=0.1", "actor.dim_scale=[1,1,12]",
                  "explore_noise=0.5", "explore_dims=[1,0,6]")
    learner = ResidualLearner(cfg, 4, 3)
    std = torch.tensor([0.05, 0.0, 0.3])
    assert torch.allclose(learner.explore_std, std)
    o, b = torch.randn(20000, 4), torch.rand(20000, 3) * 2 - 1
    x = learner.act(o, b, explore=True)  # zero-initialised actor: the noise alone, within the bound
    assert torch.allclose(x.std(0), std, atol=0.01) and float(x[:, 1].abs().max()) == 0.0
    ex = ExploreNoise(2, 3, learner.explore_std, corr=0.5, seed=0)
    assert torch.allclose(torch.stack([ex.sample() for _ in range(5000)]).std((0, 1)), std, atol=0.01)
    plain, same = ResidualLearner(_recipe("actor.hidden=16", "critic.hidden=16"), 4, 3), \
        ResidualLearner(_recipe("actor.hidden=16", "critic.hidden=16", "explore_dims=[1,1,1]"), 4, 3)
    assert torch.equal(plain.act(o[:8], b[:8], explore=True), same.act(o[:8], b[:8], explore=True))
    with pytest.raises(UserError, match=r"explore_dims: 2 entries, but the base's actions have 3 dimensions"):
        ResidualLearner(_recipe("explore_dims=[1,2]"), 4, 3)
    with pytest.raises(UserError, match=r"explore_dims=\[1,-1,1\]: every entry must be >= 0"):
        _recipe("explore_dims=[1,-1,1]")


def test_actor_ema_averages_the_online_actor_and_is_what_is_deployed():
    """actor.ema: after every actor step the averaged actor moves a fraction ema of the way to the online
    one (recomputed here from the online weights step by step); it is the deployed actor, is saved and
    restored with the learner's state; with ema 0 the online actor is deployed and nothing is averaged."""
    rng = np.random.default_rng(0)
    batch = {"obs": rng.normal(size=(64, 3)), "base": rng.uniform(-1, 1, (64, 2)),
             "residual": rng.uniform(-0.1, 0.1, (64, 2)), "reward": rng.normal(size=64),
             "discount": np.full(64, 0.97), "next_obs": rng.normal(size=(64, 3)),
             "next_base": rng.uniform(-1, 1, (64, 2))}
    torch.manual_seed(0)
    learner = ResidualLearner(_recipe("actor.hidden=16", "critic.hidden=16", "actor.ema=0.2"), 3, 2)
    assert learner.deployed is learner.actor_ema
    expect = {k: v.clone() for k, v in learner.actor.state_dict().items()}
    for i in range(12):
        train_actor = i % 2 == 1
        learner.update(batch, train_actor=train_actor)
        if train_actor:
            now = learner.actor.state_dict()
            expect = {k: e + 0.2 * (now[k] - e) for k, e in expect.items()}
    got, online = learner.actor_ema.state_dict(), learner.actor.state_dict()
    for k in expect:
        assert torch.allclose(got[k], expect[k], atol=1e-6), k
    assert any(not torch.allclose(got[k], online[k]) for k in got), "the average lags the online actor"
    assert not any(p.requires_grad for p in learner.actor_ema.parameters())
    again = ResidualLearner(_recipe("actor.hidden=16", "critic.hidden=16", "actor.ema=0.2"), 3, 2)
    again.load_state_dict(learner.state_dict())
    assert all(torch.equal(again.actor_ema.state_dict()[k], got[k]) for k in got)
    plain = ResidualLearner(_recipe("actor.hidden=16", "critic.hidden=16"), 3, 2)
    assert plain.actor_ema is None and plain.deployed is plain.actor and "actor_ema" not in plain.state_dict()
    with pytest.raises(UserError, match=r"actor.ema"):
        _recipe("actor.ema=1.0")


def test_critic_reads_the_residual_in_units_of_the_scale_and_learns_its_slope():
    """critic.residual_unit: the critics see residual / actor.scale. It is the same network on a scaled
    input (not saved: old states load), and it learns Q's slope in the residual (what the TD3 actor
    climbs) where raw ~0.1-sized inputs leave it to the slowest-learning weights."""
    def learner(unit: bool, seed: int) -> ResidualLearner:
        torch.manual_seed(seed)
        return ResidualLearner(_recipe("actor.hidden=16", "critic.hidden=64", "actor.scale=0.1",
                                       f"critic.residual_unit={str(unit).lower()}", f"seed={seed}"), 6, 3)

    raw, scaled = learner(False, 0), learner(True, 0)
    assert "residual_gain" not in scaled.critic.state_dict()
    scaled.critic.load_state_dict(raw.critic.state_dict())
    o, b, r = torch.randn(8, 6), torch.rand(8, 3) * 2 - 1, (torch.rand(8, 3) * 2 - 1) * 0.1
    assert torch.allclose(scaled.critic(o, b, r), raw.critic(o, b, r * 10), atol=1e-6)

    def slope_after_training(unit: bool, seed: int) -> float:
        lrn, rng = learner(unit, seed), np.random.default_rng(seed)

        def batch(n: int) -> dict[str, np.ndarray]:  # one-step targets: Q = tanh(obs_0) + residual_0 / 0.1
            o, res = rng.normal(size=(n, 6)), rng.uniform(-0.1, 0.1, (n, 3))
            b = rng.uniform(-1, 1, (n, 3))
            return {"obs": o, "base": b, "residual": res, "reward": np.tanh(o[:, 0]) + res[:, 0] / 0.1,
                    "discount": np.zeros(n), "next_obs": o, "next_base": b}

        for _ in range(300):
            lrn.update(batch(256), train_actor=False)
        t = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in batch(2000).items()}
        step = torch.zeros(3)
        step[0] = 0.01
        with torch.no_grad():
            dq = lrn.critic(t["obs"], t["base"], t["residual"] + step) - lrn.critic(t["obs"], t["base"], t["residual"])
        return float(dq.mean() / 0.01)  # the true slope is 10

    for seed in (0, 1):
        s_raw, s_unit = slope_after_training(False, seed), slope_after_training(True, seed)
        assert s_unit > 7.5 and s_raw < 0.6 * s_unit, (s_raw, s_unit)  # measured: ~2-3 vs ~9


def test_bf16_learner_matches_fp32_and_keeps_fp32_state():
    """mixed_precision=bf16: autocast passes, fp32 weights and optimiser state; from the same init and
    batches it tracks the fp32 learner's losses and learns the same toy Q (a TD3 actor step included)."""
    def learner(mp: str) -> ResidualLearner:
        torch.manual_seed(0)
        return ResidualLearner(_recipe("actor.hidden=32", "critic.hidden=64", "critic.n=4", "actor.reg=0.1",
                                       f"mixed_precision={mp}"), 6, 3)

    def batch(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:  # one step: Q = tanh(obs_0) + 5 res_0
        o, res, b = rng.normal(size=(n, 6)), rng.uniform(-0.1, 0.1, (n, 3)), rng.uniform(-1, 1, (n, 3))
        return {"obs": o, "base": b, "residual": res, "reward": np.tanh(o[:, 0]) + 5 * res[:, 0],
                "discount": np.zeros(n), "next_obs": o, "next_base": b}

    runs = {}
    for mp in ("no", "bf16"):
        lrn, rng = learner(mp), np.random.default_rng(0)
        losses = [lrn.update(batch(rng, 256), train_actor=i % 2 == 1)["critic_loss"] for i in range(300)]
        assert all(p.dtype == torch.float32 for p in [*lrn.critic.parameters(), *lrn.actor.parameters()])
        assert all(v.dtype == torch.float32 for st in lrn.opt_c.state.values() for v in st.values()
                   if torch.is_tensor(v) and v.is_floating_point())
        t = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in batch(np.random.default_rng(9), 2000).items()}
        with torch.no_grad():
            q = lrn.critic(t["obs"], t["base"], t["residual"]).mean(0)
            res = lrn.actor(t["obs"], t["base"])
        runs[mp] = (np.array(losses), float((q - t["reward"]).pow(2).mean()), float(res[:, 0].mean()))
    (l32, e32, r32), (l16, e16, r16) = runs["no"], runs["bf16"]
    assert abs(l16[0] - l32[0]) < 0.02 * l32[0]  # the first step: the same network, bf16 rounding only
    assert l16[-50:].mean() < 0.2 * l16[:10].mean(), (l16[:10].mean(), l16[-50:].mean())  # measured: 2.1 -> 0.28
    assert e16 < 0.1 and e16 < 1.5 * e32 + 0.01, (e32, e16)  # held-out error, measured: 0.063 for both
    assert r32 > 0 and r16 > 0  # both actors climb Q's slope in residual_0 (against the pull)


def test_env_pool_steps_async_like_in_lockstep():
    """step_async + step_wait returns what step does, with work done in between; one step at a time."""
    from robolearn.rl.envs import EnvPool

    a = np.zeros(7, np.float32)
    a[0] = 0.5
    got = []
    with EnvPool("lift", 2, workers=1, max_steps=5) as pool:  # one worker process for both passes
        for overlap in (False, True):
            pool.reset({0: 3, 1: 4})
            for _ in range(3):
                if overlap:
                    pool.step_async({0: a, 1: -a})
                    with pytest.raises(RuntimeError, match="in flight"):
                        pool.step_async({0: a})
                    r = pool.step_wait()
                else:
                    r = pool.step({0: a, 1: -a})
            got.append(r)
        # A worker killed mid-run (OOM killer, a crash in the simulator) fails the next step at once,
        # naming the worker and its exit, instead of hanging until the no-progress timeout.
        os.kill(pool.procs[0].pid, signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match=r"RL env worker 0 \(pid \d+\) died \(exit code -9\)"):
            pool.step({0: a, 1: -a})
        assert time.monotonic() - t0 < 10
    for i in (0, 1):
        np.testing.assert_array_equal(got[0][i][0]["robot0_eef_pos"], got[1][i][0]["robot0_eef_pos"])
        assert got[0][i][1:] == got[1][i][1:]


# ---------------------------------------------------------------- robolearn finetune end to end


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def test_finetune_end_to_end_on_lift_resumes_and_evaluates(tmp_path):
    from robolearn.policies.train import load_recipe, train
    from robolearn.record import RecordConfig, record
    from robolearn.rl import finetune

    store = tmp_path / "lift.zarr"
    record(RecordConfig(rig="sim:lift", out=str(store), episodes=2, seed=0, workers=1))
    recipe = load_recipe("meanflow_lowdim", ["policy.unet.down_dims=[16,32]", "train.steps=20", "train.batch_size=32",
                                             "train.warmup_steps=0", "data.val_ratio=0.0", "train.num_workers=0"])
    train(recipe, store, tmp_path / "base", progress=False)
    small = ["env.n_envs=2", "env.workers=1", "env.max_steps=20", "eval.episodes=2", "eval.every=40",
             "learning_starts=20", "critic_warmup=30", "batch_size=16", "actor.hidden=32", "critic.hidden=32",
             "ckpt_every=20", "log_every=10", "explore_corr=0.8", "actor.ema=0.05", "eval.compare_online=true"]
    rows = []
    out = finetune(tmp_path / "base", "sim:lift", tmp_path / "rl", steps=60, overrides=small, progress=False,
                   on_eval=rows.append)
    assert out["env_steps"] == 60 and out["updates"] > 0 and out["demo_transitions"] > 0
    assert [r["env_steps"] for r in rows] == [0, 40, 60]
    assert rows[0]["success"] == rows[0]["base_success"] == rows[0]["success_online"]
    assert all(0 <= r["success_online"] <= 1 for r in rows)  # the online actor, beside the averaged one
    assert (tmp_path / "rl" / "checkpoints" / "last" / "residual.json").is_file()
    assert list((tmp_path / "rl" / "tb").iterdir())
    state = torch.load(tmp_path / "rl" / "state.pt", weights_only=False)
    assert state["progress"]["env_steps"] == 60
    # With actor.ema the checkpoint holds the averaged actor, not the online one.
    saved_actor = load_residual(tmp_path / "rl" / "checkpoints" / "last").actor.state_dict()
    ema, online = state["learner"]["actor_ema"], state["learner"]["actor"]
    assert all(torch.equal(saved_actor[k], ema[k]) for k in ema)
    assert any(not torch.equal(ema[k], online[k]) for k in ema)
    # Every evaluated residual is kept; the last evaluation's is the final state's.
    kept = sorted(p.name for p in (tmp_path / "rl" / "checkpoints").iterdir() if p.name != "last")
    assert kept == ["step_0000000", "step_0000040", "step_0000060"]
    at60 = load_residual(tmp_path / "rl" / "checkpoints" / "step_0000060").actor.state_dict()
    assert all(torch.equal(at60[k], saved_actor[k]) for k in at60)

    # Killed mid-run (SIGKILL), the same command resumes from the last saved state: networks, optimisers
    # and replay buffer, in another number of env processes.
    cmd = [sys.executable, "-m", "robolearn", "finetune", "--policy", str(tmp_path / "base"), "--rig", "sim:lift",
           "--steps", "100000", "--out", str(tmp_path / "rl"), "--quiet", *small, "env.workers=0"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    saved = state
    try:
        deadline = time.monotonic() + 240
        while saved["progress"]["env_steps"] < 100 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            saved = torch.load(tmp_path / "rl" / "state.pt", weights_only=False)
    finally:
        proc.kill()
        proc.wait()
    assert saved["progress"]["env_steps"] >= 100, proc.stderr.read().decode()[-2000:]
    saved = torch.load(tmp_path / "rl" / "state.pt", weights_only=False)
    at = saved["progress"]["env_steps"]
    assert saved["progress"]["recent_success"], "the recent-episode window is saved for the resume"
    replay_at = int(np.load(tmp_path / "rl" / "replay.npz")["size"])
    out2 = finetune(tmp_path / "base", "sim:lift", tmp_path / "rl", steps=at + 20, overrides=small, progress=False)
    assert out2["env_steps"] == at + 20 and out2["updates"] > saved["progress"]["updates"]
    assert int(np.load(tmp_path / "rl" / "replay.npz")["size"]) > replay_at
    # Asked again for the same step count, nothing runs; the whole-run rate still reads true.
    out3 = finetune(tmp_path / "base", "sim:lift", tmp_path / "rl", steps=at + 20, overrides=small, progress=False)
    assert out3["env_steps"] == at + 20 and out3["env_steps_per_s"] == 0
    assert 0 < out3["env_steps_per_s_overall"] <= out2["env_steps_per_s_overall"]
    with pytest.raises(UserError, match="another recipe"):
        finetune(tmp_path / "base", "sim:lift", tmp_path / "rl", steps=100, overrides=[*small, "actor.scale=0.2"],
                 progress=False)

    # `robolearn eval` runs the fine-tuned run like any other policy.
    r = subprocess.run([sys.executable, "-m", "robolearn", "eval", "--policy", str(tmp_path / "rl"), "--task", "lift",
                        "--episodes", "2", "--workers", "1", "--max-steps", "20", "--videos", "0",
                        "--out", str(tmp_path / "ev")], env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert rep["results"][0]["policy_type"].startswith("residual+") and rep["results"][0]["episodes"] == 2


def test_finetune_cli_mistakes_are_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "robolearn", "finetune", "--policy", str(tmp_path / "nope"),
                        "--rig", "sim:lift", "--steps", "10", "--out", str(tmp_path / "o"), "algo=ppo"],
                       env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "algo" in r.stderr and "Traceback" not in r.stderr
    # sim:TASK needs --steps; a robot run refuses the dense reward (the operator marks success there).
    r = subprocess.run([sys.executable, "-m", "robolearn", "finetune", "--policy", str(tmp_path / "nope"),
                        "--rig", "sim:lift", "--out", str(tmp_path / "o")],
                       env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--steps N" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "robolearn", "finetune", "--policy", str(tmp_path / "nope"),
                        "--rig", "hardware/sim_twin.yaml", "--episodes", "1", "--reward", "x", "--out", str(tmp_path / "o")],
                       env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--reward" in r.stderr.splitlines()[-1] and "Traceback" not in r.stderr


def test_finetune_restarts_a_run_that_died_before_its_first_save_and_keeps_others(tmp_path):
    """A run killed after its step-0 evaluation but before its first state save left recipe.yaml,
    curve.jsonl and that evaluation's checkpoint: the same command starts afresh. A folder holding a
    later evaluation's checkpoint but no state is someone's results: refused, nothing touched."""
    from robolearn.rl import finetune

    base = tiny_checkpoint(tmp_path / "base")
    small = ["env.n_envs=1", "env.workers=0", "env.max_steps=5", "eval.episodes=1", "eval.every=100",
             "learning_starts=100", "actor.hidden=16", "critic.hidden=16", "demos.ratio=0"]
    died = tmp_path / "died"
    (died / "checkpoints" / "step_0000000").mkdir(parents=True)
    (died / "curve.jsonl").write_text('{"env_steps": 0, "success": 0.0}\n')
    out = finetune(base, "sim:lift", died, steps=3, overrides=small, progress=False)
    assert out["env_steps"] == 3 and (died / "state.pt").is_file()
    assert [json.loads(line)["env_steps"] for line in (died / "curve.jsonl").read_text().splitlines()] == [0, 3]
    other = tmp_path / "other"
    (other / "checkpoints" / "step_0025000").mkdir(parents=True)
    with pytest.raises(UserError, match="not empty and holds no fine-tuning state"):
        finetune(base, "sim:lift", other, steps=3, overrides=small, progress=False)
    assert (other / "checkpoints" / "step_0025000").is_dir()
