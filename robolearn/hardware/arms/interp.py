"""Timestamped waypoint trajectories sampled at the servo rate.

Poses are 7 numbers: position (metres) and a unit quaternion ``(x, y, z, w)`` (robosuite's order).
Between waypoints the position moves linearly and the rotation by slerp, as diffusion_policy's and
UMI's pose trajectory interpolators do; before the first waypoint and after the last the trajectory
holds. Scheduling a waypoint cuts the trajectory at "now" (its current value becomes a waypoint) and
drops everything planned after the new waypoint's time, so the newest plan always wins.
"""

from __future__ import annotations

import numpy as np

# ----------------------------------------------------------------------------- rotations (xyzw quaternions)


def quat_normalize(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64)
    n = float(np.linalg.norm(q))
    if not np.isfinite(n) or n < 1e-9:
        raise ValueError(f"not a quaternion: {q}")
    return q / n


def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The rotation ``a`` after ``b`` (Hamilton product, xyzw)."""
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return np.array(
        [
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
            aw * bw - ax * bx - ay * by - az * bz,
        ]
    )


def quat_conj(q: np.ndarray) -> np.ndarray:
    return np.array([-q[0], -q[1], -q[2], q[3]])


def quat_from_rotvec(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    angle = float(np.linalg.norm(v))
    if angle < 1e-12:
        return np.array([0.5 * v[0], 0.5 * v[1], 0.5 * v[2], 1.0]) / np.sqrt(1 + 0.25 * angle * angle)
    axis = v / angle
    return np.concatenate([axis * np.sin(angle / 2), [np.cos(angle / 2)]])


def quat_to_rotvec(q: np.ndarray) -> np.ndarray:
    q = quat_normalize(q)
    if q[3] < 0:  # the short way round
        q = -q
    s = float(np.linalg.norm(q[:3]))
    if s < 1e-12:
        return 2.0 * q[:3]
    return q[:3] / s * (2.0 * np.arctan2(s, q[3]))


def quat_angle(a: np.ndarray, b: np.ndarray) -> float:
    """The angle (radians, 0..pi) of the rotation between ``a`` and ``b``."""
    d = abs(float(np.dot(quat_normalize(a), quat_normalize(b))))
    return 2.0 * float(np.arccos(min(1.0, d)))


def quat_to_mat(q: np.ndarray) -> np.ndarray:
    x, y, z, w = quat_normalize(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def quat_from_mat(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    tr = m[0, 0] + m[1, 1] + m[2, 2]
    if tr > 0:
        s = 2.0 * np.sqrt(tr + 1.0)
        q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s, (m[1, 0] - m[0, 1]) / s]
    return quat_normalize(np.array(q))


def slerp(a: np.ndarray, b: np.ndarray, u: float) -> np.ndarray:
    """Spherical interpolation from ``a`` (u=0) to ``b`` (u=1), the short way round."""
    a, b = quat_normalize(a), quat_normalize(b)
    d = float(np.dot(a, b))
    if d < 0:
        b, d = -b, -d
    if d > 0.9995:  # nearly equal: linear is exact enough and avoids 0/0
        return quat_normalize(a + u * (b - a))
    theta = np.arccos(d)
    return (np.sin((1 - u) * theta) * a + np.sin(u * theta) * b) / np.sin(theta)


def as_pose(pose: np.ndarray) -> np.ndarray:
    """A 7-number pose from 7 numbers (position + xyzw quaternion) or 6 (position + rotation vector)."""
    p = np.asarray(pose, dtype=np.float64).reshape(-1)
    if p.shape == (6,):
        return np.concatenate([p[:3], quat_from_rotvec(p[3:])])
    if p.shape == (7,):
        return np.concatenate([p[:3], quat_normalize(p[3:])])
    raise ValueError(
        f"a pose is 7 numbers (x, y, z, qx, qy, qz, qw) or 6 (x, y, z, rotation vector), got {p.shape}"
    )


def pose_distance(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(metres, radians) between two 7-number poses."""
    return float(np.linalg.norm(a[:3] - b[:3])), quat_angle(a[3:], b[3:])


def pose_step_toward(a: np.ndarray, b: np.ndarray, max_lin: float, max_ang: float) -> np.ndarray:
    """Pose ``b``, or the pose on the way from ``a`` to ``b`` that moves at most ``max_lin`` metres and
    ``max_ang`` radians (both scaled by one factor, so the path stays the straight one)."""
    lin, ang = pose_distance(a, b)
    u = 1.0
    if lin > max_lin:
        u = min(u, max_lin / lin)
    if ang > max_ang:
        u = min(u, max_ang / ang)
    if u >= 1.0:
        return b.copy()
    return np.concatenate([a[:3] + u * (b[:3] - a[:3]), slerp(a[3:], b[3:], u)])


# ----------------------------------------------------------------------------- trajectories


class _Trajectory:
    """Waypoints ``(t, value)`` with ascending times; subclasses say how to blend two values."""

    def __init__(self, t: float, value: np.ndarray) -> None:
        self.times: list[float] = [float(t)]
        self.values: list[np.ndarray] = [np.asarray(value, dtype=np.float64).copy()]

    def _blend(self, a: np.ndarray, b: np.ndarray, u: float) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, t: float) -> np.ndarray:
        ts = self.times
        if t <= ts[0]:
            return self.values[0].copy()
        if t >= ts[-1]:
            return self.values[-1].copy()
        i = int(np.searchsorted(ts, t, side="right"))  # ts[i-1] <= t < ts[i]
        t0, t1 = ts[i - 1], ts[i]
        return self._blend(self.values[i - 1], self.values[i], (t - t0) / (t1 - t0))

    def schedule(self, value: np.ndarray, t: float, now: float) -> None:
        """Go to ``value`` at time ``t``: the plan keeps its waypoints between ``now`` and ``t`` (so a chunk
        of waypoints can be sent one by one) and drops those after ``t`` (the newest plan wins). A
        waypoint at or before ``now`` is a jump; the safety limits decide what happens to it."""
        value = np.asarray(value, dtype=np.float64)
        current = self(now)
        kept = [(ti, vi) for ti, vi in zip(self.times, self.values, strict=True) if now < ti < t]
        self.times = [now] + [ti for ti, _ in kept]
        self.values = [current] + [vi for _, vi in kept]
        if t > now:
            self.times.append(float(t))
            self.values.append(value.copy())
        else:
            self.values = [value.copy()]
            self.times = [now]

    def hold(self, value: np.ndarray, t: float) -> None:
        """Forget the plan and stay at ``value`` from ``t`` on."""
        self.times = [float(t)]
        self.values = [np.asarray(value, dtype=np.float64).copy()]

    @property
    def end_time(self) -> float:
        return self.times[-1]


class PoseTrajectory(_Trajectory):
    """Linear in position, slerp in rotation."""

    def _blend(self, a: np.ndarray, b: np.ndarray, u: float) -> np.ndarray:
        return np.concatenate([a[:3] + u * (b[:3] - a[:3]), slerp(a[3:], b[3:], u)])


class JointTrajectory(_Trajectory):
    """Linear in every joint."""

    def _blend(self, a: np.ndarray, b: np.ndarray, u: float) -> np.ndarray:
        return a + u * (b - a)


class ScalarTrajectory(JointTrajectory):
    """One number (the gripper command)."""
