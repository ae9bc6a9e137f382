"""How a pick-and-place policy fails: each episode on the bench's fixed seeds sorted into one of

- ``success``;
- ``never_lifted``: the object never rose 3 cm (a missed grasp), with where the gripper was, relative to
  the object, when it first closed;
- ``dropped``: lifted, then back down without success;
- ``holding_at_timeout``: still lifted when the episode ran out.

Works for the single-object robosuite tasks (can, square, lift): their ``object`` observation starts
with the object's position (then its rotation as rot6d). A fine-tuned run (base + residual) is evaluated
like any policy. For an object with a heading (square's nut) it also prints where the gripper closed in
the object's own frame and the yaw of its fingers against the object's x axis, for the successes and
the missed grasps apart: whether a miss is a grasp too high, off along the handle, or turned.

    python benchmarks/rl_failures.py benchmarks/results/rl_work/base_can_v2/checkpoints/step_0001200 --task can
    python benchmarks/rl_failures.py benchmarks/results/rl_work/rl_can_sparse_v2reg --task can

Prints the counts and writes ``benchmarks/results/rl_failures_<task>_<name>.json`` (every episode).

``--steer B`` asks how much a bounded correction could buy at all: a scripted residual, within +-B of
the raw (OSC delta) action in x, y, z, steers the open gripper over the object and down to it, reading
the simulator's object position (privileged state, not what the learned residual gets):

    python benchmarks/rl_failures.py benchmarks/results/rl_work/base_can_v2/checkpoints/step_0001200 --task can --steer 0.3
    python benchmarks/rl_failures.py benchmarks/results/rl_work/base_can_v5/checkpoints/step_0001500 --task can --steer 0.3 --hold-open 0.02
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from robolearn.sim.env import quat_to_rot6d

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine  # noqa: E402

LIFT_M = 0.03  # the object counts as lifted 3 cm above where it started
STEER_ABOVE_M = 0.012  # --steer: bring the fingertips this far above the object's centre
OSC_M = 0.05  # metres of target motion per unit of a robosuite OSC delta action


def steer(action: np.ndarray, eef: np.ndarray, obj: np.ndarray, bound: float, hold: float = 0.0) -> np.ndarray:
    """The scripted correction of ``--steer``: while the gripper is commanded open and the object is still
    low, move toward it (x, y first; z once within 2 cm in x, y), each of x, y, z within +-bound.
    ``hold`` > 0 (``--hold-open``) also keeps the gripper open while the base closes it more than ``hold``
    above the object's centre or 2 cm off in x, y: a correction of the gripper's timing as well."""
    if obj[2] >= 0.9:  # already lifted: leave the base alone
        return action
    if action[-1] >= 0:  # the base closes
        off = eef - obj
        if hold <= 0 or (off[2] <= hold and np.linalg.norm(off[:2]) <= 0.02):
            return action
        action = action.copy()
        action[-1] = -1.0
    d = np.array([obj[0] - eef[0], obj[1] - eef[1], obj[2] + STEER_ABOVE_M - eef[2]]) / OSC_M
    if np.linalg.norm(d[:2]) > 0.4:
        d[2] = 0.0
    out = action.copy()
    out[:3] += np.clip(d, -bound, bound)
    return out


def grasp_in_object_frame(control: dict[str, np.ndarray], t: int | None) -> dict[str, Any]:
    """Where the gripper was, in the object's own frame, a few ticks after the first close, and the yaw of
    its finger axis (the eef's y axis) against the object's x axis, folded into [0, 90] degrees (a
    two-finger grasp is the same either way round). Meaningful for objects with a heading (square's nut:
    its handle); the ``object`` vector must start with position and the rotation as rot6d. ``t``: the
    tick to read (None: the gripper never closed)."""
    if t is None or control["object"].shape[1] < 9 or "robot0_eef_quat" not in control:
        return {}
    o = control["object"][t]
    ox, oy = o[3:6], o[6:9]
    rot = np.stack([ox, oy, np.cross(ox, oy)], axis=1)
    local = rot.T @ (control["robot0_eef_pos"][t] - o[:3])
    fingers = quat_to_rot6d(control["robot0_eef_quat"][t])[3:6]  # the eef's y axis: rot6d's second column
    yaw = np.degrees(np.arctan2(fingers[1], fingers[0]) - np.arctan2(ox[1], ox[0])) % 180.0
    return {"eef_in_object_frame_m": [round(float(v), 3) for v in local],
            "finger_yaw_vs_object_x_deg": round(float(min(yaw, 180.0 - yaw)), 1)}


def classify(control: dict[str, np.ndarray], success: bool) -> dict[str, Any]:
    """One episode's control rows -> its failure mode and the numbers behind it."""
    obj = control["object"][:, :3]
    eef = control["robot0_eef_pos"]
    lifted = obj[:, 2] - obj[0, 2] > LIFT_M
    closing = np.where(control["action"][:, -1] > 0)[0]  # gripper command > 0 closes (robosuite)
    first_close = int(closing[0]) if len(closing) else None
    # a few ticks after the first close (the fingers take that long to shut)
    at_close = None if first_close is None else min(first_close + 5, len(obj) - 1)
    o0 = control["object"][0]
    heading = {"object_yaw0_deg": round(float(np.degrees(np.arctan2(o0[4], o0[3]))), 1)} if len(o0) >= 9 else {}
    row: dict[str, Any] = {
        "success": success, "steps": len(obj), "first_lift": int(np.argmax(lifted)) if lifted.any() else None,
        "first_close": first_close, "closes": int(np.sum(np.diff((control["action"][:, -1] > 0).astype(int)) == 1)
                                                  + int(control["action"][0, -1] > 0)),
        "offset_at_close_m": None if at_close is None else [round(float(v), 3) for v in (eef - obj)[at_close]],
        "min_eef_object_m": round(float(np.linalg.norm(eef - obj, axis=1).min()), 3),
        **grasp_in_object_frame(control, at_close),
        "object_xy0": [round(float(v), 3) for v in obj[0, :2]],
        **heading,  # the object's starting heading (its x axis in the table plane), when it has a rotation
    }
    if success:
        row["mode"] = "success"
    elif not lifted.any():
        row["mode"] = "never_lifted"
    elif lifted[-1]:
        row["mode"] = "holding_at_timeout"
    else:
        row["mode"] = "dropped"
    return row


class Steered:
    """An agent whose actions get :func:`steer`'s correction; it reads every tick's observation."""

    def __init__(self, agent: Any, bound: float, hold: float = 0.0) -> None:
        self.agent, self.bound, self.hold = agent, bound, hold

    def __getattr__(self, name: str) -> Any:
        return getattr(self.agent, name)

    def observation_needed(self, i: int) -> bool:
        return True

    def act(self, observations: Any) -> dict[int, np.ndarray]:
        out = self.agent.act(observations)
        return {i: steer(a, observations[i]["robot0_eef_pos"], observations[i]["object"][:3], self.bound,
                      self.hold)
                for i, a in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("policy", help="a checkpoint or run directory (a residual run too)")
    ap.add_argument("--task", default="can")
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--n-envs", type=int, default=5, help="envs stepped in lockstep in this one process")
    ap.add_argument("--steer", type=float, default=0.0,
                    help="add a scripted correction within +-STEER in x, y, z (raw action units; see above)")
    ap.add_argument("--hold-open", type=float, default=0.0, metavar="M",
                    help="with --steer: keep the gripper open while it is more than M metres above the "
                         "object's centre (or 2 cm off in x, y) when the base closes it")
    args = ap.parse_args()

    import torch

    from robolearn.eval.runner import eval_seeds, resolve_checkpoint
    from robolearn.rigs import make_rig
    from robolearn.rollout import PolicyAgent, policy_features, run_batched

    torch.set_num_threads(1)
    path = Path(args.policy)
    rigs = [make_rig(f"sim:{args.task}") for _ in range(args.n_envs)]
    if (path / "checkpoints" / "last" / "residual.json").is_file() or (path / "residual.json").is_file():
        from robolearn.rl.residual import ResidualAgent, load_residual

        res = load_residual(path if (path / "residual.json").is_file() else path / "checkpoints" / "last")
        agent: Any = ResidualAgent(res, policy_features(res.base, rigs[0]), args.n_envs)
    else:
        from robolearn.policies.checkpoint import load_policy

        policy = load_policy(resolve_checkpoint(path), device="cpu")
        agent = PolicyAgent(policy, policy_features(policy, rigs[0]), args.n_envs)
    if args.steer > 0:
        agent = Steered(agent, args.steer, args.hold_open)
    try:
        eps = run_batched(rigs, agent, eval_seeds(args.episodes), keep_streams=("control",))
    finally:
        for r in rigs:
            r.close()
    rows = sorted(({"seed": int(ep.seed), **classify(ep.control, bool(ep.success))} for ep in eps),
                  key=lambda r: r["seed"])
    counts = Counter(r["mode"] for r in rows)
    missed = [r["offset_at_close_m"] for r in rows if r["mode"] == "never_lifted" and r["offset_at_close_m"]]
    grasped = [r["offset_at_close_m"] for r in rows if r["mode"] == "success" and r["offset_at_close_m"]]
    # Where the object starts, along x (away from the robot): on can, the misses gather at the near edge.
    xs = np.array([r["object_xy0"][0] for r in rows if r.get("object_xy0")])
    by_x = []
    if len(xs) == len(rows) and len(rows) >= 3:
        edges = np.linspace(xs.min(), xs.max() + 1e-9, 4)
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            m = [r["success"] for r, x in zip(rows, xs, strict=True) if lo <= x < hi]
            by_x.append({"x_from_m": round(float(lo), 3), "x_to_m": round(float(hi), 3), "episodes": len(m),
                         "success": round(float(np.mean(m)), 3) if m else None})
    summary = {"policy": str(path), "task": args.task, "episodes": len(rows), "modes": dict(counts),
               "success_by_start_x": by_x,
               "median_offset_at_close_m": {"never_lifted": np.median(missed, 0).round(3).tolist() if missed else None,
                                            "success": np.median(grasped, 0).round(3).tolist() if grasped else None},
               "machine": machine(), "episodes_detail": rows}
    print(f"{path} on {args.task}, {len(rows)} seeds: " + ", ".join(f"{k} {v}" for k, v in counts.most_common()))
    for b in by_x:
        print(f"  object starting at x {b['x_from_m']:+.3f} .. {b['x_to_m']:+.3f} m: {b['episodes']} episodes, "
              f"success {b['success']}")
    for k, v in summary["median_offset_at_close_m"].items():
        print(f"  median eef - object (x, y, z) at the first close, {k}: {v}")
    for mode in ("success", "never_lifted"):
        mine = [r for r in rows if r["mode"] == mode and "eef_in_object_frame_m" in r]
        if not mine:
            continue
        local = np.array([r["eef_in_object_frame_m"] for r in mine])
        yaw = np.percentile([r["finger_yaw_vs_object_x_deg"] for r in mine], [25, 50, 75]).round(1).tolist()
        iqr = (np.percentile(local, 75, 0) - np.percentile(local, 25, 0)).round(3).tolist()
        med = np.median(local, 0).round(3).tolist()
        summary.setdefault("object_frame_at_close", {})[mode] = {
            "eef_median_m": med, "eef_iqr_m": iqr, "finger_yaw_deg_quartiles": yaw}
        print(f"  {mode}: eef in the object's frame at the first close, median {med} m (IQR {iqr}); "
              f"finger yaw vs the object's x axis, quartiles {yaw} deg")
    name = path.parent.parent.name + "_" + path.name if path.parent.name == "checkpoints" else path.name
    if args.steer > 0:
        name += f"_steer{args.steer:g}"
        summary["steer"] = args.steer
    if args.steer > 0 and args.hold_open > 0:
        name += f"_hold{args.hold_open:g}"
        summary["hold_open_m"] = args.hold_open
    out = RESULTS / f"rl_failures_{args.task}_{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
