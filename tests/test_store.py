from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from helpers import write_synth_store

from robolearn.data.frames import FrameReader
from robolearn.data.inspect import verify
from robolearn.data.schema import CorruptionError, EpisodeInfo, KeySpec, SchemaError, StoreError
from robolearn.data.store import DemoStore


def test_round_trip_is_bit_exact(synth_store):
    path, eps = synth_store
    store = DemoStore.open(path)
    assert store.n_episodes == len(eps)
    for i, ep in enumerate(eps):
        raw = store.read_episode(i, align=False)
        np.testing.assert_array_equal(raw["action"], ep["action"])
        np.testing.assert_array_equal(raw["state"], ep["state"])
        np.testing.assert_array_equal(raw["cam_image"], ep["image"])
        np.testing.assert_array_equal(raw["cam_depth"], ep["depth"])
        np.testing.assert_array_equal(store.timestamps("control", i, "host"), ep["t_ctrl"])
        np.testing.assert_array_equal(store.timestamps("control", i, "device"), ep["t_ctrl"] + 0.01)
        np.testing.assert_array_equal(store.timestamps("cam", i, "host"), ep["t_cam"])
        info = store.episode_info(i)
        assert info.length == len(ep["action"]) and info.seed == i and info.success == (i % 2 == 0)
        vals, prov = store.read_column("reward", i)
        np.testing.assert_array_equal(vals, np.linspace(0, 1, len(ep["action"]), dtype=np.float32))
        assert prov == {"source": "test"}
    assert store.keys["cam_depth"][1].depth_scale == 0.001


def test_frame_reader_matches_zarr_and_is_fast_path(synth_store):
    path, eps = synth_store
    store = DemoStore.open(path)
    for key in ("cam_image", "cam_depth"):
        n = store.committed_rows("cam")
        reader = FrameReader(store.array(key), n)
        assert reader.fast
        rows = np.random.default_rng(1).integers(0, n, 300)
        rows[:3] = [0, 0, n - 1]
        np.testing.assert_array_equal(reader.read(rows), store.array(key).get_orthogonal_selection((rows,)))
        with pytest.raises(IndexError):
            reader.read(np.array([n]))


def test_uncommitted_episode_is_invisible_and_discarded(tmp_path):
    path = tmp_path / "s.zarr"
    write_synth_store(path, [10])
    store = DemoStore.open(path, mode="a")
    reader = DemoStore.open(path)
    w = store.begin_episode()
    w.extend("control", np.arange(5.0), np.arange(5.0), action=np.ones((5, 4)), state=np.ones((5, 3)))
    w.extend("cam", np.arange(5.0), np.arange(5.0), cam_image=np.zeros((5, 16, 16, 3), np.uint8),
             cam_depth=np.zeros((5, 16, 16), np.uint16))
    w._flush("control")
    assert reader.refresh().n_episodes == 1  # appended rows are not an episode
    w.discard()
    assert store.array("action").shape[0] == 10
    with store.begin_episode() as w2:
        w2.extend("control", np.arange(3.0), np.arange(3.0), action=np.full((3, 4), 7.0), state=np.ones((3, 3)))
        w2.extend("cam", np.arange(3.0), np.arange(3.0), cam_image=np.zeros((3, 16, 16, 3), np.uint8),
                  cam_depth=np.zeros((3, 16, 16), np.uint16))
        w2.commit(EpisodeInfo(task="t"))
    assert reader.refresh().n_episodes == 2
    np.testing.assert_array_equal(reader.read("action", 1), np.full((3, 4), 7.0, np.float32))
    # an exception inside the block drops the episode
    with pytest.raises(RuntimeError), store.begin_episode() as w3:
        w3.extend("control", np.arange(3.0), np.arange(3.0), action=np.ones((3, 4)), state=np.ones((3, 3)))
        raise RuntimeError("camera died")
    assert reader.refresh().n_episodes == 2
    store.close()


def test_camera_frames_are_written_a_whole_shard_at_a_time(tmp_path):
    """640x480 frames get 32-frame shards (small ones keep 128), and a recording writes each shard file once,
    when it is full, instead of rewriting it for every batch; an episode starting mid-shard first fills it."""
    from robolearn.features import Feature

    store = DemoStore.open(tmp_path / "s.zarr", mode="a")
    store.declare_stream("cam", {"cam_image": Feature((480, 640, 3), "uint8", "rgb"),
                                 "cam_depth": Feature((480, 640), "uint16", "depth", depth_scale=0.001)})
    store.declare_stream("small", {"small_image": Feature((16, 16, 3), "uint8", "rgb")})
    assert [store.array(k).shards[0] for k in ("cam_image", "cam_depth", "small_image")] == [32, 32, 128]
    shard = tmp_path / "s.zarr" / "cam" / "cam_image" / "c"

    def frame(k: int) -> dict[str, np.ndarray]:
        return {"cam_image": np.full((480, 640, 3), k, np.uint8), "cam_depth": np.full((480, 640), k, np.uint16)}

    inodes = {}
    w = store.begin_episode()
    for k in range(70):
        w.add("cam", k, k, **frame(k))
        if k in (30, 62):
            assert store.array("cam_image").shape[0] == (0 if k == 30 else 32)  # still buffered
        if k in (31, 63):  # a shard is full: written now, and never again
            inodes[k // 32] = (shard / str(k // 32) / "0" / "0").stat().st_ino
    w.commit(EpisodeInfo(task="t"))
    assert {i: (shard / str(i) / "0" / "0").stat().st_ino for i in inodes} == inodes
    w = store.begin_episode()  # starts at row 70: its first write fills shard 2 up to row 96
    for k in range(70, 100):
        w.add("cam", k, k, **frame(k))
        if k == 94:
            assert store.array("cam_image").shape[0] == 70
    assert store.array("cam_image").shape[0] == 96
    w.commit(EpisodeInfo(task="t"))
    assert (shard / "0" / "0" / "0").stat().st_ino == inodes[0]
    got = store.array("cam_image")[:, 0, 0, 0]
    np.testing.assert_array_equal(got, np.arange(100, dtype=np.uint8))
    np.testing.assert_array_equal(store.array("cam_depth")[:, 5, 7], np.arange(100, dtype=np.uint16))
    store.close()


def test_killed_writer_tail_is_cut_on_reopen(tmp_path):
    path = tmp_path / "s.zarr"
    write_synth_store(path, [12, 9])
    code = f"""
import numpy as np, os
from robolearn.data.store import DemoStore
s = DemoStore.open({str(path)!r}, mode="a")
w = s.begin_episode()
w.extend("control", np.arange(50.0), np.arange(50.0), action=np.ones((50, 4)), state=np.ones((50, 3)))
w.extend("cam", np.arange(40.0), np.arange(40.0), cam_image=np.ones((40, 16, 16, 3), np.uint8),
         cam_depth=np.ones((40, 16, 16), np.uint16))
w._flush("control"); w._flush("cam")
os.kill(os.getpid(), 9)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert res.returncode == -9
    assert zarr.open_array(str(path / "control" / "action")).shape[0] == 21 + 50  # the tail is on disk
    reader = DemoStore.open(path)
    assert reader.n_episodes == 2 and verify(path).ok
    with DemoStore.open(path, mode="a") as w:  # a writer cuts it off
        assert w.array("action").shape[0] == 21 and w.array("cam_image").shape[0] == reader.committed_rows("cam")


def test_second_writer_is_refused(tmp_path):
    path = tmp_path / "s.zarr"
    with DemoStore.open(path, mode="a"):
        with pytest.raises(StoreError, match="being written by another process"):
            DemoStore.open(path, mode="a")
    DemoStore.open(path, mode="a").close()  # released on close


def test_wrong_shapes_and_dtypes_are_refused(synth_store):
    path, _ = synth_store
    with DemoStore.open(path, mode="a") as store:
        w = store.begin_episode()
        with pytest.raises(SchemaError, match=r"control/action: expected sample shape \(4,\)"):
            w.extend("control", np.arange(2.0), np.arange(2.0), action=np.ones((2, 5)), state=np.ones((2, 3)))
        with pytest.raises(SchemaError, match="cam/cam_image: expected uint8"):
            w.extend("cam", np.arange(2.0), np.arange(2.0), cam_image=np.ones((2, 16, 16, 3), np.float32),
                     cam_depth=np.ones((2, 16, 16), np.uint16))
        with pytest.raises(SchemaError, match="expects keys"):
            w.extend("control", np.arange(2.0), np.arange(2.0), action=np.ones((2, 4)))
        with pytest.raises(SchemaError, match="non-finite"):
            w.extend("control", np.arange(1.0), np.arange(1.0), action=np.full((1, 4), np.nan), state=np.ones((1, 3)))
        with pytest.raises(SchemaError, match="already has 5 episodes"):
            store.declare_stream("wrist", {"wrist_image": KeySpec((16, 16, 3), "uint8", "rgb")})
        w.discard()


def test_other_schema_version_is_refused(synth_store):
    path, _ = synth_store
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["robolearn"]["schema_version"] = 99
    (path / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(SchemaError, match="schema version 99"):
        DemoStore.open(path)
    assert "schema version 99" in verify(path).problems[0]


def test_not_a_store(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("x")
    with pytest.raises(StoreError, match="not a readable Zarr store"):
        DemoStore.open(tmp_path / "junk")
    with pytest.raises(StoreError, match="no store at"):
        DemoStore.open(tmp_path / "missing")


def _shard_file(path: Path, key_dir: str) -> Path:
    return next(p for p in (path / key_dir / "c").rglob("*") if p.is_file())


def test_corrupt_image_chunk_is_named(synth_store):
    path, _ = synth_store
    shard = _shard_file(path, "cam/cam_image")
    raw = bytearray(shard.read_bytes())
    raw[40:60] = b"\xff" * 20  # inside the first frames' data, index intact
    shard.write_bytes(bytes(raw))
    rep = verify(path)
    assert not rep.ok
    assert "episode 0, key cam/cam_image" in rep.problems[0]
    store = DemoStore.open(path)
    with pytest.raises(CorruptionError, match="cam_image: frame 0"):
        FrameReader(store.array("cam_image"), store.committed_rows("cam")).read(np.array([0]))


def test_truncated_shard_is_named(synth_store):
    path, _ = synth_store
    shard = _shard_file(path, "cam/cam_depth")
    shard.write_bytes(shard.read_bytes()[:100])
    rep = verify(path)
    assert not rep.ok and "key cam/cam_depth" in rep.problems[0]
    store = DemoStore.open(path)
    with pytest.raises(CorruptionError, match="truncated|corrupt index"):
        FrameReader(store.array("cam_depth"), store.committed_rows("cam")).read(np.array([3]))


def test_corrupt_lowdim_chunk_is_named(synth_store):
    path, _ = synth_store
    chunk = _shard_file(path, "control/state")
    chunk.write_bytes(b"garbage" * 10)
    rep = verify(path)
    assert not rep.ok and "key control/state" in rep.problems[0] and "episode 0" in rep.problems[0]


def test_post_hoc_column_with_provenance(synth_store):
    path, eps = synth_store
    with DemoStore.open(path, mode="a") as store:
        store.set_column("progress", 2, np.linspace(0, 1, len(eps[2]["action"])), {"model": "vlm-x", "prompt": "p"})
        with pytest.raises(SchemaError, match="expected 45 values"):
            store.set_column("progress", 2, np.zeros(3), {})
    store = DemoStore.open(path)
    vals, prov = store.read_column("progress", 2)
    assert prov == {"model": "vlm-x", "prompt": "p"} and vals[-1] == 1.0
    vals, prov = store.read_column("progress", 0)
    assert prov is None and np.isnan(vals).all()
    assert verify(path).ok


def test_plain_zarr_reads_the_store(synth_store):
    path, eps = synth_store
    arr = zarr.open_array(str(path / "cam" / "cam_image"))  # codec found via entry point
    np.testing.assert_array_equal(arr[: len(eps[0]["image"])], eps[0]["image"])
