"""The policy side of the rollout loop: observation history and chunk execution (`PolicyAgent`),
built from the training loader's own conversion, on the real simulated rig."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from eval_helpers import tiny_checkpoint

from robolearn.data.dataset import WindowDataset
from robolearn.data.store import DemoStore
from robolearn.policies import load_policy
from robolearn.record import RecordConfig, record
from robolearn.rigs import make_rig
from robolearn.rollout import PolicyAgent, PolicyController, policy_features, run_batched, run_episode

KEYS = ["robot0_eef_pos", "robot0_gripper_qpos", "object", "agentview_image", "agentview_depth"]
N_OBS, HORIZON, N_ACT = 2, 8, 4


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One expert lift episode with a 32x32 camera and depth, written by `record`."""
    out = tmp_path_factory.mktemp("rollout") / "lift.zarr"
    record(RecordConfig(rig="sim:lift", out=str(out), episodes=1, workers=1, cameras=["agentview"],
                        image_size=32, depth=True, seed=3))
    return DemoStore.open(out)


class ReplayPolicy:
    """Stands in for the policy only (the history and conversion are what is tested): returns the
    recorded actions as chunks and keeps every input it is given."""

    def __init__(self, actions: np.ndarray, features: dict) -> None:
        self.actions = torch.from_numpy(actions)
        self.n_obs_steps, self.horizon, self.n_action_steps = N_OBS, HORIZON, N_ACT
        self.action_dim = actions.shape[1]
        self.obs_keys = list(features)
        self.shape_meta = type("Meta", (), {"obs": features})()
        self.inputs: list[dict[str, torch.Tensor]] = []
        self.tick = 0

    def predict_action(self, obs, noise=None, generator=None):
        self.inputs.append({k: v.clone() for k, v in obs.items()})
        # chunk index n_obs_steps - 1 is "now": place the next recorded actions there
        idx = np.clip(np.arange(HORIZON) - (N_OBS - 1) + self.tick, 0, len(self.actions) - 1)
        self.tick += N_ACT
        return self.actions[idx][None]

    def executable_actions(self, chunk):
        return chunk[:, N_OBS - 1 : N_OBS - 1 + N_ACT]


@pytest.mark.parametrize("defer_cameras", [True, False], ids=["deferred-cameras", "live-cameras"])
def test_rollout_feeds_the_policy_exactly_what_training_does(store, defer_cameras):
    """Replay a recorded episode through the rollout loop: at every policy call its input equals,
    bit for bit, the training window of that tick (uint8 images, depth in metres, padding)."""
    ds = WindowDataset(store, KEYS, n_obs_steps=N_OBS, horizon=HORIZON, n_action_steps=N_ACT, split="all")
    info = store.episode_info(0)
    actions = store.read_episode(0, ["action"])["action"]
    rig = make_rig("sim:lift", cameras=["agentview"], image_size=32, depth=True, defer_cameras=defer_cameras)
    try:
        feats = {k: f for s in (rig.features, rig.deferred_streams) for keys in s.values()
                 for k, f in keys.items() if k in KEYS}
        policy = ReplayPolicy(actions, {k: feats[k] for k in KEYS})
        ctrl = PolicyController(policy, rig)
        ep = run_episode(rig, ctrl, seed=info.seed, max_steps=len(actions), hold_steps=5)
    finally:
        rig.close()
    assert ep.steps == len(actions) and ep.success  # the replay is the recorded episode
    np.testing.assert_array_equal(ep.control["action"], actions)
    ticks = range(0, len(actions), N_ACT)
    assert len(policy.inputs) == len(ticks)
    compared = 0
    for tick, got in zip(ticks, policy.inputs, strict=True):
        if tick >= len(ds):
            continue
        want = ds.__getitems__([tick])["obs"]
        for k in KEYS:
            assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
            assert torch.equal(got[k], want[k]), f"{k} differs at tick {tick}"
        compared += 1
    assert compared >= 5 and policy.inputs[0]["agentview_image"].dtype == torch.uint8
    assert torch.equal(policy.inputs[0]["agentview_image"][0, 0], policy.inputs[0]["agentview_image"][0, 1])


def test_batched_agent_acts_as_one_env_per_episode(tmp_path):
    """Several rigs in one process, one policy call per chunk boundary: every episode gets the actions
    it would get alone (per-episode generators), and envs take the next seed as they finish."""
    torch.set_num_threads(1)
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    policy = load_policy(ckpt)
    seeds, steps = [11, 12, 13], 10
    rigs = [make_rig("sim:lift") for _ in range(2)]
    try:
        agent = PolicyAgent(policy, policy_features(policy, rigs[0]), n_envs=2)
        batched = {ep.seed: ep for ep in run_batched(rigs, agent, seeds, max_steps=steps)}
        alone = {s: run_episode(rigs[0], PolicyController(policy, rigs[0]), seed=s, max_steps=steps) for s in seeds}
    finally:
        for r in rigs:
            r.close()
    assert sorted(batched) == seeds
    # 3 episodes of 10 ticks with chunks of 4 on 2 envs: calls at ticks 0, 4, 8 served both envs at first
    assert max(c.batch for c in agent.calls) == 2 and sum(c.batch for c in agent.calls) == 9
    for s in seeds:
        assert batched[s].steps == steps
        np.testing.assert_allclose(batched[s].control["action"], alone[s].control["action"], atol=1e-5)
    assert not np.allclose(alone[11].control["action"], alone[12].control["action"])


def test_policy_that_reads_what_the_rig_lacks_is_refused(tmp_path):
    policy = load_policy(tiny_checkpoint(tmp_path / "ckpt", cameras=("agentview",), size=32))
    rig = make_rig("sim:lift", cameras=["agentview"], image_size=48, defer_cameras=True)
    try:
        with pytest.raises(ValueError, match=r"'agentview_image' as rgb \[32, 32, 3\].*gives rgb \[48, 48, 3\]"):
            policy_features(policy, rig)
    finally:
        rig.close()
    rig = make_rig("sim:lift")
    try:
        with pytest.raises(ValueError, match="reads 'agentview_image', which rig sim:lift does not observe"):
            policy_features(policy, rig)
    finally:
        rig.close()
