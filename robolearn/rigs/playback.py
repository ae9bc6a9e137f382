"""RealSense recordings with known content for the cameras of a rig file (``type: playback``).

``robolearn hardware make-playback --rig hardware/sim_twin.yaml`` writes, for every playback camera
of the rig, a recording made through the RealSense SDK's own software device and recorder (see
:mod:`robolearn.hardware.cameras.playback`): a test pattern whose pixels encode the camera and the
frame index, so a recorded store can be checked frame by frame against what the camera sent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from robolearn.errors import UserError

T0_MS = 1_700_000_000_000.0  # recordings start at a fixed device time (global time, milliseconds)


def pattern(camera: int, k: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame ``k`` of camera ``camera``'s pattern: (RGB uint8 HxWx3, depth uint16 HxW)."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.empty((height, width, 3), np.uint8)
    rgb[..., 0] = (x + 3 * k) % 256
    rgb[..., 1] = (y + 5 * k + 40 * camera) % 256
    rgb[..., 2] = (7 * k + 50 * camera) % 256
    depth = (300 + (x + y + 11 * k + 97 * camera) % 4000).astype(np.uint16)
    return rgb, depth


def make_playback(rig: str, frames: int = 90, only_missing: bool = False) -> list[Path]:
    """Write every playback camera's recording of rig file ``rig``; returns the paths written."""
    from robolearn.hardware.cameras.playback import RecordedFrame, write_recording
    from robolearn.rigs.hardware import load_rig_config

    if frames < 1:
        raise UserError(f"--frames must be at least 1, got {frames}")
    cfg = load_rig_config(rig)
    cams = [c for c in cfg.cameras if c.type == "playback"]
    if not cams:
        raise UserError(f"rig {cfg.name} has no playback cameras (type: playback) to make recordings for")
    out = []
    for i, cam in enumerate(cfg.cameras):
        if cam.type != "playback" or (only_missing and Path(cam.path).exists()):
            continue
        depth_scale = 0.0001 if "wrist" in cam.name else 0.001  # as a D405 and a D435 report

        def gen(i: int = i, cam=cam):  # noqa: ANN001, ANN202
            for k in range(frames):
                rgb, depth = pattern(i, k, cam.height, cam.width)
                yield RecordedFrame(rgb, k + 1, T0_MS + k * 1000.0 / cam.fps, depth if cam.depth else None)

        out.append(write_recording(Path(cam.path), gen(), cam.width, cam.height, fps=cam.fps, depth=cam.depth,
                                   depth_scale=depth_scale, serial=f"{i + 1:012d}",
                                   model="Intel RealSense D405" if "wrist" in cam.name else "Intel RealSense D435"))
    return out
