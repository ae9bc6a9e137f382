"""Cameras: RealSense (live or a recording standing in for one) and UVC/OpenCV, one process each.

::

    from robolearn.hardware.cameras import CameraConfig, open_camera

    cam = open_camera(CameraConfig(name="front", type="playback", path=Path("front.db3"), depth=True))
    f = cam.latest()                     # f.values["front_image"] (H, W, 3) uint8, ["front_depth"] uint16
    new = cam.frames_since(f.frame_number)  # every later frame, once (what a recorder stores)
    cam.features["front_depth"].depth_scale, cam.dropped_frames, cam.clock
    cam.close()

A camera that stops delivering raises :class:`~robolearn.rigs.RigError` from these reads within
``timeout_s``; a recording played to its end raises :class:`PlaybackEnded` (a ``RigError``).
"""

from robolearn.hardware.cameras.base import (
    DEFAULT_WARMUP,
    HW_SYNC_MODES,
    CameraConfig,
    CameraStream,
    Frame,
    PlaybackEnded,
    open_camera,
)

__all__ = ["DEFAULT_WARMUP", "HW_SYNC_MODES", "CameraConfig", "CameraStream", "Frame", "PlaybackEnded",
           "open_camera"]
