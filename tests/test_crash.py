"""Episode-atomic writes, proven by SIGKILLing a real `robolearn record` process at random moments."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from robolearn.data.inspect import verify
from robolearn.data.store import DemoStore

pytestmark = pytest.mark.realtime  # has the CPU alone under xdist (conftest.py)

N_EPISODES = 6
ARGS = ["--rig", "sim:lift", "--teleop", "expert", "--cameras", "agentview", "--image-size", "32", "--seed", "0", "-q"]


MARK = f"robolearn-crash-test-{uuid.uuid4().hex}"


def _record(out: Path, episodes: int, workers: int = 2) -> subprocess.Popen:
    # --workers 2: the killed writer also has attempt processes, which must not outlive it
    return subprocess.Popen(
        [sys.executable, "-m", "robolearn", "record", *ARGS, "--workers", str(workers), "--episodes", str(episodes),
         "--out", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "ROBOLEARN_TEST_MARK": MARK},
    )


def _survivors() -> list[int]:
    """Processes started by a recorder of this test (they inherit the marker) that are still alive."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and MARK.encode() in (proc / "environ").read_bytes():
                state = next(line for line in (proc / "status").read_text().splitlines() if line.startswith("State"))
                if "Z" not in state:  # zombies are dead, just not reaped yet
                    pids.append(int(proc.name))
        except (OSError, StopIteration):
            continue
    return pids


def _assert_same_episode(a: DemoStore, b: DemoStore, i: int) -> None:
    ra, rb = a.read_episode(i, align=False), b.read_episode(i, align=False)
    assert ra.keys() == rb.keys()
    for k in ra:
        np.testing.assert_array_equal(ra[k], rb[k], err_msg=f"episode {i} key {k}")
    for stream in a.streams:
        for clock in ("host", "device"):
            np.testing.assert_array_equal(a.timestamps(stream, i, clock), b.timestamps(stream, i, clock))
    ia, ib = a.episode_info(i), b.episode_info(i)
    ia.started_at = ib.started_at = None
    assert ia == ib
    va, pa = a.read_column("reward", i)
    vb, pb = b.read_column("reward", i)
    np.testing.assert_array_equal(va, vb)
    assert pa == pb


def _digest(store: DemoStore, i: int) -> str:
    """Every array, timestamp and reward of episode i, hashed: snapshots taken mid-recording are kept small."""
    h = hashlib.sha256()
    ep = store.read_episode(i, align=False)
    for k in sorted(ep):
        h.update(k.encode() + np.ascontiguousarray(ep[k]).tobytes())
    for stream in sorted(store.streams):
        for clock in ("host", "device"):
            h.update(np.ascontiguousarray(store.timestamps(stream, i, clock)).tobytes())
    h.update(np.ascontiguousarray(store.read_column("reward", i)[0]).tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, float, float, list[list[str]]]:
    """An uninterrupted recording, plus this machine's start-up time and time per episode, so kills
    can be spread over start-up and work whatever the machine's speed. A reader polls the store while
    it is written (one recording serves both tests): the digests of what it saw at each poll."""
    tmp = tmp_path_factory.mktemp("ref")
    t0 = time.perf_counter()
    p = _record(tmp / "one.zarr", 1)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err.decode()
    startup = time.perf_counter() - t0
    ref = tmp / "ref.zarr"
    t0 = time.perf_counter()
    # One worker: episodes are committed one by one as they finish (with look-ahead workers a slow
    # first seed lets all of them land in one burst, which a reader cannot see apart). The store is
    # the same for any number of workers (test_rigs), so the killed two-worker runs compare to it.
    p = _record(ref, N_EPISODES, workers=1)
    snapshots: list[list[str]] = []
    try:
        while p.poll() is None:
            if (ref / "zarr.json").exists():
                store = DemoStore.open(ref)
                snapshots.append([_digest(store, i) for i in range(store.n_episodes)])
            time.sleep(0.02)
    finally:
        _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err.decode()
    per_episode = max(0.05, (time.perf_counter() - t0 - startup) / N_EPISODES)
    return ref, startup, per_episode, snapshots


def test_sigkill_loses_at_most_the_episode_in_progress(reference, tmp_path):
    ref_path, startup, per_episode, _ = reference
    ref = DemoStore.open(ref_path)
    out = tmp_path / "killed.zarr"
    rng = random.Random(20261121)
    kills, committed_seen, runs = 0, [], 0
    # Until the kills have landed at two different points (on a loaded machine they often all fall in
    # start-up and leave the same count each time).
    while (kills < 3 or len(set(committed_seen)) < 2) and runs < 20:
        runs += 1
        have = DemoStore.open(out).n_episodes if out.exists() else 0
        if have >= N_EPISODES:
            if kills >= 2 and len(set(committed_seen)) > 1:
                break
            # It finished before it could be killed often enough (a fast machine): again, from scratch.
            shutil.rmtree(out)
            have = 0
        p = _record(out, N_EPISODES - have)
        # from early start-up (imports, lock, spawning attempt processes) to a few episodes in
        time.sleep(rng.uniform(0.3 * startup, startup + 3 * per_episode))
        if p.poll() is None:
            p.kill()
            kills += 1
        p.wait(timeout=60)
        deadline = time.time() + 10
        while _survivors() and time.time() < deadline:
            time.sleep(0.1)
        assert not _survivors(), "attempt processes outlived the killed recorder"
        if not out.exists():
            continue
        store = DemoStore.open(out)
        rep = verify(out)
        assert rep.ok, rep.problems
        committed_seen.append(store.n_episodes)
        for i in range(store.n_episodes):
            _assert_same_episode(store, ref, i)
    print(f"SIGKILLs: {kills}; committed episodes seen after each: {committed_seen}")
    assert kills >= 2, "the recorder finished before it could be killed enough times"
    # finish the job: the store continues where the killed runs stopped and ends up identical
    have = DemoStore.open(out).n_episodes
    if have < N_EPISODES:
        p = _record(out, N_EPISODES - have)
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
    store = DemoStore.open(out)
    assert store.n_episodes == N_EPISODES and verify(out).ok
    for i in range(N_EPISODES):
        _assert_same_episode(store, ref, i)
    assert len(set(committed_seen)) > 1  # kills landed at different points of the run


def test_reader_while_writer_appends(reference):
    """Every state a reader saw while the recorder appended holds finished episodes only, each
    identical to the episode the finished store has."""
    ref_path, _, _, snapshots = reference
    ref = DemoStore.open(ref_path)
    final = [_digest(ref, i) for i in range(ref.n_episodes)]
    seen = {len(s) for s in snapshots}
    print(f"reader polls: {len(snapshots)}; episode counts seen: {sorted(seen)}")
    for snap in snapshots:
        assert snap == final[: len(snap)]
    assert len(seen) >= 3, f"reader saw too few intermediate states: {sorted(seen)}"
    assert ref.n_episodes == N_EPISODES
