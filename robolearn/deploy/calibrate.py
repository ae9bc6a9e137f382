"""``robolearn calibrate latency --rig RIG``: measure a rig's action and camera latencies.

Action latency (command sent -> the arm measurably moving): the arm follows a small excitation
around where it stands (one axis, a sum of three sines at incommensurate frequencies, so the
cross-correlation has a single peak), commanded as timestamped waypoints at the control rate while
its measured pose is sampled on the arm's clock. Both signals are resampled on a 1 ms grid, their
velocities cross-correlated, and the lag of the peak (refined to sub-millisecond by a parabola) is
the latency. It includes everything between the command and the motion: transport, the controller's
interpolation, the arm's own servo; that total is what deployment must send ahead of time.

Camera latency (exposure -> device timestamp): the image motion of each camera (mean absolute frame
difference, at each frame's device time) cross-correlated with the arm's speed during the same
excitation. A camera that does not see the arm move (correlation peak below ``min_correlation``,
e.g. the sim twin's recorded cameras) is reported and left as it was.

The results are written into the rig file's ``latency:`` section (other lines and comments kept).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robolearn.errors import UserError

FREQS_HZ = (0.35, 0.8, 1.3)


@dataclass
class LatencyEstimate:
    action_s: float | None
    action_correlation: float
    camera_s: dict[str, float | None] = field(default_factory=dict)
    camera_correlation: dict[str, float] = field(default_factory=dict)
    samples: int = 0
    written: str | None = None
    notes: list[str] = field(default_factory=list)
    # The commanded and measured signals (times, positions on the excited axis), for plots and checks.
    raw: dict[str, np.ndarray] = field(default_factory=dict, repr=False)


def excitation(t: np.ndarray, amplitude: float) -> np.ndarray:
    """Offset (m) along the excited axis at times ``t`` (s): zero at t = 0, bounded by ``amplitude``."""
    s = sum(np.sin(2 * np.pi * f * t) for f in FREQS_HZ)
    return amplitude * s / len(FREQS_HZ)


def estimate_lag(t_a: np.ndarray, a: np.ndarray, t_b: np.ndarray, b: np.ndarray, max_lag: float = 1.0,
                 grid: float = 1e-3, derivative: bool = True) -> tuple[float, float]:
    """How long ``b`` lags ``a`` (s), and the peak's normalised correlation: both resampled on a
    ``grid`` over their common span, (optionally) differentiated, cross-correlated for lags in
    ``[0, max_lag]``."""
    lo, hi = max(t_a[0], t_b[0]), min(t_a[-1], t_b[-1])
    if hi - lo < 2 * max_lag:
        raise ValueError(f"{hi - lo:.2f} s of overlapping samples; need at least {2 * max_lag:.2f} s")
    g = np.arange(lo, hi, grid)
    x, y = np.interp(g, t_a, a), np.interp(g, t_b, b)
    if derivative:
        x, y = np.gradient(x, grid), np.gradient(y, grid)
    x, y = x - x.mean(), y - y.mean()
    n = int(max_lag / grid)
    m = len(g) - n
    if m < 10:
        raise ValueError("too few samples for the lag range")
    xs = x[:m]
    corr = np.array([np.dot(xs, y[k:k + m]) for k in range(n + 1)])
    norm = np.array([np.linalg.norm(xs) * np.linalg.norm(y[k:k + m]) + 1e-12 for k in range(n + 1)])
    r = corr / norm
    k = int(np.argmax(r))
    frac = 0.0
    if 0 < k < n:  # parabola through the peak and its neighbours
        den = r[k - 1] - 2 * r[k] + r[k + 1]
        if den < 0:
            frac = 0.5 * (r[k - 1] - r[k + 1]) / den
    return (k + frac) * grid, float(r[k])


def write_latency(path: str | Path, action_s: float | None, camera_s: float | None) -> None:
    """Set ``latency.action_s`` / ``latency.camera_s`` in a rig file, keeping its other lines."""
    p = Path(path)
    lines = p.read_text().splitlines()
    values = {k: v for k, v in (("action_s", action_s), ("camera_s", camera_s)) if v is not None}
    start = next((i for i, ln in enumerate(lines) if re.match(r"^latency\s*:", ln)), None)
    if start is None:
        lines += ["latency:"] + [f"  {k}: {v:.4f}" for k, v in values.items()]
    else:
        if re.match(r"^latency\s*:\s*\{", lines[start]):
            raise UserError(f"{p}: write the latency section as a block (latency:\\n  action_s: ...) to update it")
        end = start + 1
        while end < len(lines) and (lines[end].startswith((" ", "\t")) or not lines[end].strip()):
            end += 1
        block = lines[start + 1:end]
        for k, v in values.items():
            for i, ln in enumerate(block):
                m = re.match(rf"^(\s+){k}\s*:\s*[^#]*?(\s*#.*)?$", ln)
                if m:
                    block[i] = f"{m.group(1)}{k}: {v:.4f}{m.group(2) or ''}"
                    break
            else:
                block.append(f"  {k}: {v:.4f}")
        lines[start + 1:end] = block
    p.write_text("\n".join(lines) + "\n")


def _frame_motion(frames: list[tuple[float, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    t = np.array([f[0] for f in frames[1:]])
    e = np.array([float(np.mean(np.abs(b[1].astype(np.int16) - a[1].astype(np.int16))))
                  for a, b in zip(frames[:-1], frames[1:], strict=True)])
    return t, e


def measure_latency(rig: Any, seconds: float = 6.0, amplitude: float = 0.03, axis: int = 0,
                    min_correlation: float = 0.5) -> LatencyEstimate:
    """Excite an open hardware rig's arm around where it stands and estimate its latencies."""
    est = LatencyEstimate(None, 0.0)
    arm = rig.arm
    if arm.cfg.action == "joints":
        raise UserError(f"rig {rig.name}: calibrate latency drives pose-space arms (action: delta_pose or abs_pose)")
    values, _, _ = arm.state()
    p0 = np.concatenate([values["robot0_eef_pos"], values["robot0_eef_quat"]]).astype(np.float64)
    dt = 1.0 / rig.control_hz
    cams: dict[str, list[tuple[float, np.ndarray]]] = {name: [] for name in rig.cameras}
    last_frame = {name: -1 for name in rig.cameras}
    t_cmd, x_cmd, t_meas, x_meas = [], [], [], []
    t_start = time.monotonic()
    t_next = t_start
    while True:
        now = time.monotonic()
        if now - t_start > seconds:
            break
        if now >= t_next:
            off = float(excitation(np.array([now - t_start]), amplitude)[0])
            pose = p0.copy()
            pose[axis] += off
            arm.schedule_waypoint(pose, now)
            t_cmd.append(now)
            x_cmd.append(p0[axis] + off)
            t_next += dt
        vals, t_dev, _ = arm.state()
        if not t_meas or t_dev != t_meas[-1]:
            t_meas.append(t_dev)
            x_meas.append(float(vals["robot0_eef_pos"][axis]))
        for name, cam in rig.cameras.items():
            f = cam.latest()
            if f.frame_number != last_frame[name]:
                last_frame[name] = f.frame_number
                img = next(v for k, v in f.values.items() if k.endswith("_image"))
                cams[name].append((float(f.t_device), np.asarray(img[::4, ::4]).mean(axis=-1)))
        time.sleep(0.002)
    est.samples = len(t_meas)
    tc, xc, tm, xm = map(np.asarray, (t_cmd, x_cmd, t_meas, x_meas))
    est.raw = {"t_cmd": tc, "x_cmd": xc, "t_meas": tm, "x_meas": xm}
    if np.ptp(xm) < 0.2 * amplitude:
        raise UserError(f"rig {rig.name}: the arm moved {np.ptp(xm) * 1e3:.1f} mm for a {amplitude * 1e3:.0f} mm "
                        f"excitation; is it enabled and free to move?")
    lag, r = estimate_lag(tc, xc, tm, xm, max_lag=min(1.0, seconds / 3))
    est.action_s, est.action_correlation = float(lag), float(r)
    speed_t = tm[1:]
    speed = np.abs(np.diff(xm) / np.maximum(np.diff(tm), 1e-6))
    for name, frames in cams.items():
        est.camera_s[name], est.camera_correlation[name] = None, 0.0
        if len(frames) < 20:
            est.notes.append(f"camera {name}: {len(frames)} frames, too few")
            continue
        ft, fe = _frame_motion(frames)
        if ft[0] > speed_t[-1] or ft[-1] < speed_t[0]:
            est.notes.append(f"camera {name}: its timestamps are not on the arm's clock (a recording?); "
                             "camera_s not measured")
            continue
        try:
            clag, cr = estimate_lag(speed_t, speed, ft, fe, max_lag=min(0.5, seconds / 4), derivative=False)
        except ValueError as e:
            est.notes.append(f"camera {name}: {e}")
            continue
        est.camera_correlation[name] = cr
        if cr < min_correlation:
            est.notes.append(f"camera {name}: its image motion does not follow the arm (correlation {cr:.2f} < "
                             f"{min_correlation}): it does not see the arm; camera_s left as it was")
        else:
            est.camera_s[name] = float(clag)
    return est


def calibrate_latency(rig_spec: str, overrides: list[str] | None = None, seconds: float = 6.0,
                      amplitude: float = 0.03, axis: int = 0, write: bool = True, seed: int | None = 0,
                      min_correlation: float = 0.5) -> LatencyEstimate:
    """Measure ``rig_spec``'s latencies on the rig itself (see the module docstring)."""
    from robolearn.resources import resolve
    from robolearn.rigs import make_rig

    if not rig_spec.endswith((".yaml", ".yml")):
        raise UserError(f"calibrate latency measures a rig from its rig file (hardware/<rig>.yaml), not {rig_spec!r}; "
                        "a simulated rig's latencies are the ones injected with deploy --obs-latency/--action-latency")
    path = resolve("rig", rig_spec)
    with make_rig(str(path), overrides=list(overrides or [])) as rig:
        rig.reset(seed)
        est = measure_latency(rig, seconds, amplitude, axis, min_correlation)
        rig.stop()
    if write:
        measured = [v for v in est.camera_s.values() if v is not None]
        write_latency(path, est.action_s, max(measured) if measured else None)
        est.written = str(path)
    return est
