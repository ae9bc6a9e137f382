"""Offscreen rendering of fixed MuJoCo cameras to RGB and depth, owning its GL context."""

from __future__ import annotations

import atexit
import os
import weakref
from collections.abc import Sequence
from typing import Any

import mujoco
import numpy as np

DEPTH_SCALE = 0.001  # metres per depth unit (uint16 millimetres)
_OBJ_GEOM = mujoco.mjtObj.mjOBJ_GEOM
_GEOM_NONE = mujoco.mjtGeom.mjGEOM_NONE




def _gl_context_class() -> Any:
    # mujoco.GLContext is bound at `import mujoco` time; honour MUJOCO_GL as it is now instead.
    backend = os.environ.get("MUJOCO_GL", "").lower()
    if backend == "egl":
        from mujoco.egl import GLContext
    elif backend == "osmesa":
        from mujoco.osmesa import GLContext
    else:
        from mujoco.glfw import GLContext
    return GLContext


_live_renderers: weakref.WeakSet[CameraRenderer] = weakref.WeakSet()
_atexit_registered = False


def _close_live_renderers() -> None:
    for r in list(_live_renderers):
        r.close()


class CameraRenderer:
    """Renders fixed model cameras to upright uint8 RGB and uint16-millimetre depth.

    Owns its GL context and MjrContext (robosuite's render context is never created), so it can free
    both in the right order: MjrContext while its GL context is current, then the GL context, all
    before EGL is terminated at exit.
    """

    def __init__(self, model: mujoco.MjModel, cameras: Sequence[str], size: int, depth: bool) -> None:
        global _atexit_registered
        self._model = model
        self._size = size
        self._depth = depth
        self._cam_ids = [model.camera(name).id for name in cameras]
        self._names = list(cameras)
        # Multisampling doubles the render cost on software GL and only smooths edges.
        model.vis.quality.offsamples = 0
        # The offscreen buffer only needs to hold the requested image.
        model.vis.global_.offwidth = size
        model.vis.global_.offheight = size
        self._ctx = _gl_context_class()(size, size)
        self._ctx.make_current()
        self._con = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_50)  # no text is drawn
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._con)
        # Read depth reversed (1 at the near plane, 0 at the far plane): float precision then stays
        # fine at range instead of being spent next to the near plane.
        self._con.readDepthMap = mujoco.mjtDepthMap.mjDEPTH_ZEROFAR
        self._scene = mujoco.MjvScene(model, maxgeom=2000)
        # Planar reflections re-render the whole scene per reflective plane/box (floor reflectance 0.01,
        # nut boxes): > 2x the cost for a change of ~1 grey level on average at 84x84.
        self._scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        self._opt = mujoco.MjvOption()
        self._opt.geomgroup[0] = 0  # hide collision geoms, as robosuite does
        self._pert = mujoco.MjvPerturb()
        self._cam = mujoco.MjvCamera()
        self._cam.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._rect = mujoco.MjrRect(0, 0, size, size)
        # View-frustum culling (see _cull_outside_view). Exact only without shadows: a caster outside
        # the view can shade what is inside.
        self.cull = not bool(np.any(model.light_castshadow))
        self._rbound = model.geom_rbound * 1.02 + 0.005  # bounding spheres, slightly inflated
        self._rbound[(model.geom_rbound <= 0) | (model.geom_type == mujoco.mjtGeom.mjGEOM_PLANE)] = np.inf
        self._tan_half = np.tan(np.deg2rad(model.cam_fovy[self._cam_ids]) / 2) * 1.05
        self._rgb = np.empty((size, size, 3), np.uint8)
        self._zbuf = np.empty((size, size), np.float32)
        extent = float(model.stat.extent)
        self._near = float(model.vis.map.znear) * extent
        self._far = float(model.vis.map.zfar) * extent
        _live_renderers.add(self)
        if not _atexit_registered:
            # Registered after the first GL context exists, hence after mujoco's eglTerminate hook, so
            # (atexit being LIFO) contexts are freed while EGL is still alive.
            atexit.register(_close_live_renderers)
            _atexit_registered = True

    def render(self, data: mujoco.MjData) -> dict[str, np.ndarray]:
        if self._con is None:
            raise RuntimeError("renderer is closed")
        self._ctx.make_current()  # another env in this thread may have made its own context current
        out: dict[str, np.ndarray] = {}
        for i, (name, cam_id) in enumerate(zip(self._names, self._cam_ids, strict=True)):
            self._cam.fixedcamid = cam_id
            mujoco.mjv_updateScene(
                self._model, data, self._opt, self._pert, self._cam, mujoco.mjtCatBit.mjCAT_ALL, self._scene
            )
            if self.cull:
                self._cull_outside_view(data, self._tan_half[i])
            mujoco.mjr_render(self._rect, self._scene, self._con)
            mujoco.mjr_readPixels(self._rgb, self._zbuf if self._depth else None, self._rect, self._con)
            # OpenGL rows run bottom-up; flip to the usual top-down image layout.
            out[f"{name}_image"] = self._rgb[::-1].copy()
            if self._depth:
                out[f"{name}_depth"] = self._depth_mm(self._zbuf[::-1])
        return out

    def _cull_outside_view(self, data: mujoco.MjData, tan_half: float) -> None:
        """Drop scene geoms whose bounding sphere lies wholly outside the camera's view frustum.

        Software GL spends nearly all its time transforming mesh vertices (the Panda meshes have
        ~170k faces), visible or not; the wrist camera sees few of them. Geoms outside the frustum
        produce no fragments, so the image is bit-identical (a test checks this).
        """
        cam = self._scene.camera[0]  # the GL camera mjv_updateScene just set up
        pos = np.asarray(cam.pos, np.float64)
        fwd = np.asarray(cam.forward, np.float64)
        up = np.asarray(cam.up, np.float64)
        rel = data.geom_xpos - pos
        z, x, y = rel @ fwd, rel @ np.cross(fwd, up), rel @ up
        norm = np.sqrt(1.0 + tan_half * tan_half)  # distance to the side planes |x| = tan_half * z
        r = self._rbound
        outside = (z < -r) | ((np.abs(x) - tan_half * z) / norm > r) | ((np.abs(y) - tan_half * z) / norm > r)
        if not outside.any():
            return
        for g in self._scene.geoms[: self._scene.ngeom]:
            if g.objtype == _OBJ_GEOM and outside[g.objid]:
                g.type = _GEOM_NONE  # skipped by mjr_render

    def _depth_mm(self, zbuf: np.ndarray) -> np.ndarray:
        # Invert the reversed-Z perspective projection: depth = n*f / (z*(f - n) + n), in metres.
        n, f = self._near, self._far
        metres = (n * f) / (zbuf.astype(np.float64) * (f - n) + n)
        return np.clip(np.rint(metres / DEPTH_SCALE), 0, np.iinfo(np.uint16).max).astype(np.uint16)

    def close(self) -> None:
        if self._con is None:
            return
        self._ctx.make_current()
        self._con.free()
        self._con = None
        self._ctx.free()
        _live_renderers.discard(self)
