"""robolearn: demonstrations in Zarr, diffusion and flow policies, residual RL with VLM rewards."""

import os as _os

# MuJoCo picks its GL backend at import time. With no display (servers, CI, containers) the default
# GLFW backend fails, so fall back to EGL, which Mesa provides on the CPU. A user's explicit choice wins.
if "MUJOCO_GL" not in _os.environ and not (_os.environ.get("DISPLAY") or _os.environ.get("WAYLAND_DISPLAY")):
    _os.environ["MUJOCO_GL"] = "egl"
if _os.environ.get("MUJOCO_GL") == "egl":
    _os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

__version__ = "0.1.0"
