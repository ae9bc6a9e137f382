"""Gymnasium-style wrapper around robosuite tasks: seeded resets, fast offscreen cameras, state re-rendering.

Nothing here is specific to one task: which bodies are the task's objects comes from the task
definition (``objects`` in its YAML), and task-specific targets are read by that task's expert.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

from robolearn.errors import UserError
from robolearn.sim.render import DEPTH_SCALE, CameraRenderer
from robolearn.sim.robosuite_import import import_robosuite, np_global_seed
from robolearn.sim.tasks import TaskConfig, load_task

CONTROL_FREQ = 20  # Hz
_BUILD_SEED = 0  # model construction draws from np.random (e.g. Lift's cube size); fixed so all envs agree
LOWDIM_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "robot0_joint_pos", "object")
__all__ = ["CONTROL_FREQ", "DEPTH_SCALE", "LOWDIM_KEYS", "Pose", "Privileged", "SimEnv", "make_env",
           "lowdim_shapes", "quat_to_rot6d"]


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
        if isinstance(cameras, str):
            cameras = [cameras]
        if image_size <= 0:
            raise UserError(f"image_size must be positive, got {image_size}")
        self._cameras = tuple(cameras)
        self._image_size = int(image_size)
        self._depth = bool(depth)
        if self._depth and not self._cameras:
            raise UserError("depth=True needs at least one camera")
        suite = import_robosuite()
        controller = suite.load_controller_config(default_controller="OSC_POSE")
        kwargs: dict[str, Any] = {"robots": "Panda", "reward_shaping": False, **self._task.env_kwargs}
        kwargs.update(
            controller_configs=controller,
            has_renderer=False,
            # We render ourselves (see CameraRenderer); robosuite's context would only cost time.
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
        with np_global_seed(_BUILD_SEED):
            self._env = suite.make(self._task.env_name, **kwargs)
        self._sim = self._env.sim
        self._model: mujoco.MjModel = self._sim.model._model
        self._data: mujoco.MjData = self._sim.data._data
        self._robot = self._env.robots[0]
        self._joint_idx = np.asarray(self._robot._ref_joint_pos_indexes)
        self._eef_site = int(self._robot.eef_site_id)
        self._body_ids: dict[str, int] = {}
        for short, body in self._task.objects.items():
            try:
                self._body_ids[short] = self._model.body(body).id
            except KeyError:
                self._env.close()
                raise UserError(f"task {self._task.name!r}: object {short!r} names body {body!r}, which robosuite "
                                f"env {self._task.env_name!r} does not have") from None
        # Named geoms of each object's body subtree: what the fingers must touch for a grasp.
        self._grasp_geoms = {k: self._subtree_geom_names(b) for k, b in self._body_ids.items()}
        # robosuite's object-state observables, in its order; "object" is them with each quaternion as rot6d.
        self._object_obs = [n for n, o in self._env._observables.items()
                            if o.modality == "object" and o.is_enabled() and o.is_active()]
        available = list(self._sim.model.camera_names)
        missing = [c for c in self._cameras if c not in available]
        if missing:
            self._env.close()
            raise UserError(
                f"unknown camera(s) {missing} for task {self._task.name!r}; available: {', '.join(available)}"
            )
        self._renderer = (
            CameraRenderer(self._model, self._cameras, self._image_size, self._depth)
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
    def model(self) -> mujoco.MjModel:
        """The MuJoCo model (read-only use: experts look up bodies and sites)."""
        return self._model

    @property
    def data(self) -> mujoco.MjData:
        """The live MuJoCo data (read-only use)."""
        return self._data

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
        with np_global_seed(int(seed)):
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
        """Ground-truth poses for scripted experts (copies; safe to keep). Task-specific targets
        (a goal bin, a peg) are added by the task's expert, which knows its robosuite env."""
        d, env = self._data, self._env
        objects = {
            k: Pose(d.xpos[i].copy(), d.xmat[i].reshape(3, 3).copy()) for k, i in self._body_ids.items()
        }
        eef = Pose(d.site_xpos[self._eef_site].copy(), d.site_xmat[self._eef_site].reshape(3, 3).copy())
        gripper_qpos = d.qpos[self._robot._ref_gripper_joint_pos_indexes].copy()
        gripper = self._robot.gripper
        grasping = {k: bool(env._check_grasp(gripper=gripper, object_geoms=self._grasp_geoms[k])) for k in objects}
        table = getattr(env, "table_offset", None)
        return Privileged(
            eef=eef,
            gripper_qpos=gripper_qpos,
            joint_pos=d.qpos[self._joint_idx].copy(),
            robot_base=np.asarray(self._robot.base_pos, dtype=np.float64).copy(),
            objects=objects,
            table_z=float(table[2]) if table is not None else 0.0,
            grasping=grasping,
        )

    def _subtree_geom_names(self, body_id: int) -> list[str]:
        m = self._model
        bodies = {body_id}
        for b in range(m.nbody):  # bodies are numbered parents first
            if m.body_parentid[b] in bodies and b != 0:
                bodies.add(b)
        collides = (m.geom_contype != 0) | (m.geom_conaffinity != 0)  # visual-only geoms never touch
        return [m.geom(g).name for g in range(m.ngeom)
                if m.geom_bodyid[g] in bodies and collides[g] and m.geom(g).name]

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
        with np_global_seed(_BUILD_SEED):
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


def _release(renderer: CameraRenderer | None, env: Any) -> None:
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
