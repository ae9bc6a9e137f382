"""Gymnasium-style wrapper around robosuite tasks: seeded resets, fast offscreen cameras, state re-rendering."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import warnings
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

from robolearn.sim.tasks import TaskConfig, load_task

CONTROL_FREQ = 20  # Hz
DEPTH_SCALE = 0.001  # metres per depth unit (uint16 millimetres)
_BUILD_SEED = 0  # model construction draws from np.random (e.g. Lift's cube size); fixed so all envs agree

# Names of the privileged quantities per robosuite env: bodies as objects, task-specific targets.
_OBJECT_BODIES: dict[str, dict[str, str]] = {
    "Lift": {"cube": "cube_main"},
    "PickPlaceCan": {"can": "Can_main"},
    "NutAssemblySquare": {"nut": "SquareNut_main"},
    "Stack": {"cubeA": "cubeA_main", "cubeB": "cubeB_main"},
}
_OBJ_GEOM = mujoco.mjtObj.mjOBJ_GEOM
_GEOM_NONE = mujoco.mjtGeom.mjGEOM_NONE
LOWDIM_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "robot0_joint_pos", "object")


def quat_to_rot6d(quat_xyzw: np.ndarray) -> np.ndarray:
    """The first two columns of the rotation matrix of an (x, y, z, w) quaternion, as 6 numbers.

    Unlike the quaternion it is continuous in the rotation and the same for q and -q: robosuite
    returns relative quaternions with w >= 0, so near 180 degrees their x, y, z flip sign from one
    step to the next, and a policy reading them sees a jumping input (Zhou et al. 2019)."""
    x, y, z, w = np.asarray(quat_xyzw, dtype=np.float64) / max(float(np.linalg.norm(quat_xyzw)), 1e-12)
    return np.array([
        1 - 2 * (y * y + z * z), 2 * (x * y + z * w), 2 * (x * z - y * w),
        2 * (x * y - z * w), 1 - 2 * (x * x + z * z), 2 * (y * z + x * w),
    ])


# --------------------------------------------------------------------------------------------------
# robosuite import: quiet, once
# --------------------------------------------------------------------------------------------------


class _MacroWarningFilter(logging.Filter):
    """Drops only robosuite's 'no private macro file' nag; every other robosuite log record passes."""

    _PREFIXES = (
        "No private macro file found",
        "It is recommended to use a private macro file",
        "To setup, run:",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not (msg.startswith(self._PREFIXES) and ("macro" in msg))


# Installed at import so the filter also applies if robosuite is first imported elsewhere later on.
logging.getLogger("robosuite_logs").addFilter(_MacroWarningFilter())
_robosuite: Any = None


def _import_robosuite() -> Any:
    """Import robosuite lazily (it takes ~1 s), without its macro-file nag."""
    global _robosuite
    if _robosuite is None:
        with warnings.catch_warnings():
            # robosuite logs that nag via the deprecated Logger.warn.
            warnings.filterwarnings(
                "ignore", message=".*'warn' method is deprecated", category=DeprecationWarning
            )
            import robosuite

        _robosuite = robosuite
    return _robosuite


@contextlib.contextmanager
def _np_global_seed(seed: int) -> Iterator[None]:
    """Seed numpy's global RNG (robosuite samples placements from it) and restore the caller's state after."""
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(saved)


# --------------------------------------------------------------------------------------------------
# Offscreen camera renderer
# --------------------------------------------------------------------------------------------------


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


_live_renderers: weakref.WeakSet[_CameraRenderer] = weakref.WeakSet()
_atexit_registered = False


def _close_live_renderers() -> None:
    for r in list(_live_renderers):
        r.close()


class _CameraRenderer:
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


# --------------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pose:
    """World-frame pose: position (3,) and rotation matrix (3, 3)."""

    pos: np.ndarray
    mat: np.ndarray

    @property
    def yaw(self) -> float:
        """Heading of the body's x-axis in the world xy-plane (radians)."""
        return float(np.arctan2(self.mat[1, 0], self.mat[0, 0]))


@dataclass(frozen=True)
class Privileged:
    """Ground-truth simulator state for scripted experts (never part of the policy's observation)."""

    eef: Pose  # gripper grasp site; its x-axis is the finger closing direction, z points out of the hand
    gripper_qpos: np.ndarray  # finger joint positions (2,): ~+-0.04 open, ~0 closed
    joint_pos: np.ndarray  # arm joint positions (7,)
    robot_base: np.ndarray  # robot base position (3,)
    objects: dict[str, Pose]  # task objects by short name, e.g. "cube", "can", "nut", "cubeA"
    targets: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. "goal" (can), "peg" (square)
    sites: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. "nut_handle"
    table_z: float = 0.8  # height of the surface the objects start on
    grasping: dict[str, bool] = field(default_factory=dict)  # robosuite's finger-contact grasp check


class SimEnv(gym.Env):
    """A robosuite task with a Panda arm and an OSC_POSE controller behind a gymnasium-style API.

    Actions are 7-d in [-1, 1]: delta position (x 0.05 m), delta axis-angle rotation in the world
    frame (x 0.5 rad) and gripper (-1 open, +1 close), applied at 20 Hz. ``step`` returns
    ``terminated=False`` always; success is ``info["success"]`` (and reward 1.0), and ``truncated`` is set
    once ``horizon`` steps have run. Quaternions are xyzw (robosuite's convention).
    """

    metadata: dict[str, Any] = {"render_modes": []}
    depth_scale: float = DEPTH_SCALE

    def __init__(
        self,
        task: str | TaskConfig,
        cameras: Sequence[str] = (),
        image_size: int = 84,
        depth: bool = False,
        seed: int | None = None,
    ) -> None:
        self._task = task if isinstance(task, TaskConfig) else load_task(task)
        if self._task.env_name not in _OBJECT_BODIES:
            raise ValueError(
                f"task {self._task.name!r}: robosuite env {self._task.env_name!r} is not supported; "
                f"supported: {', '.join(_OBJECT_BODIES)}"
            )
        if isinstance(cameras, str):
            cameras = [cameras]
        if image_size <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self._cameras = tuple(cameras)
        self._image_size = int(image_size)
        self._depth = bool(depth)
        if self._depth and not self._cameras:
            raise ValueError("depth=True needs at least one camera")
        suite = _import_robosuite()
        controller = suite.load_controller_config(default_controller="OSC_POSE")
        kwargs: dict[str, Any] = {"robots": "Panda", "reward_shaping": False, **self._task.env_kwargs}
        kwargs.update(
            controller_configs=controller,
            has_renderer=False,
            # We render ourselves (see _CameraRenderer); robosuite's context would only cost time.
            has_offscreen_renderer=False,
            use_camera_obs=False,
            use_object_obs=True,
            control_freq=CONTROL_FREQ,
            horizon=self._task.horizon,
            ignore_done=True,  # the horizon is enforced here, as truncation
            # Reloading the model on every reset is slow and makes new GL resources; a soft reset
            # re-samples placements just the same.
            hard_reset=False,
        )
        with _np_global_seed(_BUILD_SEED):
            self._env = suite.make(self._task.env_name, **kwargs)
        self._sim = self._env.sim
        self._model: mujoco.MjModel = self._sim.model._model
        self._data: mujoco.MjData = self._sim.data._data
        self._robot = self._env.robots[0]
        self._joint_idx = np.asarray(self._robot._ref_joint_pos_indexes)
        self._eef_site = int(self._robot.eef_site_id)
        self._body_ids = {k: self._model.body(v).id for k, v in _OBJECT_BODIES[self._task.env_name].items()}
        # robosuite's object-state observables, in its order; "object" is them with each quaternion as rot6d.
        self._object_obs = [n for n, o in self._env._observables.items()
                            if o.modality == "object" and o.is_enabled() and o.is_active()]
        available = list(self._sim.model.camera_names)
        missing = [c for c in self._cameras if c not in available]
        if missing:
            self._env.close()
            raise ValueError(
                f"unknown camera(s) {missing} for task {self._task.name!r}; available: {', '.join(available)}"
            )
        self._renderer = (
            _CameraRenderer(self._model, self._cameras, self._image_size, self._depth)
            if self._cameras
            else None
        )
        self._scratch: mujoco.MjData | None = None  # data used by render_state, kept apart from the live sim
        self._seed_rng = np.random.default_rng(seed)
        self._steps = 0
        self._closed = False
        self._finalizer = weakref.finalize(self, _release, self._renderer, self._env)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(7,), dtype=np.float32)
        self.observation_space = self._make_observation_space()

    # ---------------------------------------------------------------- properties
    @property
    def task(self) -> TaskConfig:
        return self._task

    @property
    def cameras(self) -> tuple[str, ...]:
        return self._cameras

    @property
    def image_size(self) -> int:
        return self._image_size

    @property
    def depth(self) -> bool:
        return self._depth

    @property
    def action_dim(self) -> int:
        return 7

    @property
    def control_freq(self) -> float:
        return float(CONTROL_FREQ)

    @property
    def horizon(self) -> int:
        return self._task.horizon

    @property
    def steps(self) -> int:
        """Control steps taken since the last reset."""
        return self._steps

    @property
    def sim_time(self) -> float:
        """Simulated seconds since the last reset (exact multiple of the control period)."""
        return self._steps / CONTROL_FREQ

    @property
    def robosuite_env(self) -> Any:
        """The wrapped robosuite environment (escape hatch; prefer :meth:`privileged`)."""
        return self._env

    # ---------------------------------------------------------------- gym API
    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        """Start an episode. The same ``seed`` gives the same initial state in any SimEnv of this task.

        Without a seed, one is drawn from the generator seeded by ``make_env(seed=...)``; the seed used
        is returned as ``info["seed"]`` so the episode can be replayed.
        """
        del options
        self._check_open()
        if seed is None:
            seed = int(self._seed_rng.integers(2**31 - 1))
        with _np_global_seed(int(seed)):
            self._env.reset()
        self._sim.forward()
        self._steps = 0
        return self._observe(), {"seed": int(seed), "success": self.is_success()}

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        self._check_open()
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (7,):
            raise ValueError(f"action must have 7 entries, got shape {np.shape(action)}")
        self._env.step(np.clip(action, -1.0, 1.0))
        # mj_step leaves positions-derived quantities one substep stale; recompute them so observations,
        # success and camera images all describe the current state (and match render_state exactly).
        self._sim.forward()
        self._steps += 1
        success = self.is_success()
        info = {"success": success, "steps": self._steps}
        return self._observe(), float(success), False, self._steps >= self.horizon, info

    def is_success(self) -> bool:
        """The task's own success check (robosuite ``_check_success``)."""
        return bool(self._env._check_success())

    def close(self) -> None:
        """Free the GL context and the simulator. Safe to call twice."""
        if not self._closed:
            self._closed = True
            self._finalizer()

    # ---------------------------------------------------------------- states and re-rendering
    def get_state(self) -> np.ndarray:
        """Flattened MuJoCo state ``[time, qpos, qvel]`` (float64)."""
        return np.concatenate([[self._data.time], self._data.qpos, self._data.qvel]).astype(np.float64)

    def set_state(self, state: np.ndarray) -> dict:
        """Put the live simulator in ``state`` and return the observation there (controller state is not restored)."""
        self._check_open()
        self._load_state(self._data, state)
        return self._observe()

    def render_state(self, state: np.ndarray) -> dict[str, np.ndarray]:
        """Camera observations (``<cam>_image``, ``<cam>_depth``) at ``state``, bit-identical to those
        :meth:`step` returned online at that state. Does not disturb the running episode."""
        self._check_open()
        if self._renderer is None:
            raise RuntimeError("render_state needs cameras; create the env with cameras=[...]")
        if self._scratch is None:
            self._scratch = mujoco.MjData(self._model)
        self._load_state(self._scratch, state)
        return self._renderer.render(self._scratch)

    def _load_state(self, data: mujoco.MjData, state: np.ndarray) -> None:
        state = np.asarray(state, dtype=np.float64).reshape(-1)
        nq, nv = self._model.nq, self._model.nv
        if state.shape != (1 + nq + nv,):
            raise ValueError(f"state must have {1 + nq + nv} entries (time, qpos, qvel), got {state.shape}")
        data.time = state[0]
        data.qpos[:] = state[1 : 1 + nq]
        data.qvel[:] = state[1 + nq :]
        mujoco.mj_forward(self._model, data)

    # ---------------------------------------------------------------- expert access
    def privileged(self) -> Privileged:
        """Ground-truth poses for scripted experts (copies; safe to keep)."""
        d, env = self._data, self._env
        objects = {
            k: Pose(d.xpos[i].copy(), d.xmat[i].reshape(3, 3).copy()) for k, i in self._body_ids.items()
        }
        eef = Pose(d.site_xpos[self._eef_site].copy(), d.site_xmat[self._eef_site].reshape(3, 3).copy())
        gripper_qpos = d.qpos[self._robot._ref_gripper_joint_pos_indexes].copy()
        targets: dict[str, np.ndarray] = {}
        sites: dict[str, np.ndarray] = {}
        name = self._task.env_name
        if name == "PickPlaceCan":
            targets["goal"] = env.target_bin_placements[env.object_to_id["can"]].copy()
            # The success region is the goal's quarter of bin 2: goal +- bin_size/4 in x and y.
            targets["goal_half_extent"] = np.asarray(env.bin_size[:2], dtype=np.float64) / 4
            targets["source_bin"] = np.asarray(env.bin1_pos, dtype=np.float64).copy()
            targets["bin_half_extent"] = np.asarray(env.bin_size[:2], dtype=np.float64) / 2
            table_z = float(env.bin1_pos[2])
        else:
            table_z = float(env.table_offset[2])
        if name == "NutAssemblySquare":
            targets["peg"] = d.xpos[env.peg1_body_id].copy()
            sites["nut_handle"] = d.site_xpos[self._model.site("SquareNut_handle_site").id].copy()
        gripper = self._robot.gripper
        grasping = {
            k: bool(env._check_grasp(gripper=gripper, object_geoms=self._grasp_geoms(k))) for k in objects
        }
        return Privileged(
            eef=eef,
            gripper_qpos=gripper_qpos,
            joint_pos=d.qpos[self._joint_idx].copy(),
            robot_base=np.asarray(self._robot.base_pos, dtype=np.float64).copy(),
            objects=objects,
            targets=targets,
            sites=sites,
            table_z=table_z,
            grasping=grasping,
        )

    def _grasp_geoms(self, key: str) -> Any:
        env, name = self._env, self._task.env_name
        if name == "Lift":
            return env.cube
        if name == "PickPlaceCan":
            return env.objects[env.object_to_id["can"]]
        if name == "NutAssemblySquare":
            return env.nuts[env.nut_id]
        return env.cubeA if key == "cubeA" else env.cubeB

    # ---------------------------------------------------------------- internals
    def _observe(self) -> dict[str, np.ndarray]:
        raw = self._env._get_observations(force_update=True)
        obs = {
            "robot0_eef_pos": raw["robot0_eef_pos"].astype(np.float32),
            "robot0_eef_quat": raw["robot0_eef_quat"].astype(np.float32),
            "robot0_gripper_qpos": raw["robot0_gripper_qpos"].astype(np.float32),
            "robot0_joint_pos": self._data.qpos[self._joint_idx].astype(np.float32),
            "object": self._object_vector(raw),
        }
        if self._renderer is not None:
            obs.update(self._renderer.render(self._data))
        return obs

    def _object_vector(self, raw: dict[str, Any]) -> np.ndarray:
        parts = [quat_to_rot6d(raw[n]) if n.endswith("_quat") else np.atleast_1d(raw[n]) for n in self._object_obs]
        return np.concatenate(parts).astype(np.float32)

    def _make_observation_space(self) -> gym.spaces.Dict:
        with _np_global_seed(_BUILD_SEED):
            self._env.reset()  # robosuite needs a reset before observations exist; seeded resets follow
        raw = self._env._get_observations(force_update=True)
        inf = np.inf
        spaces: dict[str, gym.Space] = {
            "robot0_eef_pos": gym.spaces.Box(-inf, inf, (3,), np.float32),
            "robot0_eef_quat": gym.spaces.Box(-1.0, 1.0, (4,), np.float32),
            "robot0_gripper_qpos": gym.spaces.Box(-inf, inf, (2,), np.float32),
            "robot0_joint_pos": gym.spaces.Box(-inf, inf, (len(self._joint_idx),), np.float32),
            "object": gym.spaces.Box(-inf, inf, self._object_vector(raw).shape, np.float32),
        }
        s = self._image_size
        for cam in self._cameras:
            spaces[f"{cam}_image"] = gym.spaces.Box(0, 255, (s, s, 3), np.uint8)
            if self._depth:
                spaces[f"{cam}_depth"] = gym.spaces.Box(0, np.iinfo(np.uint16).max, (s, s), np.uint16)
        return gym.spaces.Dict(spaces)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("environment is closed")

    def __repr__(self) -> str:
        return (
            f"SimEnv(task={self._task.name!r}, cameras={list(self._cameras)}, image_size={self._image_size})"
        )


def _release(renderer: _CameraRenderer | None, env: Any) -> None:
    # GL resources first (they reference the model), then the simulator.
    if renderer is not None:
        renderer.close()
    env.close()


def make_env(
    task: str | TaskConfig,
    cameras: Sequence[str] = (),
    image_size: int = 84,
    depth: bool = False,
    seed: int | None = None,
) -> SimEnv:
    """Create a :class:`SimEnv` for a task name, YAML path or :class:`TaskConfig`.

    ``cameras`` are rendered into every observation as ``<cam>_image`` (uint8 HxWx3, upright) and, with
    ``depth=True``, ``<cam>_depth`` (uint16, units of ``SimEnv.depth_scale`` metres). Without cameras no
    GL context is created. ``seed`` seeds the sequence of reset seeds used when ``reset()`` gets none.
    """
    return SimEnv(task, cameras=cameras, image_size=image_size, depth=depth, seed=seed)


def lowdim_shapes(task: str | TaskConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of the task's low-dim observations (``LOWDIM_KEYS``), from a camera-less env built for it."""
    env = make_env(task)
    try:
        return {k: tuple(v.shape) for k, v in env.observation_space.spaces.items() if k in LOWDIM_KEYS}
    finally:
        env.close()
