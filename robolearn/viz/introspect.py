"""Policy introspection: one simulated episode of a diffusion/flow policy, with the action chunks it
*could* have executed drawn beside the one it did.

At every chunk boundary the policy is sampled ``samples`` more times on the same observation history
with different initial noise; each sample's remaining horizon (from the current step on) becomes a
3-D end-effector path: OSC_POSE moves the end-effector target by ``action[:3] * scale`` metres per
step (``scale`` read from the robosuite controller: output range / input range, 0.05 m for the
shipped tasks), so a chunk's commanded path is the current position plus the running sum. Spread
between the samples shows the policy's multimodality; the executed path is the end-effector's actual
positions.

Entity paths: ``scene/samples`` (one strip per sample), ``scene/chunk`` (the executed chunk's
commanded path), ``scene/executed`` (actual path so far), ``scene/eef`` and ``scene/<object>``
(points), ``camera/<name>`` (image), ``action`` (series). Timelines ``step`` and ``sim_time``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from robolearn.errors import UserError
from robolearn.viz import APP_ID, open_sink, require_rerun
from robolearn.viz.live import eef_path

EEF_KEY = "robot0_eef_pos"


def _pos_scale(rig: Any) -> float:
    """Metres of target offset per unit of position action, from the rig's robosuite controller."""
    try:
        c = rig.env.robosuite_env.robots[0].controller
        return float((c.output_max[0] - c.output_min[0]) / (c.input_max[0] - c.input_min[0]))
    except (AttributeError, IndexError, TypeError):
        return 0.05


def introspect(policy: str | os.PathLike, task: str, seed: int = 0, samples: int = 8, sink: str = "spawn",
               camera: str | None = "agentview", image_size: int = 128, max_steps: int | None = None) -> dict[str, Any]:
    """Run one episode of ``policy`` on ``sim:<task>`` and log it with sampled chunks (module docstring).
    Returns where it went, steps, chunks, success and the mean spread of the samples' end points (m)."""
    import torch

    from robolearn.eval.runner import policy_cameras, resolve_checkpoint
    from robolearn.policies.checkpoint import load_policy
    from robolearn.rigs import make_rig
    from robolearn.rollout import PolicyController, run_episode, stack_histories

    rr = require_rerun()
    if samples < 1:
        raise UserError(f"--samples must be at least 1, got {samples}")
    pol = load_policy(resolve_checkpoint(policy)).eval()
    if not hasattr(pol, "predict_action") or not hasattr(pol, "shape_meta"):
        raise UserError(f"{policy} is not a diffusion/flow policy checkpoint (a fine-tuned residual? give its base)")
    if EEF_KEY not in pol.shape_meta.obs and pol.action_dim < 3:
        raise UserError(f"{policy}: actions of {pol.action_dim} dims are no end-effector deltas")
    cams, size, depth = policy_cameras(pol.shape_meta.obs)
    if camera and camera not in cams:
        cams = [*cams, camera]
        size = size if len(cams) > 1 else image_size  # one image size per rig: the policy's wins
    rig = make_rig(f"sim:{task}", cameras=cams, image_size=size, depth=depth)
    rec = rr.RecordingStream(APP_ID, recording_id=f"introspect-{os.getpid()}")
    where = open_sink(rec, sink)
    rec.send_recording_name(f"{task} seed {seed}: {samples} samples per chunk")
    scale = _pos_scale(rig)
    ctrl = PolicyController(pol, rig)
    agent = ctrl.agent
    gen = torch.Generator().manual_seed(seed + 1)
    executed: list[np.ndarray] = []
    spreads: list[float] = []
    state = {"chunks": 0}
    action_names = list(rig.action_feature.names or [])
    rec.log("action", rr.SeriesLines(names=action_names), static=True)

    class Introspecting:
        def reset(self, seed: int | None = None) -> None:
            ctrl.reset(seed)

        def act(self, obs: Any) -> tuple[np.ndarray, bool]:
            before = agent.chunk_count[0]
            action, flag = ctrl.act(obs)
            control = obs["control"]
            eef = np.asarray(control.values[EEF_KEY], np.float32)
            step = len(executed)
            rec.set_time("step", sequence=step)
            rec.set_time("sim_time", duration=np.timedelta64(int(round(control.t_device * 1e9)), "ns"))
            executed.append(eef)
            rec.log("scene/eef", rr.Points3D([eef], radii=0.008, colors=[255, 255, 255]))
            rec.log("scene/executed", rr.LineStrips3D([np.stack(executed)], colors=[255, 255, 255]))
            for name, pose in rig.env.privileged().objects.items():
                rec.log(f"scene/{name}", rr.Points3D([pose.pos], radii=0.02, colors=[230, 60, 60], labels=[name]))
            for cam in cams:
                if cam in obs:
                    rec.log(f"camera/{cam}", rr.Image(obs[cam].values[f"{cam}_image"]))
            rec.log("action", rr.Scalars(np.asarray(action, np.float64)))
            if agent.chunk_count[0] != before:  # a new chunk was computed this tick: sample alternatives
                state["chunks"] += 1
                h = agent.histories[0]
                with torch.no_grad():
                    batch = stack_histories([h] * samples)
                    noise = torch.randn((samples, pol.horizon, pol.action_dim), generator=gen)
                    chunks = pol.predict_action(batch, noise=noise, generator=gen).to("cpu", torch.float32).numpy()
                future = chunks[:, pol.n_obs_steps - 1:]  # from this step on
                paths = [eef_path(eef, c, scale) for c in future]
                ends = np.stack([p[-1] for p in paths])
                spreads.append(float(np.mean(np.linalg.norm(ends - ends.mean(0), axis=1))))
                colors = [_hue(i / max(samples, 1)) for i in range(samples)]
                rec.log("scene/samples", rr.LineStrips3D(paths, colors=colors, radii=0.002))
                rec.log("scene/chunk", rr.LineStrips3D([eef_path(eef, agent.last_chunk[0], scale)],
                                                        colors=[255, 200, 0], radii=0.004))
            return action, flag

    try:
        ep = run_episode(rig, Introspecting(), seed=seed, max_steps=max_steps)
        rec.flush()
        if sink.startswith("serve"):
            from robolearn.viz.episode import serve_forever

            serve_forever(on_ready=lambda: print(f"serving on {where}; Ctrl-C to stop", flush=True))
        rec.disconnect()
    finally:
        rig.close()
    return {"where": where, "steps": ep.steps, "chunks": state["chunks"], "success": bool(ep.success),
            "spread_m": float(np.mean(spreads)) if spreads else 0.0, "pos_scale": scale}


def _hue(x: float) -> list[int]:
    import colorsys

    r, g, b = colorsys.hsv_to_rgb(x, 0.8, 1.0)
    return [int(255 * r), int(255 * g), int(255 * b)]
