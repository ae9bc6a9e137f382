"""`robolearn deploy`, `serve` and `calibrate latency` (robolearn/deploy).

Simulated rigs run the deployment loop on the virtual clock (injected latencies in whole ticks); the
sim twin (`hardware/sim_twin.yaml`) runs it on the wall clock through the real processes: arm
controller, twin world, camera processes, and a policy server (`robolearn serve`) on loopback.
Policies are tiny untrained checkpoints: these tests check the loop's timing, not task success
(`benchmarks/bench_deploy.py` measures success with a trained policy).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from eval_helpers import tiny_checkpoint

from robolearn.data.store import DemoStore
from robolearn.deploy.calibrate import estimate_lag, excitation, measure_latency, write_latency
from robolearn.deploy.inference import InferenceError, RemoteInference
from robolearn.deploy.loop import DeployConfig, DeployLoop, DeployStop
from robolearn.deploy.run import deploy, make_backend, make_deploy_rig, write_rollout
from robolearn.policies.checkpoint import load_policy, save_checkpoint
from robolearn.rigs import make_rig
from robolearn.rigs.delayed import DelayedRig
from robolearn.rollout import PolicyAgent, policy_features, run_batched

pytestmark = pytest.mark.realtime  # has the CPU alone under xdist (conftest.py)

ROOT = Path(__file__).resolve().parents[1]
SEEDS = [1_000_000, 1_000_001]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("deploy_ckpt") / "ck")


@pytest.fixture(scope="module")
def backend(ckpt):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    b, info, close = make_backend(str(ckpt))
    yield b, info
    close()
    torch.set_num_threads(n)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server(ckpt: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "robolearn", "serve", "--policy", str(ckpt), "--bind",
                             f"tcp://127.0.0.1:{port}", "--device", "cpu", "--threads", "1"],
                            stderr=subprocess.PIPE, text=True, env=env)
    return proc, f"tcp://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def sim_rig():
    rig = make_rig("sim:lift")
    yield rig
    rig.close()


def _run(rig, backend, cfg, seed=SEEDS[0]):
    """One episode on the shared simulated rig, with cfg's injected latency."""
    b, info = backend
    return DeployLoop(DelayedRig(rig, cfg.inject_obs_latency_s, cfg.inject_action_latency_s), b, info,
                      cfg).run_episode(seed)


# ---------------------------------------------------------------- simulation, virtual clock


def test_zero_latency_reproduces_the_eval_loop(ckpt, backend, sim_rig):
    """No latency, inference counted as instant: the deployment loop executes exactly what evaluation's
    loop (run_batched, the same seeds) executes, action for action (bit for bit at batch 1; eval's
    batches of several environments differ from it by float rounding only)."""
    cfg = DeployConfig(inference_s=0.0, max_steps=24)
    deployed = [_run(sim_rig, backend, cfg, seed) for seed in SEEDS]
    pol = load_policy(ckpt)
    evald = {e.seed: e for e in run_batched([sim_rig], PolicyAgent(pol, policy_features(pol, sim_rig), 1), SEEDS,
                                            max_steps=24)}
    for d, seed in zip(deployed, SEEDS, strict=True):
        np.testing.assert_array_equal(d.episode.control["action"], evald[seed].control["action"])
        assert d.episode.success == evald[seed].success and d.info["late_dropped"] == 0
        assert d.info["held_ticks"] == 0


def test_late_actions_are_dropped_and_latency_compensated(backend, sim_rig):
    """100 ms observation and 100 ms action latency at 20 Hz (2 ticks each), inference 1 tick: a chunk
    computed from the observation of tick k - 2 lands at tick k + 1; with compensation the actions
    for slots before k + 3 are late (5 of them), and the action sent at tick j is the one meant to
    act at j + 2. Without compensation only the inference tick is late."""
    for compensate, late_per_chunk, offset in ((True, 5, 2), (False, 1, 0)):
        cfg = DeployConfig(inference_s=0.05, max_steps=30, inject_obs_latency_s=0.1, inject_action_latency_s=0.1,
                           compensate=compensate)
        dep = _run(sim_rig, backend, cfg)
        assert all(c.late == late_per_chunk for c in dep.chunks), [c.late for c in dep.chunks]
        assert dep.info["late_dropped"] == late_per_chunk * len(dep.chunks)
        actions = dep.episode.control["action"]
        dt = 0.05
        for c in dep.chunks[:-1]:
            first = round(c.t_obs / dt)
            for i in range(late_per_chunk, len(c.actions)):
                tick = first + i - offset
                sent_by_this = [d for d in dep.chunks if d.id > c.id and round(d.t_arrive / dt) <= tick]
                if tick < len(actions) and not sent_by_this:
                    np.testing.assert_allclose(actions[tick], np.clip(c.actions[i], -1, 1), atol=1e-6)
        info = dep.info["latency"]
        assert info["injected"] == {"obs_s": 0.1, "action_s": 0.1}
        assert info["action_s"] == (0.1 if compensate else 0.0)


def test_blending_modes(backend, sim_rig):
    """Chunks requested every 3 ticks overlap the previous one by 4 actions: `ensemble` executes the
    weighted mean of every prediction for a step; `inpaint` samples the new chunk so that its actions
    due before it lands equal the old ones exactly; `none` switches to the new chunk."""
    base = dict(inference_s=0.05, max_steps=20, replan_every=3)
    runs = {b: _run(sim_rig, backend, DeployConfig(blend=b, **base)) for b in ("none", "ensemble", "inpaint")}
    dt = 0.05
    # ensemble: tick 7 is predicted by the chunks requested at ticks 3 and 6 (arriving at 4 and 7)
    ens = runs["ensemble"]
    preds = [c.actions[7 - round(c.t_obs / dt)] for c in ens.chunks
             if 0 <= 7 - round(c.t_obs / dt) < len(c.actions) and round(c.t_arrive / dt) <= 7]
    assert len(preds) >= 2
    w = np.exp(-0.01 * np.arange(len(preds)))
    want = np.clip(np.sum([wi * p for wi, p in zip(w, preds, strict=True)], axis=0) / w.sum(), -1, 1)
    np.testing.assert_allclose(ens.episode.control["action"][7], want, atol=1e-5)
    # inpaint: the chunk requested at tick 3 (obs of tick 3) lands at 4; its slot 3 was the old chunk's
    inp = runs["inpaint"]
    old, new = inp.chunks[0], inp.chunks[1]
    k = round(new.t_obs / dt)
    np.testing.assert_allclose(new.actions[0], old.actions[k - round(old.t_obs / dt)], atol=1e-5)
    nold, nnew = runs["none"].chunks[0], runs["none"].chunks[1]  # without inpainting the two disagree there
    assert not np.allclose(nnew.actions[0], nold.actions[round(nnew.t_obs / dt) - round(nold.t_obs / dt)], atol=1e-3)
    assert {r.info["blend"] for r in runs.values()} == {"none", "ensemble", "inpaint"}


@pytest.mark.parametrize("kind", [{"type": "diffusion", "num_inference_steps": 4, "num_train_timesteps": 20},
                                  {"type": "meanflow", "num_inference_steps": 1}], ids=["ddim", "meanflow"])
def test_inpainting_keeps_the_frozen_overlap(kind, sim_rig, tmp_path):
    """DDIM and one-step MeanFlow: the new chunk's actions due before it lands are the old chunk's."""
    from eval_helpers import TINY_POLICY

    ck = tiny_checkpoint(tmp_path / "ck", policy={**TINY_POLICY, **kind})
    b, info, close = make_backend(str(ck))
    try:
        dep = _run(sim_rig, (b, info), DeployConfig(inference_s=0.05, max_steps=8, replan_every=3, blend="inpaint"))
    finally:
        close()
    old, new = dep.chunks[0], dep.chunks[1]
    np.testing.assert_allclose(new.actions[0], old.actions[round(new.t_obs / 0.05) - round(old.t_obs / 0.05)],
                               atol=1e-5)


def test_a_prefix_policy_continues_the_actions_executed_since_its_observation(sim_rig, tmp_path):
    """Training-time RTC at deployment: with 100 ms observation and 60 ms action latency, every chunk of a
    flow policy trained with prefix_actions starts with the actions that really acted at its first slots
    (executed since its observation, or due before it landed), bit for bit; a plain policy's do not."""
    from eval_helpers import TINY_POLICY

    cfg = dict(inference_s=0.05, max_steps=14, blend="inpaint", inject_obs_latency_s=0.1,
               inject_action_latency_s=0.06)
    matched = {}
    for prefix in (0, 6):
        ck = tiny_checkpoint(tmp_path / f"ck{prefix}", policy={**TINY_POLICY, "prefix_actions": prefix})
        b, info, close = make_backend(str(ck))
        try:
            assert info.prefix_actions == prefix
            dep = _run(sim_rig, (b, info), DeployConfig(**cfg))
        finally:
            close()
        # slot -> the action that acted there: sent action_latency earlier (two ticks: 60 ms in whole ticks
        # of 50 ms, rounded up); nothing acts at slots 0 and 1.
        acted = {tick + 2: a for tick, a in enumerate(dep.episode.control["action"])}
        heads = []
        for c in dep.chunks:
            first = round(c.t_obs / 0.05)  # the chunk's first action acts at its observation's slot
            if first - 1 in acted:  # the whole prefix (from the action before the observation) is known
                heads += [np.allclose(c.actions[i], acted[first + i], atol=1e-6) for i in range(2)]
        matched[prefix] = (sum(heads), len(heads))
    n, total = matched[6]
    assert total >= 8 and n == total, matched
    assert matched[0][0] < matched[0][1] / 2, matched


def test_safety_stops_nan_and_out_of_range(ckpt, sim_rig, tmp_path):
    pol = load_policy(ckpt)
    with torch.no_grad():
        pol.normalizer._stats("action").u_scale.fill_(float("nan"))  # noqa: SLF001 - a broken checkpoint
    nan_ck = save_checkpoint(pol, tmp_path / "nan")
    pol = load_policy(ckpt)
    with torch.no_grad():
        for st in pol.normalizer.stats.values():
            st.u_bias.add_(5.0)  # every action 5 units off: far outside [-1, 1]
    far_ck = save_checkpoint(pol, tmp_path / "far")
    for ck, msg in ((nan_ck, "non-finite action at tick 0"), (far_ck, "out-of-range action at tick 0")):
        b, info, close = make_backend(str(ck))
        try:
            with pytest.raises(DeployStop, match=msg + r".*arm stopped$"):
                _run(sim_rig, (b, info), DeployConfig(inference_s=0.0, max_steps=5))
        finally:
            close()


def test_rollouts_recorded_into_the_store(backend, sim_rig, tmp_path):
    cfg = DeployConfig(inference_s=0.05, max_steps=12, inject_obs_latency_s=0.1, blend="ensemble")
    b, info = backend
    rig = DelayedRig(sim_rig, 0.1)
    dep = DeployLoop(rig, b, info, cfg).run_episode(SEEDS[0])
    with DemoStore.open(tmp_path / "r.zarr", mode="a") as store:
        write_rollout(store, dep, rig, "tiny")
    with DemoStore.open(tmp_path / "r.zarr") as store:
        ep = store.read_episode(0)
        np.testing.assert_array_equal(ep["action"], dep.episode.control["action"])
        chunks = store.read("proposed_chunk", 0)
        assert chunks.shape == (len(dep.chunks), 7, 7)
        np.testing.assert_array_equal(chunks, np.stack([c.actions for c in dep.chunks]))
        einfo = store.episode_info(0)
        assert einfo.source == "policy" and einfo.notes["blend"] == "ensemble"
        assert einfo.notes["latency"]["injected"]["obs_s"] == 0.1 and len(einfo.notes["inference_ms"]) == len(chunks)


# ---------------------------------------------------------------- policy server


def test_server_handshake_refuses_a_mismatched_policy(tmp_path):
    """A policy for `can` (another object layout) served to a `lift` rig: refused before anything moves."""
    import threading

    from robolearn.deploy.inference import PolicyRunner
    from robolearn.deploy.server import serve

    can = load_policy(tiny_checkpoint(tmp_path / "can", task="can"))
    endpoint, stop, up = f"tcp://127.0.0.1:{_free_port()}", threading.Event(), threading.Event()
    t = threading.Thread(target=serve, args=(PolicyRunner(can), endpoint), kwargs={"stop": stop, "ready": up.set})
    t.start()
    try:
        up.wait(10)
        with pytest.raises(InferenceError, match=r"refused this rig: the policy reads 'object' as lowdim \[\d+\], "
                                                 r"the rig gives lowdim \[12\]"):
            deploy("sim:lift", endpoint, DeployConfig(max_steps=5), timeout_s=30.0)
    finally:
        stop.set()
        t.join(5)


# ---------------------------------------------------------------- the sim twin, wall clock, real processes


@pytest.fixture(scope="module")
def twin_dir(tmp_path_factory):
    from helpers import twin_playback_dir

    d = tmp_path_factory.mktemp("twin")
    twin_playback_dir(d, frames=30)
    (d / "hardware").mkdir()  # a copy of the rig file: calibration writes into it
    (d / "hardware" / "sim_twin.yaml").write_text((ROOT / "hardware" / "sim_twin.yaml").read_text())
    return d


def test_twin_server_latency_stall_and_server_loss(ckpt, twin_dir, tmp_path, monkeypatch):
    """On the sim twin through every real process and the policy server on loopback: an episode with
    100 ms injected observation latency and 60 ms twin action latency; the action latency calibrated;
    a camera stalled mid-episode (SIGSTOP) and the server killed mid-episode each stop the arm with one
    line."""
    monkeypatch.chdir(twin_dir)
    proc, endpoint = _server(ckpt)
    cfg = DeployConfig(max_steps=20, inject_obs_latency_s=0.1, inject_action_latency_s=0.06, stall_s=1.0)
    try:
        remote = RemoteInference(endpoint, timeout_s=1.0, connect_timeout_s=60.0)
        from robolearn.deploy.inference import policy_features_from_info

        info = policy_features_from_info(remote.info)
        rig = make_deploy_rig("hardware/sim_twin.yaml", info, cfg)
        try:
            remote.check_features(policy_features(info, rig))
            loop = DeployLoop(rig, remote, info, cfg)
            dep = loop.run_episode(0)
            assert dep.episode.steps == 20 and dep.info["clock"] == "wall" and dep.info["backend"] == "server"
            assert dep.info["latency"]["action_s"] == pytest.approx(0.06)
            assert len(dep.chunks) >= 2 and all(c.round_trip_ms > 0 for c in dep.chunks)
            period = np.diff(dep.episode.tick_times)
            assert np.median(period) == pytest.approx(0.05, abs=0.01)
            # Calibration on the same twin: the injected action delay comes back within one control period.
            # The twin's world stands for a real arm's control box, which is real-time: under SCHED_FIFO the
            # host's load (other tests, other jobs) does not vary the latency being measured.
            world = rig.arm.info["world_pid"]
            os.sched_setscheduler(world, os.SCHED_FIFO, os.sched_param(45))
            try:
                rig.reset(0)
                rig.arm.set_action_latency(0.0)
                base = measure_latency(rig.rig, seconds=3.0)
                rig.arm.set_action_latency(0.15)
                rig.reset(0)
                late = measure_latency(rig.rig, seconds=3.0)
            finally:
                os.sched_setscheduler(world, os.SCHED_OTHER, os.sched_param(0))
            rig.arm.set_action_latency(0.06)
            assert late.action_s - base.action_s == pytest.approx(0.15, abs=0.05), (base, late)
            assert late.action_correlation > 0.5 and base.camera_s == {"front": None, "wrist": None}

            class Trigger:  # runs an action at a given tick, through the loop's view hook
                def __init__(self, tick, fn):
                    self.n, self.tick, self.fn = 0, tick, fn

                def log_tick(self, *a, **k):
                    self.n += 1
                    if self.n == self.tick:
                        self.fn()

                def log_chunk(self, *a, **k):
                    pass

            cam = rig.cameras["front"]
            loop.cfg.max_steps = 80  # long enough for the stop to come first
            loop.view = Trigger(8, lambda: os.kill(cam.pid, signal.SIGSTOP))
            try:
                with pytest.raises(DeployStop, match=r"^camera front delivered no frame for .* arm stopped$"):
                    loop.run_episode(1)
                assert _holding(rig)
            finally:
                os.kill(cam.pid, signal.SIGCONT)
            loop.view = Trigger(8, proc.kill)
            with pytest.raises(DeployStop, match=r"^policy server tcp://127\.0\.0\.1:\d+ gave no answer for .* arm "
                                                 r"stopped$"):
                loop.run_episode(2)
            assert _holding(rig)
        finally:
            rig.close()
            remote.close()
    finally:
        proc.kill()
        proc.wait()


def _holding(rig, within: float = 2.0) -> bool:
    """The arm controller takes commands at its next servo tick: wait for the stop to show."""
    import time

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if rig.arm.status()["status"] == "holding":
            return True
        time.sleep(0.01)
    return False


def test_latency_estimator_and_rig_file_update(tmp_path):
    t = np.arange(0, 6, 0.05)
    tm = np.arange(0, 6, 0.013)
    lag, r = estimate_lag(t, excitation(t, 0.03), tm, excitation(tm - 0.137, 0.03))
    assert lag == pytest.approx(0.137, abs=0.003) and r > 0.99
    # Camera latency: images of a bar that moves with the arm 80 ms late; their motion lags the arm's speed.
    from robolearn.deploy.calibrate import _frame_motion

    ta = np.arange(0, 6, 0.01)
    speed = np.abs(np.gradient(excitation(ta, 0.03), ta))
    frames = []
    for t in np.arange(0, 6, 1 / 30):
        img = np.zeros((24, 200), np.uint8)
        x = 100 + excitation(np.array([t - 0.08]), 0.03)[0] * 2000  # 60 px for 3 cm
        img[:, int(x) - 5:int(x) + 5] = 255
        frames.append((t, img))
    ft, fe = _frame_motion(frames)
    clag, cr = estimate_lag(ta, speed, ft, fe, max_lag=0.5, derivative=False)
    assert clag == pytest.approx(0.08, abs=1 / 30) and cr > 0.5
    f = tmp_path / "rig.yaml"
    f.write_text((ROOT / "hardware" / "sim_twin.yaml").read_text())
    write_latency(f, 0.2345, None)
    from robolearn.rigs.hardware import load_rig_config

    cfg = load_rig_config(f)
    assert (cfg.latency.action_s, cfg.latency.camera_s) == (0.2345, 0.0)
    assert "# A whole rig" in f.read_text()  # comments kept


def test_operator_keys_from_a_terminal():
    """The operator's keys, typed into a real pseudo-terminal: pause, E-stop, success, quit."""
    import pty
    import time

    from robolearn.deploy.loop import Operator

    master, slave = pty.openpty()
    op = Operator(slave)
    try:
        os.write(master, b"py \x1b")
        deadline, got = time.monotonic() + 3.0, []
        while time.monotonic() < deadline and len(got) < 4:
            got += op.events()
            time.sleep(0.02)
        assert got == ["pause", "success", "estop", "quit"]
    finally:
        op.close()
        os.close(master)
        os.close(slave)


def test_deploy_records_and_summarises(ckpt, tmp_path):
    """`robolearn deploy`'s library function: episodes on the eval seeds, rollouts in the store."""
    cfg = DeployConfig(max_steps=10, inject_obs_latency_s=0.1, inject_action_latency_s=0.06, blend="inpaint")
    live = tmp_path / "live.rrd"
    s = deploy("sim:lift", str(ckpt), cfg, episodes=2, record=str(tmp_path / "r.zarr"), threads=1,
               view=f"save:{live}")
    assert s.episodes == 2 and [e["seed"] for e in s.per_episode] == SEEDS and s.late_dropped > 0
    with DemoStore.open(tmp_path / "r.zarr") as store:
        assert store.n_episodes == 2 and store.episode_info(1).notes["blend"] == "inpaint"
        assert store.episode_info(0).notes["latency"]["injected"] == {"obs_s": 0.1, "action_s": 0.1}
        executed = np.concatenate([store.read("action", i) for i in range(2)])
    # --view: what the loop sent, tick by tick, and the chunks it executed, read back through Rerun.
    from test_viz import Rrd

    rrd = Rrd(live)
    ticks = rrd.seq("/live/action", "tick")
    assert 0 < len(ticks) <= len(executed) and np.all(np.diff(ticks) > 0)
    np.testing.assert_allclose(np.array(rrd.col("/live/action", "Scalars:scalars")), executed[ticks - 1], rtol=1e-6)
    assert rrd.rows("/live/chunk/executing") > 0


@pytest.mark.skipif(not os.access("/dev/cpu_dma_latency", os.W_OK), reason="needs /dev/cpu_dma_latency (root)")
def test_realtime_control_keeps_cpus_polling_while_the_loop_runs():
    """The kernel's PM QoS target (what /dev/cpu_dma_latency reads) is 0 us inside the real-time section
    of a rig with cpu_idle_poll, back to what it was after it, and untouched without the option."""
    import struct
    from types import SimpleNamespace

    from robolearn.deploy.run import realtime_control

    def target() -> int:
        with open("/dev/cpu_dma_latency", "rb") as f:
            return struct.unpack("i", f.read(4))[0]

    before = target()
    for poll in (True, False):
        rig = SimpleNamespace(realtime=True, config=SimpleNamespace(realtime_priority=10, cpu_idle_poll=poll))
        with realtime_control(rig) as rt:
            inside = target()
        if not rt:
            pytest.skip("no permission for SCHED_FIFO here: the real-time section is not entered")
        assert inside == (0 if poll else before), (poll, inside, before)
        assert target() == before
        assert os.sched_getscheduler(0) == os.SCHED_OTHER
