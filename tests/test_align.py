import numpy as np
import pytest

from robolearn.data.align import align_to_reference
from robolearn.data.store import DemoStore


def test_latest_is_causal_across_rates():
    ref = np.arange(0, 1, 0.05)  # 20 Hz control
    src = np.arange(0.013, 1, 1 / 30)  # 30 Hz camera, offset clock
    idx = align_to_reference(ref, src, "latest")
    for t, i in zip(ref, idx, strict=True):
        if t >= src[0]:
            assert src[i] <= t and (i + 1 == len(src) or src[i + 1] > t)
        else:
            assert i == 0  # before the first frame: the first frame


def test_nearest_picks_the_closest_sample():
    ref = np.array([0.0, 0.1, 0.26, 0.9])
    src = np.array([0.02, 0.12, 0.2, 0.3])
    assert align_to_reference(ref, src, "nearest").tolist() == [0, 1, 3, 3]
    assert align_to_reference(ref, src, "latest").tolist() == [0, 0, 2, 3]


def test_max_lag_reports_a_stalled_stream():
    ref = np.arange(0, 2, 0.05)
    src = np.array([0.0, 0.05, 0.1])  # camera stalls after 0.1 s
    with pytest.raises(ValueError, match="no sample within 0.2s"):
        align_to_reference(ref, src, "latest", max_lag=0.2)


def test_bad_timestamps():
    with pytest.raises(ValueError, match="backwards"):
        align_to_reference(np.arange(3.0), np.array([0.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="no samples"):
        align_to_reference(np.arange(3.0), np.array([]))


def test_store_aligns_camera_stream_at_read_time(synth_store):
    path, eps = synth_store
    store = DemoStore.open(path)
    ep = eps[2]
    aligned = store.read_episode(2, ["cam_image", "action"])
    assert aligned["cam_image"].shape[0] == aligned["action"].shape[0] == len(ep["t_ctrl"])
    expected = align_to_reference(ep["t_ctrl"], ep["t_cam"], "latest")
    np.testing.assert_array_equal(aligned["cam_image"], ep["image"][expected])
    # the stored camera stream itself was not resampled
    assert store.read_episode(2, ["cam_image"], align=False)["cam_image"].shape[0] == len(ep["t_cam"])


def test_stalled_camera_is_flagged_by_read_and_verify(tmp_path):
    # A camera that stops delivering for 0.5 s in the middle of an episode: reading with max_lag and
    # `data verify --max-lag` both name the episode and stream; without it the last frame repeats.
    import subprocess
    import sys

    from robolearn.data.inspect import verify
    from robolearn.data.schema import EpisodeInfo, Feature, SchemaError

    path = tmp_path / "stall.zarr"
    t_ctrl = np.arange(40) / 20.0
    t_cam = np.concatenate([np.arange(0, 0.8, 1 / 30), np.arange(1.3, 2.0, 1 / 30)])
    with DemoStore.open(path, mode="a") as store:
        store.declare_stream("control", {"action": Feature((2,))})
        store.declare_stream("cam", {"cam_image": Feature((4, 4, 3), "uint8", "rgb")})
        with store.begin_episode() as w:
            w.extend("control", t_ctrl, t_ctrl, action=np.zeros((40, 2), np.float32))
            w.extend("cam", t_cam, t_cam, cam_image=np.zeros((len(t_cam), 4, 4, 3), np.uint8))
            w.commit(EpisodeInfo(task="stall", fps=20.0))
    store = DemoStore.open(path)
    assert store.read_episode(0, ["cam_image"])["cam_image"].shape[0] == 40
    with pytest.raises(SchemaError, match=r"episode 0, stream 'cam'.*no sample within 0.1s"):
        store.read_episode(0, ["cam_image"], max_lag=0.1)
    assert verify(path).ok and verify(path, max_lag=0.6).ok
    rep = verify(path, max_lag=0.1)
    assert not rep.ok and "episode 0, stream cam: stalled" in rep.problems[0]
    res = subprocess.run([sys.executable, "-m", "robolearn", "data", "verify", str(path), "--max-lag", "0.1"],
                         capture_output=True, text=True)
    assert res.returncode == 1 and "stalled" in res.stderr
