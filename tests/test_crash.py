"""Episode-atomic writes, proven by SIGKILLing a real `robolearn record` process at random moments."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from robolearn.data.inspect import verify
from robolearn.data.store import DemoStore

N_EPISODES = 24
ARGS = ["--rig", "sim:lift", "--teleop", "expert", "--cameras", "agentview", "--image-size", "32", "--seed", "0", "-q"]


def _record(out: Path, episodes: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "robolearn", "record", *ARGS, "--episodes", str(episodes), "--out", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


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


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    ref = tmp_path_factory.mktemp("ref") / "ref.zarr"
    p = _record(ref, N_EPISODES)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err.decode()
    return ref


def test_sigkill_loses_at_most_the_episode_in_progress(reference, tmp_path):
    ref = DemoStore.open(reference)
    out = tmp_path / "killed.zarr"
    rng = random.Random(20261121)
    kills, committed_seen = 0, []
    while kills < 10:
        have = DemoStore.open(out).n_episodes if out.exists() else 0
        if have >= N_EPISODES:
            break
        p = _record(out, N_EPISODES - have)
        time.sleep(rng.uniform(0.8, 3.5))
        if p.poll() is None:
            p.kill()
            kills += 1
        p.wait(timeout=60)
        if not out.exists():
            continue
        store = DemoStore.open(out)
        rep = verify(out)
        assert rep.ok, rep.problems
        committed_seen.append(store.n_episodes)
        for i in range(store.n_episodes):
            _assert_same_episode(store, ref, i)
    assert kills >= 6, "the recorder finished before it could be killed enough times"
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


def test_reader_while_writer_appends(reference, tmp_path):
    ref = DemoStore.open(reference)
    out = tmp_path / "live.zarr"
    p = _record(out, N_EPISODES)
    seen = set()
    try:
        while p.poll() is None:
            if (out / "zarr.json").exists():
                store = DemoStore.open(out)
                for i in range(store.n_episodes):
                    _assert_same_episode(store, ref, i)
                seen.add(store.n_episodes)
            time.sleep(0.2)
    finally:
        p.wait(timeout=300)
    assert p.returncode == 0
    assert len(seen) >= 3, f"reader saw too few intermediate states: {sorted(seen)}"
    assert DemoStore.open(out).n_episodes == N_EPISODES
