"""A plain UVC camera (or a video file standing in for one) through OpenCV's ``cv2.VideoCapture``.

A video device (``/dev/video0``) is asked for the configured size and rate and streams live; its
device time is the host clock (UVC frames carry no usable device clock through OpenCV). A video
file plays like a RealSense recording: non-real-time by default (every frame, the producer waits
for the consumer), paced by ``playback_speed``, with the file's own timestamps (``CAP_PROP_POS_MSEC``).

Runs in the camera process only.
"""

from __future__ import annotations

import time
from typing import Any

from robolearn.hardware.cameras.base import CameraConfig
from robolearn.hardware.cameras.process import Captured, EndOfStream, Source, SourceError


class UvcSource(Source):
    def __init__(self, cfg: CameraConfig, clock_origin: float | None) -> None:
        self.cfg, self.origin = cfg, clock_origin or 0.0
        self.device = str(cfg.path).startswith("/dev/")
        self.recorded = not self.device
        self.blocking = self.recorded and not cfg.realtime
        self.clock = "host" if self.device else "video-file"
        self._cap: Any = None
        self._n = 0

    def open(self) -> dict:
        import cv2

        cfg = self.cfg
        if self.device:
            cap = cv2.VideoCapture(str(cfg.path), cv2.CAP_V4L2)
            if cap.isOpened():
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, cfg.width)
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cfg.height)
                cap.set(cv2.CAP_PROP_FPS, cfg.fps)
        else:
            cap = cv2.VideoCapture(str(cfg.path))
        if not cap.isOpened():
            raise SourceError(f"OpenCV cannot open {cfg.path}")
        self._cap = cap
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if (w, h) != (cfg.width, cfg.height):
            raise SourceError(f"{cfg.path} delivers {w}x{h}, configured {cfg.width}x{cfg.height} "
                              "(set width and height to match)")
        return {"serial": cfg.serial, "model": cap.getBackendName(), "width": w, "height": h,
                "fps": float(cap.get(cv2.CAP_PROP_FPS)) or cfg.fps, "clock": self.clock,
                "file": None if self.device else str(cfg.path), "depth_scale": None}

    def read(self, timeout: float) -> Captured | None:
        import cv2

        ok, bgr = self._cap.read()  # a live device blocks here; the consumer's timeout sees a stall
        t_host = time.time()
        if not ok:
            if self.recorded:
                raise EndOfStream()
            time.sleep(min(timeout, 0.01))
            return None
        if bgr.shape[:2] != (self.cfg.height, self.cfg.width):
            raise SourceError(f"{self.cfg.path} delivered a {bgr.shape[1]}x{bgr.shape[0]} frame, configured "
                              f"{self.cfg.width}x{self.cfg.height}")
        rgb = bgr[..., ::-1]  # a view: the one copy is into the ring
        fnum = self._n
        self._n += 1
        if self.recorded:
            t_device = float(self._cap.get(cv2.CAP_PROP_POS_MSEC)) / 1000.0
        else:
            t_device = t_host - self.origin
        return Captured({self.cfg.image_key: rgb}, fnum, t_device, t_host - self.origin)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
