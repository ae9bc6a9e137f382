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
