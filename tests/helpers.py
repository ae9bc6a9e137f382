"""Synthetic stores built with the real writer (imported by tests)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from robolearn.data.schema import EpisodeInfo, KeySpec
from robolearn.data.store import DemoStore
from robolearn.teleop import Event
from robolearn.teleop.expert import ExpertTeleop


def synth_episode(rng: np.random.Generator, length: int, cam_rate: float = 1.5, size: int = 16) -> dict:
    """Control at 20 Hz; a camera at ``cam_rate`` x that with its own jittered clock; depth."""
    t_ctrl = np.arange(length) / 20.0
    n_cam = int(length * cam_rate)
    t_cam = np.sort(np.arange(n_cam) / (20.0 * cam_rate) + rng.uniform(0, 0.004, n_cam))
    img = rng.integers(0, 256, (n_cam, size, size, 3), dtype=np.uint8)
    img[:, : size // 2] = 40  # some structure so the codec compresses
    return {
        "t_ctrl": t_ctrl,
        "t_cam": t_cam,
        "action": rng.normal(size=(length, 4)).astype(np.float32),
        "state": rng.normal(size=(length, 3)).astype(np.float32),
        "image": img,
        "depth": rng.integers(0, 5000, (n_cam, size, size), dtype=np.uint16),
    }


def write_synth_store(path: Path, lengths: list[int], seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    eps = []
    with DemoStore.open(path, mode="a") as store:
        store.declare_stream("control", {"action": KeySpec((4,), "float32"), "state": KeySpec((3,), "float32")})
        store.declare_stream("cam", {"cam_image": KeySpec((16, 16, 3), "uint8", "rgb"),
                                     "cam_depth": KeySpec((16, 16), "uint16", "depth", depth_scale=0.001)})
        for i, n in enumerate(lengths):
            ep = synth_episode(rng, n)
            with store.begin_episode() as w:
                w.extend("control", ep["t_ctrl"] + 0.01, ep["t_ctrl"], action=ep["action"], state=ep["state"])
                w.extend("cam", ep["t_cam"] + 0.02, ep["t_cam"], cam_image=ep["image"], cam_depth=ep["depth"])
                w.set_column("reward", np.linspace(0, 1, n, dtype=np.float32), provenance={"source": "test"})
                w.commit(EpisodeInfo(task="synthetic", success=i % 2 == 0, fps=20.0, seed=i))
            eps.append(ep)
    return eps


class OperatorScript(ExpertTeleop):
    """A scripted operator: the sim expert's hands plus operator decisions, as a person would give them.

    Per episode (counted from 0): episode 0 is discarded after 3 ticks, episode 1 is marked failed
    after 3 ticks, later episodes run to the rig's own end; ticks 2-4 of every episode are marked as
    interventions."""

    def __init__(self) -> None:
        super().__init__()
        self.episode = -1
        self.tick = 0

    def reset(self, seed: int | None = None) -> None:
        super().reset(seed)
        self.episode += 1
        self.tick = 0

    def act(self, observation):  # noqa: ANN001, ANN201
        action, _ = super().act(observation)
        self.tick += 1
        return action, 2 <= self.tick - 1 <= 4

    def events(self):  # noqa: ANN201
        if self.tick == 3 and self.episode == 0:
            return [Event.DISCARD]
        if self.tick == 3 and self.episode == 1:
            return [Event.FAILURE]
        return []



def twin_playback_dir(d: Path, frames: int) -> list[Path]:
    """Make sim_twin's playback recordings under ``d`` (``d/data/playback/...``, where the rig file
    resolves them when run from ``d``)."""
    from robolearn.rigs.playback import make_playback

    cwd = os.getcwd()
    os.chdir(d)
    try:
        return make_playback("hardware/sim_twin.yaml", frames=frames)
    finally:
        os.chdir(cwd)


def proc_state(pid: int | str) -> str | None:
    """Process ``pid``'s scheduler state letter from /proc (R, S, D, Z, ...); None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def pid_running(pid: int | str) -> bool:
    """Whether process ``pid`` still runs; a zombie (exited, not yet reaped by whoever adopted it) counts as gone."""
    return proc_state(pid) not in (None, "Z")


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (children, their children, ...), from /proc."""
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            out.update(kids)
            todo += kids
    return out
