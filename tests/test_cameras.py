"""Cameras through their real processes: RealSense recordings built here with the SDK's software device
and recorder (known pixels, frame numbers, timestamps, depth scale), played back as cameras; a video
file through OpenCV; stalls, dead processes and bad configurations."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import pid_running

pytest.importorskip("pyrealsense2")

from robolearn.config import load_config  # noqa: E402
from robolearn.errors import ConfigError, MissingFileError  # noqa: E402
from robolearn.hardware.cameras import CameraConfig, PlaybackEnded, open_camera  # noqa: E402
from robolearn.hardware.cameras.playback import RecordedFrame, recording_info, write_recording  # noqa: E402
from robolearn.rigs import RigError  # noqa: E402

pytestmark = pytest.mark.realtime  # has the CPU alone under xdist (conftest.py)

W, H, FPS = 32, 24, 30
T0_MS = 1_763_700_000_000.0  # a global-time timestamp (ms since the epoch)
GAP_AT = 20  # frame numbers jump by 3 after this frame: two frames the camera lost


def _frame_numbers(n: int) -> list[int]:
    return [100 + i + (2 if i > GAP_AT else 0) for i in range(n)]


def _color(i: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed * 1000 + i)
    return rng.integers(0, 256, (H, W, 3), dtype=np.uint8)


def _depth(i: int, seed: int) -> np.ndarray:
    return (np.arange(H * W, dtype=np.uint16).reshape(H, W) + 100 * i + seed).astype(np.uint16)


def _recording(path: Path, n: int, seed: int, depth_scale: float, serial: str, silence_after: int | None = None,
               silence_ms: float = 0.0, realtime: bool = False, single_sensor: bool = False) -> Path:
    def frames():
        for i, fn in enumerate(_frame_numbers(n)):
            t = T0_MS + (fn - 100) * 1000.0 / FPS + (silence_ms if silence_after is not None and i > silence_after else 0)
            yield RecordedFrame(_color(i, seed), fn, t, _depth(i, seed), depth_t_ms=t + 1.5)  # depth 1.5 ms later

    return write_recording(path, frames(), W, H, FPS, depth_scale=depth_scale, serial=serial, realtime=realtime,
                           single_sensor=single_sensor)


@pytest.fixture(scope="module")
def recs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("recs")
    return {"a": _recording(d / "a.db3", 40, seed=1, depth_scale=0.001, serial="111111111111"),
            # D405-like: colour and depth from one sensor, 0.1 mm depth units.
            "b": _recording(d / "b.db3", 30, seed=2, depth_scale=0.0001, serial="222222222222", single_sensor=True),
            "live": _recording(d / "live.db3", 40, seed=1, depth_scale=0.001, serial="444444444444", realtime=True),
            "silent": _recording(d / "silent.db3", 40, seed=3, depth_scale=0.001, serial="333333333333",
                                 silence_after=8, silence_ms=3000.0)}


def _cfg(name: str, path: Path, **kw) -> CameraConfig:
    # A generous stall timeout where stalls are not under test: the test machine may be busy.
    base = dict(name=name, type="playback", path=path, width=W, height=H, fps=FPS, depth=True, align_depth=False,
                timeout_s=2.0)
    return CameraConfig(**{**base, **kw})


def _drain(cam, slow_s: float = 0.0, limit_s: float = 30.0, after: int | None = None) -> list:
    got, fn, deadline = [], after, time.time() + limit_s
    while time.time() < deadline:
        try:
            new = cam.frames_since(fn)
        except PlaybackEnded:
            return got
        got += new
        if new:
            fn = new[-1].frame_number
        time.sleep(slow_s or 0.002)
    raise AssertionError("the recording did not end")


def _check_stream(frames, n: int, seed: int, name: str) -> None:
    fns = _frame_numbers(n)
    assert [f.frame_number for f in frames] == fns  # every frame, in order, none skipped
    for i, f in enumerate(frames):
        np.testing.assert_array_equal(f.values[f"{name}_image"], _color(i, seed))
        np.testing.assert_array_equal(f.values[f"{name}_depth"], _depth(i, seed))
        assert f.t_device == pytest.approx((T0_MS + (fns[i] - 100) * 1000.0 / FPS) / 1000.0, abs=1e-6)


def test_a_recording_plays_as_a_camera_every_frame_with_its_pixels_timestamps_and_depth_scale(recs):
    info = recording_info(recs["a"])
    assert info["serial"] == "111111111111" and info["depth_scale"] == pytest.approx(0.001)
    assert {(s["stream"], s["format"], s["width"], s["height"], s["fps"]) for s in info["streams"]} == \
        {("color", "rgb8", W, H, FPS), ("depth", "z16", W, H, FPS)}
    t_open = time.time()
    with open_camera(_cfg("front", recs["a"], playback_speed=0, ring_frames=4), clock_origin=t_open) as cam:
        assert cam.serial == "111111111111" and cam.clock == "recording-global"
        feats = cam.features
        assert feats["front_image"].shape == (H, W, 3) and feats["front_image"].kind == "rgb"
        assert feats["front_depth"].depth_scale == 0.001 and feats["front_depth"].dtype == "uint16"
        # (Nothing is acknowledged yet, so the camera has not overwritten frame 100.)
        t100 = (T0_MS + 0 * 1000.0 / FPS) / 1000.0
        near = cam.nearest(t100 + 0.01, clock="device")  # 10 ms after frame 100, 23 ms before 101
        assert near.frame_number == 100 and near.t_device == pytest.approx(t100)
        first = cam.frames_since()
        assert first and first[0].frame_number == 100
        view = cam.latest(copy=False)  # zero-copy: read-only, valid while the ring holds it
        assert not view.values["front_image"].flags.writeable and cam.still_valid(view)
        # A consumer slower than the recording, through a 4-slot ring: the camera waits for it.
        frames = first + _drain(cam, slow_s=0.01, after=first[-1].frame_number)
        _check_stream(frames, 40, seed=1, name="front")
        assert cam.dropped_frames == 2  # the gap in the recorded frame numbers
        cam.reset_dropped()
        assert cam.dropped_frames == 0
        t_host = np.array([f.t_host for f in frames])
        assert np.all(np.diff(t_host) >= 0) and 0 <= t_host[0] and t_host[-1] <= time.time() - t_open
        with pytest.raises(PlaybackEnded, match="ended after 40 frames"):
            cam.latest()


def test_two_cameras_at_once_paced_at_the_recorded_rate(recs):
    cams = [open_camera(_cfg("left", recs["a"], playback_speed=2.0)),
            open_camera(_cfg("right", recs["b"], playback_speed=2.0))]
    try:
        got: dict[str, list] = {"left": [], "right": []}
        last: dict[str, int | None] = {"left": None, "right": None}
        live = {"left", "right"}
        deadline = time.time() + 30
        while live and time.time() < deadline:
            for cam in cams:
                if cam.name not in live:
                    continue
                try:
                    new = cam.frames_since(last[cam.name])
                except PlaybackEnded:
                    live.discard(cam.name)
                    continue
                got[cam.name] += new
                if new:
                    last[cam.name] = new[-1].frame_number
            time.sleep(0.005)
        assert not live
        _check_stream(got["left"], 40, seed=1, name="left")
        _check_stream(got["right"], 30, seed=2, name="right")
        assert cams[0].depth_scale == 0.001 and cams[1].depth_scale == 0.0001  # each device's own
        # Paced: frames leave the camera process at twice the recorded rate (the host clock follows the device's).
        for name in ("left", "right"):
            f = got[name]
            host_span, dev_span = f[-1].t_host - f[0].t_host, f[-1].t_device - f[0].t_device
            assert dev_span / 2 * 0.9 <= host_span < dev_span / 2 + 3.0, name  # not faster; late only if starved
    finally:
        for cam in cams:
            cam.close()


def test_depth_aligned_to_colour_is_reprojected_by_the_sdk_after_the_warmup_frames(recs):
    with open_camera(_cfg("front", recs["a"], playback_speed=0, align_depth=True, warmup_frames=3)) as cam:
        frames = _drain(cam)
        assert cam.dropped_frames == 2  # warm-up frames are not drops; the recorded gap is
    assert [f.frame_number for f in frames] == _frame_numbers(40)[3:]
    for i in (3, 10, 39):
        frame = frames[i - 3]
        aligned, raw = frame.values["front_depth"], _depth(i, 1)
        np.testing.assert_array_equal(frame.values["front_image"], _color(i, 1))
        assert aligned.shape == raw.shape and not np.array_equal(aligned, raw)  # moved onto the colour grid
        valid = aligned[aligned > 0]
        assert valid.size > 0.3 * aligned.size
        assert np.isin(valid, raw).all()  # every aligned value is one of the recorded depths


def test_a_live_camera_overwrites_a_slow_reader_and_counts_what_it_lost(recs):
    # Real-time playback behaves as a live camera: it never waits for the consumer.
    # (A recording written in real time: the SDK replays it at 30 fps.)
    with open_camera(_cfg("front", recs["live"], realtime=True, ring_frames=4)) as cam:
        first = cam.latest()
        cam.reset_dropped()  # count from the frame we have
        time.sleep(0.5)  # 15 frames go by: the 4-slot ring is overwritten
        rest = _drain(cam, after=first.frame_number)
        assert rest and rest[-1].frame_number == _frame_numbers(40)[-1]
        span = rest[-1].frame_number - first.frame_number
        assert len(rest) < span and len(rest) + cam.dropped_frames == span  # every frame: received or counted
        for f in rest:
            i = _frame_numbers(40).index(f.frame_number)
            np.testing.assert_array_equal(f.values["front_image"], _color(i, 1))


def test_a_camera_that_goes_silent_raises_within_its_timeout(recs):
    # Recorded silence: the device delivered nothing for 3 s after frame 8; paced playback replays it.
    with open_camera(_cfg("wrist", recs["silent"], playback_speed=1.0, timeout_s=0.3)) as cam:
        seen, t_last = [], None
        with pytest.raises(RigError, match=r"camera wrist \(333333333333\) delivered no frame for 0\.\d\d s") as ei:
            while True:
                f = cam.latest()
                if not seen or f.frame_number != seen[-1]:
                    seen.append(f.frame_number)
                    t_last = time.time()
                time.sleep(0.005)
        detected_after = time.time() - t_last
        assert not isinstance(ei.value, PlaybackEnded)
        assert seen[-1] == _frame_numbers(40)[8]
        age = float(str(ei.value).split("no frame for ")[1].split(" s")[0])
        assert age >= 0.3 and detected_after < 0.3 + 0.5  # within the timeout (plus scheduling on a busy machine)


def test_a_stopped_or_killed_camera_process_is_an_error_not_a_hang(recs):
    cam = open_camera(_cfg("front", recs["a"], playback_speed=1.0, timeout_s=0.25))
    try:
        cam.latest()
        os.kill(cam.pid, signal.SIGSTOP)  # hung: no heartbeat
        t = time.time()
        with pytest.raises(RigError, match="delivered no frame"):
            while time.time() - t < 5:
                cam.latest()
                time.sleep(0.01)
        assert time.time() - t < 0.25 + 0.4
        os.kill(cam.pid, signal.SIGCONT)
        os.kill(cam.pid, signal.SIGKILL)  # gone
        cam._process.join(5)
        with pytest.raises(RigError, match=r"process exited \(code -9\)"):
            cam.latest()
    finally:
        cam.close()


def test_loop_keeps_frame_numbers_and_times_growing(tmp_path):
    def frames():
        for i in range(5):
            yield RecordedFrame(np.full((H, W, 3), i, np.uint8), i, T0_MS + i * 1000.0 / FPS)

    rec = write_recording(tmp_path / "short.db3", frames(), W, H, FPS, depth=False)
    with open_camera(_cfg("top", rec, depth=False, loop=True, playback_speed=0)) as cam:
        got, fn = [], None
        while len(got) < 13:
            new = cam.frames_since(fn)
            got += new
            fn = new[-1].frame_number if new else fn
            time.sleep(0.002)
    assert [f.frame_number for f in got[:13]] == list(range(13))
    assert [int(f.values["top_image"][0, 0, 0]) for f in got[:13]] == [i % 5 for i in range(13)]
    assert np.all(np.diff([f.t_device for f in got[:13]]) > 0)
    assert "top_depth" not in got[0].values


def test_a_video_file_through_opencv_is_a_uvc_camera(tmp_path):
    cv2 = pytest.importorskip("cv2")
    path = tmp_path / "cam.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 20.0, (W, H))
    colors = [(40 * i % 256, 255 - 40 * i % 256, 128) for i in range(12)]  # RGB, flat frames: JPEG keeps them
    for rgb in colors:
        writer.write(np.full((H, W, 3), rgb[::-1], np.uint8))
    writer.release()
    with open_camera(CameraConfig(name="usb", type="uvc", path=path, width=W, height=H, fps=20,
                                  playback_speed=0)) as cam:
        assert cam.features == {"usb_image": cam.features["usb_image"]} and cam.clock == "video-file"
        frames = _drain(cam)
    assert [f.frame_number for f in frames] == list(range(12))
    for f, rgb in zip(frames, colors, strict=True):
        assert np.abs(f.values["usb_image"].astype(int) - np.array(rgb)).max() <= 3
    assert np.diff([f.t_device for f in frames]) == pytest.approx(np.full(11, 0.05), abs=1e-3)


def test_bad_configurations_and_devices_fail_with_one_line(recs, tmp_path):
    with pytest.raises(ConfigError, match="rig.yaml: cameras.front.path: a playback camera needs path"):
        load_config(CameraConfig, {"name": "front", "type": "playback"}, where="rig.yaml", prefix="cameras.front")
    with pytest.raises(ConfigError, match="depth: a uvc camera has no depth stream"):
        load_config(CameraConfig, {"name": "u", "type": "uvc", "path": "/dev/video0", "depth": True})
    with pytest.raises(ConfigError, match="unknown key 'fsp'"):
        load_config(CameraConfig, {"name": "u", "fsp": 30})
    with pytest.raises(MissingFileError, match="playback file not found"):
        open_camera(_cfg("x", tmp_path / "nope.db3"))
    with pytest.raises(RigError, match=r"has no colour stream 640x480@30; it has: 32x24@30 rgb8"):
        open_camera(_cfg("x", recs["a"], width=640, height=480))
    # A live camera through the real SDK, on a machine where none is connected.
    with pytest.raises(RigError, match=r"camera cam \(123\): RealSense 123 is not connected"):
        open_camera(CameraConfig(name="cam", type="realsense", serial="123"))


def test_hardware_list_without_devices_says_so_and_exits_0():
    r = subprocess.run([sys.executable, "-m", "robolearn", "hardware", "list"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}, timeout=60)
    assert r.returncode == 0, r.stderr
    import pyrealsense2 as rs

    if not list(rs.context().query_devices()):
        assert "No RealSense devices connected" in r.stdout
    if not list(Path("/dev").glob("video*")):
        assert "No video devices" in r.stdout


def test_video_devices_are_listed_with_their_sysfs_names(tmp_path):
    from robolearn.hardware.listing import format_hardware, video_devices

    dev, sysfs = tmp_path / "dev", tmp_path / "sys"
    for n, name in ((0, "HD Pro Webcam C920"), (10, "Loopback video device"), (2, None)):
        (dev / f"video{n}").parent.mkdir(parents=True, exist_ok=True)
        (dev / f"video{n}").write_text("")
        if name:
            (sysfs / f"video{n}").mkdir(parents=True)
            (sysfs / f"video{n}" / "name").write_text(name + "\n")
    vids = video_devices(str(sysfs), str(dev))
    assert [(Path(v["path"]).name, v["name"]) for v in vids] == \
        [("video0", "HD Pro Webcam C920"), ("video2", ""), ("video10", "Loopback video device")]
    text = format_hardware({"realsense": [{"serial": "123", "model": "Intel RealSense D405", "firmware": "5.16",
                                           "usb": "3.2"}], "realsense_note": None, "video": vids})
    assert "123" in text and "Intel RealSense D405" in text and "USB 3.2" in text and "HD Pro Webcam C920" in text


def test_camera_processes_and_rings_go_when_the_consumer_is_killed(recs, tmp_path):
    script = tmp_path / "consumer.py"
    script.write_text(f"""
import os, signal
from pathlib import Path
from robolearn.hardware.cameras import CameraConfig, open_camera
if __name__ == "__main__":
    cam = open_camera(CameraConfig(name="c", type="playback", path=Path({str(recs["a"])!r}), width={W}, height={H},
                                   depth=True, loop=True))
    print(cam.pid, cam._ring.name, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert r.returncode == -signal.SIGKILL, r.stderr
    pid, ring = r.stdout.split()

    deadline = time.time() + 10
    while time.time() < deadline and (pid_running(pid) or Path(f"/dev/shm/{ring.lstrip('/')}").exists()):
        time.sleep(0.05)
    assert not pid_running(pid)  # the camera process noticed and stopped
    assert not Path(f"/dev/shm/{ring.lstrip('/')}").exists()  # the resource tracker unlinked the ring
