"""Scripted experts: waypoint state machines on privileged simulator state, with seeded variation.

Every expert drives the OSC_POSE controller with proportional control toward a waypoint (position,
gripper yaw with the hand pointing down, gripper open/close), clipped to the action bounds. Variation
between demonstrations comes from the ``rng`` given to :func:`make_expert`: per-episode waypoint
offsets, speed and heights, plus small Gaussian action noise. The same rng seed and the same reset
seed give the same demonstration.

``Expert.done`` turns True once the expert has finished its script (object released / lifted). The
collector should stop on ``info["success"]`` (optionally a few steps later); ``done`` is a fallback
for the rare episode where the task check lags behind the script.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from robolearn.errors import UserError
from robolearn.sim.env import Privileged, SimEnv

POS_SCALE = 0.05  # metres of goal offset per unit action (OSC_POSE output_max)
ROT_SCALE = 0.5  # radians of goal rotation per unit action
OPEN, CLOSE = -1.0, 1.0


def _wrap(angle: float) -> float:
    """Angle wrapped to [-pi, pi)."""
    return float((angle + np.pi) % (2 * np.pi) - np.pi)


def _down_rotation(yaw: float) -> np.ndarray:
    """Gripper orientation pointing straight down with its finger-closing (x) axis at ``yaw``."""
    c, s = np.cos(yaw), np.sin(yaw)
    # Columns: x = (c, s, 0), y = z cross x = (s, -c, 0), z = (0, 0, -1).
    return np.array([[c, s, 0.0], [s, -c, 0.0], [0.0, 0.0, -1.0]])


def _rotvec(mat: np.ndarray) -> np.ndarray:
    """Axis-angle vector of a rotation matrix (via a unit quaternion, robust near pi)."""
    m = mat
    tr = m[0, 0] + m[1, 1] + m[2, 2]
    if tr > 0:
        s = 2.0 * np.sqrt(tr + 1.0)
        w, x, y, z = 0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        w, x, y, z = (m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        w, x, y, z = (m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s
    else:
        s = 2.0 * np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        w, x, y, z = (m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s
    v = np.array([x, y, z])
    if w < 0:
        w, v = -w, -v
    n = np.linalg.norm(v)
    if n < 1e-12:
        return np.zeros(3)
    return v / n * (2.0 * np.arctan2(n, w))


def _nearest_symmetric_yaw(object_yaw: float, current_yaw: float, period: float) -> float:
    """The yaw equal to ``object_yaw`` modulo ``period`` that needs the least rotation from ``current_yaw``."""
    return current_yaw + _wrap((object_yaw - current_yaw + period / 2) % period - period / 2)


@dataclass
class _Style:
    """Per-episode variation of one demonstration."""

    speed: float  # proportional gain multiplier
    max_step: float  # cap on the translation action magnitude
    noise: float  # std of Gaussian noise on arm actions
    hover: float  # approach height above the grasp point (m)
    lift: float  # extra height for transport (m)
    grasp_offset: np.ndarray  # xy offset of the grasp point in the object's frame (m)
    grasp_dz: float  # grasp height offset (m)
    yaw_offset: float  # grasp yaw error (rad)


class Expert:
    """Base scripted expert. Subclasses implement :meth:`_plan` returning one waypoint per step."""

    name = "expert"
    # Short names of the task objects (the task definition's ``objects``) this expert reads.
    objects: tuple[str, ...] = ()

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.done = False
        self.phase = "start"
        self._phase_steps = 0
        self._style: _Style | None = None  # drawn per episode in reset()

    @classmethod
    def required_objects(cls) -> tuple[str, ...]:
        """The task objects this expert reads: ``objects``, else the one it picks (``obj``)."""
        obj = getattr(cls, "obj", None)
        return cls.objects or ((obj,) if obj else ())

    # ------------------------------------------------------------------ public API
    def reset(self, env: SimEnv) -> None:
        """Start a new demonstration for the episode ``env`` was just reset to."""
        self.done = False
        self._style = self._sample_style()
        self._set_phase("approach")
        self._on_reset(self.privileged(env))

    def act(self, env: SimEnv, obs: dict) -> np.ndarray:
        """7-d OSC_POSE action for the current state (``obs`` is unused: experts read privileged state)."""
        del obs
        p = self.privileged(env)
        pos, yaw, grip, gain = self._plan(p)
        self._phase_steps += 1
        return self._servo(p, pos, yaw, grip, gain)

    @property
    def style(self) -> _Style:
        """This episode's variation parameters."""
        if self._style is None:
            raise RuntimeError("call Expert.reset(env) after env.reset() and before act()")
        return self._style

    def privileged(self, env: SimEnv) -> Privileged:
        """The env's generic privileged state plus what this task's expert needs of its robosuite env."""
        return self._task_state(env, env.privileged())

    # ------------------------------------------------------------------ to override
    def _task_state(self, env: SimEnv, p: Privileged) -> Privileged:
        """Add task-specific targets and sites (a goal, a peg); the env itself knows no task."""
        del env
        return p

    def _on_reset(self, p: Privileged) -> None:
        pass

    def _plan(self, p: Privileged) -> tuple[np.ndarray, float, float, float]:
        """(target eef position, target yaw, gripper command, gain) for this step."""
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers
    def _sample_style(self) -> _Style:
        r = self.rng
        return _Style(
            speed=float(r.uniform(0.8, 1.2)),
            max_step=float(r.uniform(0.7, 1.0)),
            noise=float(r.uniform(0.0, 0.08)),
            hover=float(r.uniform(0.04, 0.09)),
            lift=float(r.uniform(0.0, 0.05)),
            grasp_offset=r.uniform(-0.004, 0.004, size=2),
            grasp_dz=float(r.uniform(-0.004, 0.004)),
            yaw_offset=float(r.uniform(-0.08, 0.08)),
        )

    def _set_phase(self, phase: str) -> None:
        self.phase = phase
        self._phase_steps = 0

    def _servo(self, p: Privileged, pos: np.ndarray, yaw: float, grip: float, gain: float) -> np.ndarray:
        s = self.style
        dpos = (pos - p.eef.pos) / POS_SCALE * gain * s.speed
        norm = np.linalg.norm(dpos)
        if norm > s.max_step:
            dpos *= s.max_step / norm
        drot = _rotvec(_down_rotation(yaw) @ p.eef.mat.T) / ROT_SCALE * 1.5
        arm = np.concatenate([dpos, drot])
        arm += self.rng.normal(0.0, s.noise, size=6) * np.minimum(1.0, np.abs(arm) * 5 + 0.2)
        return np.concatenate([np.clip(arm, -1.0, 1.0), [grip]]).astype(np.float32)

    @staticmethod
    def _reached(p: Privileged, pos: np.ndarray, tol: float) -> bool:
        return bool(np.linalg.norm(p.eef.pos - pos) < tol)

    @staticmethod
    def _yaw_error(p: Privileged, yaw: float) -> float:
        return abs(_wrap(p.eef.yaw - yaw))

    def _gripper_closed(self, p: Privileged) -> bool:
        # The fingers stop moving on the object; robosuite's gripper needs ~8 steps to close fully.
        return self._phase_steps >= 8


# ----------------------------------------------------------------------------------------------------
# Pick-and-lift family
# ----------------------------------------------------------------------------------------------------


class _PickExpert(Expert):
    """approach above the object -> descend -> close -> lift, then a task-specific transport."""

    obj = "cube"
    grasp_period = np.pi / 2  # yaw symmetry of the grasp (cube faces)

    def _on_reset(self, p: Privileged) -> None:
        self._grasp_yaw = self._choose_grasp_yaw(p)

    def _choose_grasp_yaw(self, p: Privileged) -> float:
        o = p.objects[self.obj]
        return _nearest_symmetric_yaw(o.yaw, p.eef.yaw, self.grasp_period) + self.style.yaw_offset

    def _grasp_point(self, p: Privileged) -> np.ndarray:
        o = p.objects[self.obj]
        off = o.mat[:2, :2] @ self.style.grasp_offset
        return o.pos + np.array([off[0], off[1], self.style.grasp_dz])

    def _pick(self, p: Privileged) -> tuple[np.ndarray, float, float, float] | None:
        """Waypoint for the pick phases, or None once the object is grasped."""
        s = self.style
        grasp = self._grasp_point(p)
        above = grasp + np.array([0.0, 0.0, s.hover])
        if self.phase == "approach":
            if self._reached(p, above, 0.02) and self._yaw_error(p, self._grasp_yaw) < 0.08:
                self._set_phase("descend")
            else:
                return above, self._grasp_yaw, OPEN, 1.0
        if self.phase == "descend":
            if self._reached(p, grasp, 0.008) or (self._phase_steps > 30 and self._reached(p, grasp, 0.015)):
                self._set_phase("close")
            elif self._phase_steps > 40:
                # Blocked (a finger on the object or a neighbour): back off and come in again.
                self._grasp_yaw = self._choose_grasp_yaw(p)
                self._set_phase("approach")
                return above, self._grasp_yaw, OPEN, 1.0
            else:
                # Go straight down once above the object so the fingers do not sweep it away.
                xy_err = np.linalg.norm(p.eef.pos[:2] - grasp[:2])
                target = grasp if xy_err < 0.01 else np.array([grasp[0], grasp[1], p.eef.pos[2]])
                return target, self._grasp_yaw, OPEN, 1.0
        if self.phase == "close":
            if self._gripper_closed(p):
                self._set_phase("lift")
            else:
                return grasp, self._grasp_yaw, CLOSE, 1.0
        return None


class LiftExpert(_PickExpert):
    name = "lift"

    def _plan(self, p: Privileged) -> tuple[np.ndarray, float, float, float]:
        wp = self._pick(p)
        if wp is not None:
            return wp
        o = p.objects[self.obj]
        target = np.array([o.pos[0], o.pos[1], p.table_z + 0.10 + self.style.lift])
        if self.phase == "lift" and o.pos[2] > p.table_z + 0.06:
            self.done = True
        if self.phase == "lift" and self._phase_steps > 40 and not p.grasping[self.obj]:
            self._set_phase("approach")  # slipped: try again
        return target, self._grasp_yaw, CLOSE, 1.0


class _CarryExpert(_PickExpert):
    """Pick, then carry the object with closed-loop control on its measured pose, place and let go."""

    release_steps = 6  # steps to open the fingers before retreating
    move_tol = 0.01  # object xy error (m) at which to start lowering
    lower_gain = 0.6  # slower, gentler descent onto the goal

    def _carry_target(self, p: Privileged, obj_target: np.ndarray) -> np.ndarray:
        # The object moves rigidly with the hand, so shift the hand by the object's position error.
        return p.eef.pos + (obj_target - p.objects[self.obj].pos)

    def _place_xy(self, p: Privileged) -> np.ndarray:
        raise NotImplementedError

    def _carry_z(self, p: Privileged) -> float:
        raise NotImplementedError

    def _place_z(self, p: Privileged) -> float:
        """Object height at which to let go."""
        raise NotImplementedError

    def _carry_yaw(self, p: Privileged) -> float:
        return self._grasp_yaw

    def _placed(self, p: Privileged) -> bool:
        return p.objects[self.obj].pos[2] < self._place_z(p) + 0.004

    def _plan(self, p: Privileged) -> tuple[np.ndarray, float, float, float]:
        wp = self._pick(p)
        if wp is not None:
            return wp
        o = p.objects[self.obj]
        carry_z = self._carry_z(p)
        goal_xy = self._place_xy(p)
        if self.phase in ("lift", "move", "lower") and self._phase_steps > 10 and not p.grasping[self.obj]:
            if o.pos[2] < p.table_z + 0.1 and self.phase != "lower":
                self._set_phase("approach")  # dropped on the way: start over
                self._on_retry()
                return self._plan(p)
        if self.phase == "lift":
            if o.pos[2] > carry_z - 0.015:
                self._set_phase("move")
            else:
                target = np.array([o.pos[0], o.pos[1], carry_z + 0.02])
                return self._carry_target(p, target), self._grasp_yaw, CLOSE, 1.0
        if self.phase == "move":
            xy_err = np.linalg.norm(o.pos[:2] - goal_xy)
            if xy_err < self.move_tol and self._yaw_error(p, self._carry_yaw(p)) < 0.05:
                self._set_phase("lower")
            else:
                target = np.array([goal_xy[0], goal_xy[1], carry_z])
                return self._carry_target(p, target), self._carry_yaw(p), CLOSE, 1.0
        if self.phase == "lower":
            if self._placed(p) or self._phase_steps > 60:
                self._set_phase("release")
            else:
                target = np.array([goal_xy[0], goal_xy[1], self._place_z(p) - 0.01])
                return self._carry_target(p, target), self._carry_yaw(p), CLOSE, self.lower_gain
        if self.phase == "release":
            if self._phase_steps >= self.release_steps:
                self._set_phase("retreat")
            else:
                return p.eef.pos.copy(), p.eef.yaw, OPEN, 1.0
        # retreat: straight up, gripper open
        if self._phase_steps > 6:
            self.done = True
        return p.eef.pos + np.array([0.0, 0.0, 0.05]), p.eef.yaw, OPEN, 1.0

    def _on_retry(self) -> None:
        """Called when the object was dropped and the pick starts over."""


class CanExpert(_CarryExpert):
    """PickPlaceCan: the can goes from the left bin into its quarter of the right bin."""

    def _task_state(self, env: SimEnv, p: Privileged) -> Privileged:
        rs = env.robosuite_env
        bin_size = np.asarray(rs.bin_size[:2], dtype=np.float64)
        targets = {
            "goal": np.asarray(rs.target_bin_placements[rs.object_to_id["can"]], dtype=np.float64).copy(),
            # The success region is the goal's quarter of bin 2: goal +- bin_size/4 in x and y.
            "goal_half_extent": bin_size / 4,
            "source_bin": np.asarray(rs.bin1_pos, dtype=np.float64).copy(),
            "bin_half_extent": bin_size / 2,
        }
        return replace(p, targets=targets, table_z=float(rs.bin1_pos[2]))

    name = "can"
    obj = "can"
    grasp_period = np.pi  # a cylinder: any yaw, up to finger symmetry

    def _on_reset(self, p: Privileged) -> None:
        super()._on_reset(p)
        # The far side of the goal quarter is at the edge of the Panda's reach: aim for the near
        # corner, clear of the walls and divider (can radius 0.025 + half wall 0.01).
        self._corner_margin = self.rng.uniform(0.045, 0.07, size=2)

    def _choose_grasp_yaw(self, p: Privileged) -> float:
        # Close the fingers parallel to a nearby bin wall so the open fingers do not hit it.
        o = p.objects[self.obj]
        rel = o.pos[:2] - p.targets["source_bin"][:2]
        gap = p.targets["bin_half_extent"] - np.abs(rel)  # distance to the x-walls, y-walls
        yaw = p.eef.yaw
        if gap.min() < 0.07:
            wall_yaw = np.pi / 2 if gap[0] < gap[1] else 0.0  # fingers along y near an x-wall
            yaw = _nearest_symmetric_yaw(wall_yaw, p.eef.yaw, np.pi)
        return yaw + self.style.yaw_offset

    def _grasp_point(self, p: Privileged) -> np.ndarray:
        o = p.objects[self.obj]
        return o.pos + np.array([*self.style.grasp_offset, 0.01 + self.style.grasp_dz])

    def _place_xy(self, p: Privileged) -> np.ndarray:
        near_corner = p.targets["goal"][:2] - p.targets["goal_half_extent"]
        return near_corner + self._corner_margin

    def _carry_z(self, p: Privileged) -> float:
        # Can centre 0.04 above its bottom; bin walls top out 0.1 above the bin base.
        return p.targets["goal"][2] + 0.1 + 0.04 + 0.03 + self.style.lift / 3

    def _place_z(self, p: Privileged) -> float:
        return p.targets["goal"][2] + 0.02 + 0.04 + 0.01


class StackExpert(_CarryExpert):
    """Stack: cube A (red) onto cube B (green)."""

    name = "stack"
    obj = "cubeA"
    objects = ("cubeA", "cubeB")
    move_tol = 0.006

    def _on_reset(self, p: Privileged) -> None:
        super()._on_reset(p)
        self._goal_offset = self.rng.uniform(-0.003, 0.003, size=2)

    def _choose_grasp_yaw(self, p: Privileged) -> float:
        # Of the two finger axes that fit cube A, prefer the one pointing away from cube B: an open
        # finger landing on a neighbouring cube B blocks the descent.
        a, b = p.objects["cubeA"], p.objects["cubeB"]
        to_b = b.pos[:2] - a.pos[:2]
        dist = float(np.linalg.norm(to_b))
        best, best_cost = 0.0, np.inf
        for k in range(4):
            yaw = _nearest_symmetric_yaw(a.yaw + k * np.pi / 2, p.eef.yaw, np.pi)
            along = abs(np.cos(yaw) * to_b[0] + np.sin(yaw) * to_b[1]) / max(dist, 1e-6)
            cost = abs(_wrap(yaw - p.eef.yaw)) + (2.0 * along if dist < 0.12 else 0.0)
            if cost < best_cost:
                best, best_cost = yaw, cost
        return best + self.style.yaw_offset

    def _place_xy(self, p: Privileged) -> np.ndarray:
        return p.objects["cubeB"].pos[:2] + self._goal_offset

    def _carry_z(self, p: Privileged) -> float:
        return p.objects["cubeB"].pos[2] + 0.025 + 0.02 + 0.03 + self.style.lift

    def _place_z(self, p: Privileged) -> float:
        return p.objects["cubeB"].pos[2] + 0.025 + 0.02 + 0.004


class SquareExpert(_CarryExpert):
    """NutAssemblySquare: grasp the nut by its handle, align it over the square peg, lower it down."""

    def _task_state(self, env: SimEnv, p: Privileged) -> Privileged:
        rs, model, data = env.robosuite_env, env.model, env.data
        return replace(p, targets={"peg": data.xpos[rs.peg1_body_id].copy()},
                       sites={"nut_handle": data.site_xpos[model.site("SquareNut_handle_site").id].copy()})

    name = "square"
    obj = "nut"
    grasp_period = np.pi  # handle: fingers across it, either way round
    move_tol = 0.004
    lower_gain = 0.5

    def _on_reset(self, p: Privileged) -> None:
        super()._on_reset(p)
        self._handle_out = float(self.rng.uniform(0.0, 0.008))
        self._target_nut_yaw: float | None = None

    def _choose_grasp_yaw(self, p: Privileged) -> float:
        o = p.objects[self.obj]
        return (
            _nearest_symmetric_yaw(o.yaw + np.pi / 2, p.eef.yaw, self.grasp_period)
            + self.style.yaw_offset / 2
        )

    def _grasp_point(self, p: Privileged) -> np.ndarray:
        o = p.objects[self.obj]
        out = o.mat[:, 0] * self._handle_out  # a little further out along the handle
        return p.sites["nut_handle"] + out + np.array([0.0, 0.0, self.style.grasp_dz])

    def _on_retry(self) -> None:
        self._target_nut_yaw = None

    def _carry_yaw(self, p: Privileged) -> float:
        # Square peg is axis-aligned: turn the hand by the nut's yaw error to the chosen multiple of 90 deg.
        if self._target_nut_yaw is None:
            self._target_nut_yaw = self._choose_nut_yaw(p)
        return p.eef.yaw + _wrap(self._target_nut_yaw - p.objects[self.obj].yaw)

    def _choose_nut_yaw(self, p: Privileged) -> float:
        """Pick the nut's final heading: the handle must not point away from the robot (out of reach),
        and the wrist joint (q7 ~ -hand yaw + base yaw) must stay inside its +-2.9 rad range."""
        nut_yaw = p.objects[self.obj].yaw
        base = p.robot_base[:2]
        q1_now = np.arctan2(*(p.eef.pos[:2] - base)[::-1])
        best, best_cost = 0.0, np.inf
        for target, reach_cost in ((np.pi, 0.0), (np.pi / 2, 0.3), (-np.pi / 2, 0.3), (0.0, 3.0)):
            turn = _wrap(target - nut_yaw)
            hand = p.targets["peg"][:2] + 0.06 * np.array([np.cos(target), np.sin(target)])
            q1_then = np.arctan2(*(hand - base)[::-1])
            q7_then = p.joint_pos[6] - turn + (q1_then - q1_now)
            cost = abs(turn) + reach_cost + (10.0 if abs(q7_then) > 2.6 else 0.0)
            if cost < best_cost:
                best, best_cost = target, cost
        return best

    def _place_xy(self, p: Privileged) -> np.ndarray:
        return p.targets["peg"][:2]

    def _carry_z(self, p: Privileged) -> float:
        # Peg top is 0.1 above its centre; nut half-thickness 0.01.
        return p.targets["peg"][2] + 0.1 + 0.01 + 0.03 + self.style.lift

    def _place_z(self, p: Privileged) -> float:
        return p.table_z + 0.04


EXPERTS: dict[str, type[Expert]] = {
    "lift": LiftExpert,
    "can": CanExpert,
    "square": SquareExpert,
    "stack": StackExpert,
}


def make_expert(name: str, rng: np.random.Generator) -> Expert:
    """The scripted expert a task definition names: a key of ``EXPERTS`` or ``package.module:Class``."""
    if ":" in name:
        from robolearn.resources import load_class

        return load_class(name, Expert, "expert")(rng)
    if name not in EXPERTS:
        raise UserError(f"no scripted expert {name!r}; available: {', '.join(EXPERTS)} or package.module:Class")
    return EXPERTS[name](rng)
