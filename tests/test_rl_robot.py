"""On-robot residual RL (robolearn/rl/robot.py, robolearn/rl/learner.py): the deployment loop as the actor,
``robolearn learner`` as a separate process on loopback ZeroMQ, a scripted teleoperator taking over.

The twin test runs through every real process of a robot (arm controller, twin world, camera
processes); the crash test kills a real actor process (SIGKILL) mid-episode on sim:lift and checks that
the next start commits its journal to the store and hands it to the learner.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from eval_helpers import tiny_checkpoint

from robolearn.data.store import DemoStore
from robolearn.deploy.loop import DeployConfig, DeployStop
from robolearn.rl.robot import Journal, finetune_robot
from robolearn.teleop.expert import ExpertTeleop

pytestmark = pytest.mark.realtime  # has the CPU alone under xdist (conftest.py)

ROOT = Path(__file__).resolve().parents[1]
# A tiny learner that updates from the first episode on.
RECIPE = ["learning_starts=8", "batch_size=16", "critic_warmup=0", "policy_delay=1", "utd=2", "actor.hidden=32",
          "critic.hidden=32", "demos.ratio=0.5", "actor.scale=0.2"]


class Intervener(ExpertTeleop):
    """The sim expert's hands, taking over on ticks 40-54 of every episode; keeps what it commanded. Long
    enough that some of its ticks have a base action even on a loaded machine: with both cores busy the
    loop held (no fresh base chunk) for ~10 ticks around a takeover, and a held tick is no transition."""

    def reset(self, seed=None):  # noqa: ANN001, ANN201
        super().reset(seed)
        self.tick = -1
        self.commanded: dict[int, np.ndarray] = {}

    def act(self, observation):  # noqa: ANN001, ANN201
        action, _ = super().act(observation)
        self.tick += 1
        if 40 <= self.tick <= 54:
            self.commanded[self.tick] = np.asarray(action, np.float32)
            return action, True
        return action, False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _learner(ckpt: Path, out: Path, extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "robolearn", "learner", "--policy", str(ckpt), "--out", str(out),
                             "--bind", endpoint, *RECIPE, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    line = proc.stdout.readline()
    assert b"listening on" in line, proc.stderr.read()
    return proc, endpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("rl_robot") / "ck")


@pytest.fixture(scope="module")
def twin_dir(tmp_path_factory):
    from helpers import twin_playback_dir

    d = tmp_path_factory.mktemp("twin")
    twin_playback_dir(d, frames=30)
    return d


def test_on_robot_rl_on_the_twin_with_interventions_and_a_learner_process(ckpt, twin_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(twin_dir)
    run = tmp_path / "run"
    proc, endpoint = _learner(ckpt, run)
    teleops = []
    try:
        teleop = Intervener()
        orig_reset = teleop.reset

        def reset(seed=None):  # noqa: ANN001, ANN202
            orig_reset(seed)
            teleops.append(dict(teleop.commanded))

        teleop.reset = reset

        def kill_in_third_episode() -> None:  # the learner goes away as episode 3 starts
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if len(teleops) == 3:  # the third reset: its first ticks are under way
                    break
                time.sleep(0.01)
            proc.kill()

        threading.Thread(target=kill_in_third_episode, daemon=True).start()
        # The arm stops with one line; the episode in flight is still stored.
        with pytest.raises(DeployStop, match=r"^learner tcp://127\.0\.0\.1:\d+ gave no answer for .* arm stopped$"):
            finetune_robot("hardware/sim_twin.yaml", str(ckpt), run, episodes=3, learner=endpoint, teleop=teleop,
                           overrides=RECIPE, cfg=DeployConfig(max_steps=60), timeout_s=1.5)
        commanded = teleops[1:]  # each episode's, captured at the next reset
        store = DemoStore.open(run / "rollouts.zarr")
        assert store.n_episodes == 3
        assert store.episode_info(2).notes["stop_reason"].startswith("learner tcp://")
        # What the learner had after episode 2 (it saves at every episode's end).
        st = torch.load(run / "state.pt", weights_only=False)["progress"]
        transitions = interventions = 0
        per_episode = []
        for ep in range(2):
            info = store.episode_info(ep)
            assert info.source == "policy" and info.notes["rl_uid"]
            flags, _ = store.read_column("intervention", ep)
            held, _ = store.read_column("held", ep)  # no base action yet (the first chunk on its way)
            actions = store.read("action", ep)
            assert np.flatnonzero(flags).tolist() == list(range(40, 55))
            for t, a in commanded[ep].items():  # the operator's own action went to the arm (within the limits)
                np.testing.assert_allclose(actions[t], np.clip(a, -1, 1), atol=1e-6)
            res_col, prov = store.read_column("residual", ep)
            assert prov["scale"] == pytest.approx(0.2) and np.all(res_col <= 0.2 + 1e-6)
            assert np.all(res_col[flags > 0] == 0) and np.any(res_col[(flags == 0) & (held == 0)] > 0)  # exploring
            # A transition is a tick with a base action: the residual is measured against it.
            transitions += int(np.sum(held == 0))
            per_episode.append(int(np.sum(held == 0)))
            interventions += int(np.sum((held == 0) & (flags > 0)))
        # Every executed tick reached the learner; the interventions went to its demonstration side too.
        assert st["env_steps"] == transitions and st["episodes"] == 2
        assert st["interventions"] == interventions >= 1
        # utd=2 updates per tick: those owed for episode 1 were done before episode 2 ended (the state saved then).
        assert 2 * per_episode[0] <= st["updates"] <= 2 * transitions and st["version"] >= 1
        # The first episode ran the zero residual; the second, weights the first taught.
        assert store.episode_info(0).notes["residual_versions"] == [0]
        assert max(store.episode_info(1).notes["residual_versions"]) >= 1
    finally:
        proc.kill()
        proc.wait()


def test_a_killed_actor_loses_nothing_and_an_untrained_residual_is_the_base(ckpt, tmp_path):
    """SIGKILL of the actor mid-episode: the next start commits the journal to the store and hands it to the
    learner. The learner here never updates, so the next episode (no exploration) is the base bit for bit."""
    from robolearn.policies.checkpoint import load_policy

    run = tmp_path / "run"
    proc, endpoint = _learner(ckpt, run, ("learning_starts=100000",))
    try:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        actor = subprocess.Popen([sys.executable, "-m", "robolearn", "finetune", "--rig", "sim:lift", "--policy",
                                  str(ckpt), "--out", str(run), "--episodes", "50", "--learner", endpoint, *RECIPE],
                                 stderr=subprocess.PIPE, env=env)
        deadline = time.monotonic() + 120
        journal = None
        while time.monotonic() < deadline:
            found = sorted((run / "journal").glob("*.ticks")) if (run / "journal").is_dir() else []
            if found and found[-1].stat().st_size > 4000:
                journal = found[-1]
                break
            time.sleep(0.02)
        assert journal is not None, actor.stderr.read() if actor.poll() is not None else "no journal"
        actor.send_signal(signal.SIGKILL)
        actor.wait()
        header, rows = Journal.read(journal)
        n = len(rows["reward"])
        assert n > 0
        before = DemoStore.open(run / "rollouts.zarr").n_episodes if (run / "rollouts.zarr").exists() else 0
        res = finetune_robot("sim:lift", str(ckpt), run, episodes=1, learner=endpoint, overrides=RECIPE,
                             cfg=DeployConfig(max_steps=12, inference_s=0.0), explore=False)
        assert len(res["recovered"]) == 1 and not journal.exists()
        store = DemoStore.open(run / "rollouts.zarr")
        assert store.n_episodes == before + 2
        rec = store.episode_info(res["recovered"][0])
        assert rec.notes["recovered"] and rec.notes["rl_uid"] == header["uid"]
        data = store.read_episode(res["recovered"][0], keys=["action", "robot0_eef_pos"])
        np.testing.assert_array_equal(data["action"], rows["action"].astype(np.float32))
        np.testing.assert_array_equal(data["robot0_eef_pos"], rows["robot0_eef_pos"].astype(np.float32))
        # The learner took the recovered episode once, even though it had seen some of its ticks live.
        assert res["learner_stats"]["episodes"] == before + 2 and res["learner_stats"]["updates"] == 0
        new = res["store_episodes"][0]
        acts, chunks = store.read("action", new), store.read("proposed_chunk", new)
        n = load_policy(ckpt).n_action_steps  # the first chunk runs until the next one takes over
        np.testing.assert_array_equal(acts[:n], chunks[0][:n])  # bit for bit: the residual starts at zero
        assert np.all(store.read_column("residual", new)[0] == 0)
    finally:
        proc.kill()
        proc.wait()
