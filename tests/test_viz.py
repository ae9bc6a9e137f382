"""Rerun views: `data view`, live views of record and finetune, policy introspection.

Every check reads the written .rrd back through Rerun's own reader (``rerun.chunk.RrdReader``): entity
paths, rows per stream, timestamps against the store's, units, names and values.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from robolearn.cli.main import main
from robolearn.data.schema import EpisodeInfo, KeySpec
from robolearn.data.store import DemoStore

sys.path.insert(0, str(Path(__file__).parent))


class Rrd:
    """An .rrd file's rows per entity path (temporal chunks concatenated; static ones apart)."""

    def __init__(self, path: Path) -> None:
        import pyarrow as pa
        from rerun.chunk import RrdReader

        temporal: dict[str, list] = defaultdict(list)
        self.static: dict[str, dict] = {}
        for c in RrdReader(path).stream().collect().stream():
            b = c.to_record_batch()
            if c.is_static:
                self.static.setdefault(c.entity_path, {}).update({n: b.column(n).to_pylist()[-1] for n in b.schema.names})
            else:
                temporal[c.entity_path].append(b)
        # Chunks of one entity may carry different timelines (a row logged before any tick has none).
        self.tables = {p: pa.concat_tables([pa.Table.from_batches([b]) for b in bs], promote_options="default")
                       .sort_by("rerun.controls.RowId") for p, bs in temporal.items()}

    def rows(self, path: str) -> int:
        return self.tables[path].num_rows

    def ns(self, path: str, timeline: str) -> np.ndarray:
        import pyarrow as pa

        return np.asarray(self.tables[path].column(timeline).cast(pa.int64()).to_numpy())

    def seq(self, path: str, timeline: str) -> np.ndarray:
        return np.asarray(self.tables[path].column(timeline).to_numpy())

    def col(self, path: str, name: str) -> list:
        return self.tables[path].column(name).to_pylist()


def _ns(t: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(t, np.float64) * 1e9).astype(np.int64)


def test_data_view_image_store_with_depth_keeps_every_frame_at_its_own_clocks(synth_store, tmp_path, capsys):
    store_path, _ = synth_store
    out = tmp_path / "view.rrd"
    assert main(["data", "view", str(store_path), "--episode", "0", "2-3", "--save", str(out)]) == 0
    assert "episode 2:" in capsys.readouterr().out
    rrd = Rrd(out)
    store = DemoStore.open(store_path)
    for e in (0, 2, 3):
        p = f"/episode_{e}"
        assert {f"{p}/action", f"{p}/control/state", f"{p}/columns/reward", f"{p}/cam/cam_image",
                f"{p}/cam/cam_depth"} <= set(rrd.tables)
        n_ctrl = len(store.timestamps("control", e))
        assert rrd.rows(f"{p}/action") == n_ctrl
        np.testing.assert_array_equal(rrd.ns(f"{p}/action", "t_device"), _ns(store.timestamps("control", e, "device")))
        np.testing.assert_array_equal(rrd.seq(f"{p}/action", "step"), np.arange(n_ctrl))
        np.testing.assert_allclose(np.array(rrd.col(f"{p}/action", "Scalars:scalars")), store.read("action", e),
                                   rtol=1e-6)
        np.testing.assert_allclose(np.array(rrd.col(f"{p}/columns/reward", "Scalars:scalars")).ravel(),
                                   store.read_column("reward", e)[0], rtol=1e-6)
        for key in ("cam_image", "cam_depth"):
            path = f"{p}/cam/{key}"
            # Every stored frame once, at the store's own device and host times (the camera's clock
            # differs from the control clock and runs at 1.5x its rate).
            assert rrd.rows(path) == len(store.timestamps("cam", e))
            np.testing.assert_array_equal(rrd.ns(path, "t_device"), _ns(store.timestamps("cam", e, "device")))
            np.testing.assert_array_equal(rrd.ns(path, "t_host"), _ns(store.timestamps("cam", e, "host")))
        frames = store.read("cam_depth", e)
        depth = rrd.col(f"{p}/cam/cam_depth", "DepthImage:buffer")
        assert np.frombuffer(bytes(depth[-1][0]), np.uint16).reshape(frames.shape[1:]).tolist() == frames[-1].tolist()
        assert rrd.col(f"{p}/cam/cam_depth", "DepthImage:meter")[0][0] == pytest.approx(1 / 0.001)
        image = rrd.col(f"{p}/cam/cam_image", "Image:buffer")
        assert bytes(image[0][0]) == store.read("cam_image", e)[0].tobytes()
        text = rrd.static[f"{p}/info"]["TextDocument:text"][0]
        assert f"success: **{e % 2 == 0}**" in text and "synthetic" in text
    assert not any(p.startswith("/episode_1/") for p in rrd.tables)


def test_data_view_lowdim_store_names_series_and_draws_the_eef_path(tmp_path):
    store_path, out = tmp_path / "low.zarr", tmp_path / "low.rrd"
    rng = np.random.default_rng(0)
    names = ("dx", "dy", "dz", "grip")
    with DemoStore.open(store_path, mode="a") as store:
        store.declare_stream("control", {"action": KeySpec((4,), names=names), "robot0_eef_pos": KeySpec((3,)),
                                         "sim_state": KeySpec((9,), "float64")})
        with store.begin_episode() as w:
            t = np.arange(25) / 20.0
            w.extend("control", t, t + 0.5, action=rng.normal(size=(25, 4)), robot0_eef_pos=rng.normal(size=(25, 3)),
                     sim_state=rng.normal(size=(25, 9)))
            w.set_column("progress", np.linspace(0, 1, 25), provenance={"source": "test"})
            w.set_column("intervention", (np.arange(25) > 20).astype(np.float32))
            w.commit(EpisodeInfo(task="low", success=True, fps=20.0, dropped_frames={"none": 0}))
    assert main(["data", "view", str(store_path), "--save", str(out)]) == 0
    rrd = Rrd(out)
    assert set(rrd.tables) == {"/episode_0/action", "/episode_0/control/robot0_eef_pos", "/episode_0/columns/progress",
                               "/episode_0/columns/intervention", "/episode_0/scene/eef"}
    assert rrd.static["/episode_0/action"]["SeriesLines:names"] == list(names)
    np.testing.assert_array_equal(rrd.ns("/episode_0/action", "t_host"), _ns(t + 0.5))
    assert rrd.rows("/episode_0/scene/eef") == 25
    with DemoStore.open(store_path) as store:
        path = np.array(rrd.static["/episode_0/scene/eef_path"]["LineStrips3D:strips"][0])
        np.testing.assert_allclose(path, store.read("robot0_eef_pos", 0), rtol=1e-6)
        np.testing.assert_allclose(np.array(rrd.col("/episode_0/columns/progress", "Scalars:scalars")).ravel(),
                                   np.linspace(0, 1, 25), rtol=1e-6)


def test_record_with_a_live_view_on_the_sim_rig(tmp_path):
    from robolearn.record import RecordConfig, record

    store_path, live = tmp_path / "lift.zarr", tmp_path / "live.rrd"
    s = record(RecordConfig(rig="sim:lift", out=str(store_path), episodes=1, cameras=["agentview"], image_size=32,
                            depth=True, seed=0, view=f"save:{live}", status=False))
    assert s.committed == 1
    rrd = Rrd(live)
    store = DemoStore.open(store_path)
    n = len(store.timestamps("control", 0))
    # The simulator runs faster than real time here, so the view may drop some ticks' views; what it
    # logged is exactly what the loop sent at that tick and what the store keeps.
    ticks = rrd.seq("/live/action", "tick")
    assert s.steps == n and 0 < len(ticks) <= n and np.all(np.diff(ticks) > 0)
    np.testing.assert_allclose(np.array(rrd.col("/live/action", "Scalars:scalars")), store.read("action", 0)[ticks - 1],
                               rtol=1e-6)
    assert rrd.static["/live/action"]["SeriesLines:names"] == ["dx", "dy", "dz", "droll", "dpitch", "dyaw", "grip"]
    eef_ticks = rrd.seq("/live/control/robot0_eef_pos", "tick")
    np.testing.assert_allclose(np.array(rrd.col("/live/control/robot0_eef_pos", "Scalars:scalars")),
                               store.read("robot0_eef_pos", 0)[eef_ticks - 1], rtol=1e-6)
    t_store = _ns(store.timestamps("agentview", 0, "device"))
    frames = store.read("agentview_image", 0)
    t_live = rrd.ns("/live/agentview/agentview_image", "t_device")
    assert len(t_live) > 0 and set(t_live) <= set(t_store)
    for t, buf in zip(t_live, rrd.col("/live/agentview/agentview_image", "Image:buffer"), strict=True):
        assert bytes(buf[0]) == frames[list(t_store).index(t)].tobytes()
    np.testing.assert_array_equal(rrd.ns("/live/agentview/agentview_depth", "t_device"), t_live)
    scale = store.streams["agentview"]["agentview_depth"].depth_scale
    assert rrd.col("/live/agentview/agentview_depth", "DepthImage:meter")[0][0] == pytest.approx(1 / scale)
    assert "/live/control/sim_state" not in rrd.tables
    # The same store through `data view`: the recorded frames at the recorded times.
    assert main(["data", "view", str(store_path), "--save", str(tmp_path / "ep.rrd")]) == 0
    ep = Rrd(tmp_path / "ep.rrd")
    np.testing.assert_array_equal(ep.ns("/episode_0/agentview/agentview_depth", "t_device"), t_store)
    assert [bytes(b[0]) for b in ep.col("/episode_0/agentview/agentview_image", "Image:buffer")] == \
        [f.tobytes() for f in frames]


def test_live_view_drops_views_not_ticks_when_it_falls_behind(tmp_path):
    from robolearn.rigs.base import Sample
    from robolearn.viz.live import make_view

    view = make_view(f"save:{tmp_path / 'v.rrd'}", queue_size=2)
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[:, 320:] = 200
    for i in range(120):  # far faster than the view JPEG-encodes 640x480 frames: ring and socket overflow
        view.log_tick(i * 0.01, {"cam": Sample({"cam_image": frame}, i * 0.01, i * 0.01)}, action=np.full(2, i))
        view.log_chunk(i * 0.01, "executing", np.zeros((4, 2)))
    view.close()
    assert view.dropped_views > 0 and view.ticks == 120
    rrd = Rrd(tmp_path / "v.rrd")
    logged = rrd.seq("/live/action", "tick")
    assert len(logged) == view.logged_ticks < 120
    assert np.all(np.diff(logged) > 0) and logged[-1] <= 120  # in order; gaps are the dropped views
    # A live view's large camera images go as JPEG (depth and small images stay exact).
    import io

    from PIL import Image

    blob = rrd.col("/live/cam/cam_image", "EncodedImage:blob")[0][0]
    decoded = np.asarray(Image.open(io.BytesIO(bytes(blob))))
    assert decoded.shape == frame.shape and np.abs(decoded.astype(int) - frame).mean() < 2


def test_data_view_serves_the_web_viewer_until_interrupted(synth_store, tmp_path):
    import os
    import signal
    import socket
    import subprocess
    import urllib.request

    with socket.socket() as a:  # a free port for the page; its data goes on the next one
        a.bind(("127.0.0.1", 0))
        port = a.getsockname()[1]
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", "robolearn", "data", "view", str(synth_store[0]), "--serve", str(port)],
                            env={**os.environ, "PYTHONPATH": str(root)}, stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        line = ""
        while "logged" not in line:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, proc.stderr.read()
        assert f":{port}/?url=" in line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as r:
            assert r.status == 200 and b"<html" in r.read().lower()
        with socket.create_connection(("127.0.0.1", port + 1), timeout=10):
            pass  # the data server the page points at
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0 and "episode 0:" in out
    finally:
        proc.kill()


def test_live_view_reads_a_real_rigs_camera_ring_itself(tmp_path):
    """A real rig's frames are in its cameras' shared-memory rings: the loop sends none, the view reads them."""
    from robolearn.hardware.shm import ShmRing
    from robolearn.rigs.base import Sample
    from robolearn.viz.live import make_view

    ring = ShmRing.create({"cam_image": ((48, 64, 3), "uint8"), "cam_depth": ((48, 64), "uint16")}, 16)
    try:
        view = make_view(f"save:{tmp_path / 'r.rrd'}", camera_rings={"cam": ring.name})
        written = {}
        for i in range(30):  # a camera at 3x the loop's rate
            for j in range(3):
                k = 3 * i + j
                img = np.full((48, 64, 3), k, np.uint8)
                ring.write({"cam_image": img, "cam_depth": np.full((48, 64), 7 * k, np.uint16)}, k, 100 + k / 60, k / 60)
                written[_ns(100 + k / 60)] = img.tobytes()
            view.log_tick(i / 20, {"cam": Sample({"cam_image": img}, 0.0, 0.0)}, action=np.zeros(2))
            __import__("time").sleep(0.02)
        view.close()
    finally:
        ring.close()
    rrd = Rrd(tmp_path / "r.rrd")
    t_dev = rrd.ns("/live/cam/cam_image", "t_device")
    assert 0 < len(t_dev) <= 90 and set(t_dev) <= set(written)  # the newest frame whenever the view looked
    for t, buf in zip(t_dev, rrd.col("/live/cam/cam_image", "Image:buffer"), strict=True):
        assert bytes(buf[0]) == written[t]
    assert rrd.rows("/live/action") == 30


def test_no_display_names_the_other_sinks(synth_store, monkeypatch, capsys):
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert main(["data", "view", str(synth_store[0])]) == 2
    err = capsys.readouterr().err
    assert "no display" in err and "--save FILE.rrd" in err and "--serve" in err


def test_missing_rerun_gives_one_line_with_the_install_command(synth_store, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "rerun", None)  # what `import rerun` meets where it is not installed
    assert main(["data", "view", str(synth_store[0]), "--save", "x.rrd"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pip install 'robolearn[viz]'" in err


def test_introspect_draws_sampled_chunks_from_the_end_effector(tmp_path, one_thread):
    from eval_helpers import tiny_checkpoint

    from robolearn.viz.introspect import introspect

    ck = tiny_checkpoint(tmp_path / "ck")
    r = introspect(ck, "lift", seed=3, samples=3, sink=f"save:{tmp_path / 'i.rrd'}", camera=None, max_steps=9)
    assert r["steps"] == 9 and r["chunks"] == 3 and r["spread_m"] > 0  # n_action_steps 4: ticks 0, 4, 8
    rrd = Rrd(tmp_path / "i.rrd")
    strips = rrd.col("/scene/samples", "LineStrips3D:strips")
    assert len(strips) == 3 and all(len(s) == 3 for s in strips)
    eef = np.array(rrd.col("/scene/eef", "Points3D:positions"))[:, 0]
    for k, boundary in enumerate(rrd.seq("/scene/samples", "step")):
        assert boundary == 4 * k
        for s in strips[k]:  # each sample starts at the end-effector, one point per remaining chunk step
            np.testing.assert_allclose(s[0], eef[boundary], rtol=1e-6)
            assert len(s) == 8 - 2 + 1 + 1  # horizon 8 from step n_obs_steps - 1 = 1, plus the start
    assert rrd.rows("/scene/executed") == 9


def test_finetune_streams_env_zero_to_a_live_view(tmp_path, one_thread):
    from eval_helpers import tiny_checkpoint

    from robolearn.rl import finetune

    ck = tiny_checkpoint(tmp_path / "ck")
    small = ["env.n_envs=1", "env.workers=0", "env.max_steps=6", "eval.episodes=1", "eval.every=1000",
             "learning_starts=1000", "batch_size=8", "actor.hidden=16", "critic.hidden=16", "demos.ratio=0"]
    finetune(ck, "sim:lift", tmp_path / "rl", steps=8, overrides=small, progress=False,
             view=f"save:{tmp_path / 'ft.rrd'}")
    rrd = Rrd(tmp_path / "ft.rrd")
    assert rrd.rows("/live/action") == 8 and rrd.rows("/live/scalars/reward") == 8
    assert rrd.rows("/live/chunk/executing") >= 2  # 6-step episodes, 4 actions per chunk
    assert rrd.rows("/live/scene/chunk_executing") == rrd.rows("/live/chunk/executing")
