"""`robolearn eval` and the runner: suites, --inference-steps, and workers that raise, die or hang
(real worker processes; the fault is injected inside the worker through ROBOLEARN_EVAL_FAULT)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from eval_helpers import tiny_checkpoint
from helpers import pid_running, proc_state

from robolearn.eval import EvalFailed, evaluate, load_suite
from robolearn.eval.runner import FAULT_ENV

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "run" / "checkpoints" / "step_0000005")


def run_cli(*args: str, fault: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    return subprocess.run([sys.executable, "-m", "robolearn", "eval", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def test_suite_through_the_cli_with_inference_steps(ckpt, tmp_path):
    suite_file = tmp_path / "suite.yaml"
    suite_file.write_text(f"name: tiny\ntasks: [lift]\npolicies: [{ckpt}]\nepisodes: 3\nworkers: 1\nn_envs: 2\n"
                          f"videos: 1\nseed_base: 500\n")
    suite = load_suite(suite_file)
    assert (suite.workers, suite.n_envs, suite.seed_base, suite.videos) == (1, 2, 500, 1)
    out = tmp_path / "out"
    res = run_cli("--suite", str(suite_file), "--inference-steps", "1", "--max-steps", "8", "--out", str(out))
    assert res.returncode == 0, res.stderr
    report = json.loads((out / "report.json").read_text())
    r = report["results"][0]
    assert report["name"] == "tiny" and r["checkpoint"] == str(ckpt) and r["policy_type"] == "flow"
    assert r["inference_steps"] == 1  # the checkpoint says 2: the flag reached the workers
    assert (r["workers"], r["n_envs"], r["episodes"]) == (1, 2, 3)
    assert [e["seed"] for e in r["per_episode"]] == [500, 501, 502]
    assert [e["length"] for e in r["per_episode"]] == [8, 8, 8]
    assert len(r["videos"]) == 1 and Path(r["videos"][0]).stat().st_size > 1000
    assert "| lift |" in (out / "summary.md").read_text() and "episodes/min" in res.stdout
    suite_file.write_text("tasks: [lift]\npolicies: [x]\nworkerz: 2\n")
    with pytest.raises(ValueError, match=r"unknown key 'workerz' \(did you mean 'workers'\?\)"):
        load_suite(suite_file)


def test_worker_exception_names_the_seed(ckpt, tmp_path):
    out = tmp_path / "eval"
    res = run_cli("--policy", str(ckpt), "--task", "lift", "--episodes", "3", "--workers", "1", "--n-envs", "1",
                  "--max-steps", "4", "--videos", "0", "--out", str(out), fault="raise:1000001")
    assert res.returncode == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr
    assert lines[0].startswith("robolearn eval: worker failed on seed 1000001: RuntimeError: injected fault")
    assert "Traceback" in (out / "eval_errors.log").read_text()
    assert not (out / "report.json").exists()


def test_killed_worker_fails_the_run_with_its_seed(ckpt, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "kill:1000002")  # spawned workers inherit the environment
    with pytest.raises(EvalFailed, match=r"worker \d \(pid \d+\) died \(signal SIGKILL\) while running seed\(s\) "
                                         r"1000002") as e:
        evaluate(ckpt, "lift", episodes=6, workers=2, n_envs=2, max_steps=4, videos=0, worker_timeout=600.0)
    assert e.value.seeds == [1000002]


def test_hung_worker_fails_the_run_with_its_seed(ckpt, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "hang:1000000")
    with pytest.raises(EvalFailed, match=r"made no progress for 3s while running seed\(s\) 1000000"):
        evaluate(ckpt, "lift", episodes=2, workers=1, n_envs=1, max_steps=4, videos=0, worker_timeout=3.0)


# The evaluating process, as a script: it notes its worker's pid in a file as the worker starts, so the test
# needs no /proc reads of processes that are still exec'ing (their cmdline is not worth a stall to find them).
KILLED_PARENT = """
import multiprocessing.process as mpp
import sys

from robolearn.eval import evaluate

start = mpp.BaseProcess.start


def noted_start(self):
    start(self)
    with open(sys.argv[2], "a") as f:
        f.write(f"{self.pid}\\n")


mpp.BaseProcess.start = noted_start
evaluate(sys.argv[1], "lift", episodes=400, workers=1, n_envs=1, videos=0)
"""


def _states(pids: list[int]) -> str:
    """Each process's scheduler state and kernel wait channel: what a failure message needs to tell a stall."""
    out = []
    for p in pids:
        try:
            wchan = Path(f"/proc/{p}/wchan").read_text()
        except OSError:
            wchan = ""
        out.append(f"{p}:{proc_state(p) or 'gone'}:{wchan}")
    return " ".join(out)


@pytest.mark.realtime
@pytest.mark.timeout(1200)  # CI has stalled whole minutes while three fresh processes load torch; see below
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc")
def test_worker_stops_when_the_evaluating_process_is_killed(ckpt, tmp_path):
    """SIGKILL skips the parent's clean-up: its worker must notice and stop, not finish its episodes and
    then wait for seeds forever holding a core.

    One worker, not two: the mechanism is per process (PR_SET_PDEATHSIG), and CI twice stalled for minutes
    while a parent and two workers faulted in torch at once. The waits allow for such a stall (the
    mark's 1200 s is over all of them) and every message says how long each phase took."""
    pids = tmp_path / "workers.txt"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(FAULT_ENV, None)
    t0 = time.monotonic()
    phases: list[str] = []

    def phase(name: str) -> None:
        phases.append(f"{name} at {time.monotonic() - t0:.1f} s")

    log = tmp_path / "parent.log"
    with log.open("wb") as f:
        proc = subprocess.Popen([sys.executable, "-c", KILLED_PARENT, str(ckpt), str(pids)], env=env,
                                stdout=subprocess.DEVNULL, stderr=f)
    phase("parent started")
    kids: list[int] = []
    try:
        while not kids and time.monotonic() - t0 < 400 and proc.poll() is None:
            time.sleep(0.2)
            kids = [int(x) for x in pids.read_text().split("\n")[:-1]] if pids.is_file() else []  # whole lines
        phase("worker noted")
        assert len(kids) == 1, (f"the eval worker did not start ({', '.join(phases)}): "
                                f"{_states([proc.pid, *kids])}; the parent said: {log.read_text()[-2000:]}")
        time.sleep(8)  # into its episodes (policy loaded, sims stepping)
        phase("slept 8 s")
        assert pid_running(kids[0]), (f"the eval worker ended before its parent was killed ({', '.join(phases)}): "
                                      f"{_states(kids)}; the parent said: {log.read_text()[-2000:]}")
    finally:
        proc.kill()
        proc.wait()
    phase("parent reaped")
    killed = time.monotonic()
    # The kernel kills it with the parent (PR_SET_PDEATHSIG); 300 s allows for a stalled disk or host.
    while pid_running(kids[0]) and time.monotonic() - killed < 300:
        time.sleep(0.2)
    phase("wait ended")
    states = _states(kids)
    left = pid_running(kids[0])
    if left:
        os.kill(kids[0], 9)
    assert not left, f"eval worker {kids[0]} outlived its killed parent ({', '.join(phases)}; {states})"
