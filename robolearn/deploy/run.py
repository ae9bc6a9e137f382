"""``robolearn deploy``: build the rig and the inference backend, run episodes, record them.

Rollouts go into a store (``--record``) as ``source: policy`` episodes: the control stream holds the
observations the policy saw and the actions executed (with both clocks); the ``policy`` stream one
row per chunk received (``proposed_chunk``, stamped with the observation time it was computed for
and the time it arrived, plus the actions dropped as late); columns ``reward`` (the rig's success
check, where it has one) and ``held`` (1 where no action was scheduled and the arm held); the episode
info the blending mode, the latencies compensated and injected, and the inference times.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from robolearn.deploy.loop import POLICY_STREAM, DeployConfig, DeployEpisode, DeployLoop, DeployStop, Operator
from robolearn.errors import UserError
from robolearn.features import CONTROL_STREAM, Feature


@dataclass
class DeploySummary:
    episodes: int = 0
    successes: int = 0
    late_dropped: int = 0
    held_ticks: int = 0
    steps: int = 0
    stopped: str | None = None
    per_episode: list[dict[str, Any]] = field(default_factory=list)
    store_episodes: list[int] = field(default_factory=list)

    @property
    def success_rate(self) -> float:
        return self.successes / self.episodes if self.episodes else 0.0


def is_remote(policy: str) -> bool:
    return policy.startswith(("tcp://", "ipc://"))


def make_backend(policy: str, inference: str = "thread", timeout_s: float = 2.0, threads: int | None = None,
                 device: str = "cpu") -> tuple[Any, Any, Callable[[], None]]:
    """(backend, policy description for the feature check, close) for a run directory or a server address."""
    from robolearn.deploy.inference import LocalInference, RemoteInference, policy_features_from_info

    if is_remote(policy):
        backend = RemoteInference(policy, timeout_s=timeout_s)
        return backend, policy_features_from_info(backend.info), backend.close
    from robolearn.eval.runner import resolve_checkpoint

    ckpt = resolve_checkpoint(policy)
    if inference == "process":
        from robolearn.deploy.server import start_local_server

        proc, endpoint = start_local_server(str(ckpt), threads=threads)
        backend = RemoteInference(endpoint, timeout_s=max(timeout_s, 30.0))
        backend.kind = "process"

        def close() -> None:
            backend.close()
            proc.terminate()
            proc.join(5.0)

        return backend, policy_features_from_info(backend.info), close
    if inference != "thread":
        raise UserError(f"unknown --inference {inference!r}; use thread or process")
    from robolearn.eval.runner import resolve_device
    from robolearn.policies.checkpoint import load_policy

    pol = load_policy(ckpt, device=resolve_device(device))
    pol.eval()
    backend = LocalInference(pol, str(ckpt), threads=threads)
    return backend, policy_features_from_info(backend.info), backend.close


def make_deploy_rig(spec: str, policy_info: Any, cfg: DeployConfig, overrides: list[str] | None = None) -> Any:
    """The rig (with any injected latency) a policy with ``policy_info``'s inputs runs on."""
    from robolearn.rigs import make_rig
    from robolearn.rigs.delayed import DelayedRig

    if spec.startswith("sim:"):
        if overrides:
            raise UserError("--set changes rig files; sim:<task> rigs take none")
        cams, size, depth = [], 84, False
        for key, f in policy_info.shape_meta.obs.items():
            if f.kind in ("rgb", "depth"):
                cam = key.rsplit("_", 1)[0]
                if cam not in cams:
                    cams.append(cam)
                size, depth = f.shape[0], depth or f.kind == "depth"
        rig = make_rig(spec, cameras=cams, image_size=size, depth=depth)
    else:
        rig = make_rig(spec, overrides=list(overrides or []))
    try:
        out = DelayedRig(rig, cfg.inject_obs_latency_s, cfg.inject_action_latency_s)
        out.connect()
    except BaseException:
        rig.close()
        raise
    return out


def rollout_streams(rig: Any, action_dim: int, n_action_steps: int) -> dict[str, dict[str, Feature]]:
    """The streams a deployment store holds: control (+ action), a simulator's cameras, the policy's chunks."""
    control = dict(rig.features[CONTROL_STREAM])
    control["action"] = rig.action_feature
    out = {CONTROL_STREAM: control}
    out |= {s: dict(keys) for s, keys in rig.features.items() if s != CONTROL_STREAM and not rig.realtime}
    out[POLICY_STREAM] = {"proposed_chunk": Feature((n_action_steps, action_dim), "float32"),
                          "late_actions": Feature((1,), "float32")}
    return out


def _declare(store: Any, rig: Any, action_dim: int, n_action_steps: int) -> None:
    for s, keys in rollout_streams(rig, action_dim, n_action_steps).items():
        store.declare_stream(s, keys)


def write_rollout(store: Any, dep: DeployEpisode, rig: Any, policy: str, task: str = "",
                  columns: dict[str, tuple[np.ndarray, dict[str, Any]]] | None = None) -> int:
    """Commit one deployment episode to ``store`` (see the module docstring); ``columns``: more per-tick
    columns (name -> (values, provenance)), e.g. the residual's size during on-robot RL."""
    from robolearn.data.schema import EpisodeInfo

    ep = dep.episode
    _declare(store, rig, rig.action_feature.shape[0], int(dep.info["chunk_actions"]))
    control = ep.control
    with store.begin_episode() as w:
        w.extend(CONTROL_STREAM, control["t_device"], control["t_host"],
                 **{k: control[k] for k in store.streams[CONTROL_STREAM]})
        for s, rows in ep.streams.items():
            if s != CONTROL_STREAM and s in store.streams:
                w.extend(s, rows["t_device"], rows["t_host"], **{k: rows[k] for k in store.streams[s]})
        if dep.chunks:
            w.extend(POLICY_STREAM, np.array([c.t_obs for c in dep.chunks]), np.array([c.t_arrive for c in dep.chunks]),
                     proposed_chunk=np.stack([c.actions for c in dep.chunks]).astype(np.float32),
                     late_actions=np.array([[c.late] for c in dep.chunks], np.float32))
        if ep.step_success is not None:
            w.set_column("reward", ep.step_success.astype(np.float32), provenance={"source": "rig", "rig": rig.spec()})
        w.set_column("held", np.array([t.held for t in dep.trace] or [1.0] * ep.steps, np.float32)[: ep.steps],
                     provenance={"source": "deploy"})
        if ep.intervention.any():  # ticks a teleoperator drove (on-robot RL)
            w.set_column("intervention", ep.intervention.astype(np.float32), provenance={"source": "teleop"})
        for name, (values, prov) in (columns or {}).items():
            w.set_column(name, np.asarray(values, np.float32), provenance=prov)
        info = EpisodeInfo(task=task or rig.task_text, success=bool(ep.success), source="policy", rig=rig.spec(),
                           fps=float(rig.control_hz), seed=ep.seed,
                           notes={**rig.episode_notes(), "clocks": rig.clocks, "policy": policy, **dep.info})
        return w.commit(info)


def _record(store: Any, dep: DeployEpisode, rig: Any, policy: str, task: str, shaper: Any) -> int:
    idx = write_rollout(store, dep, rig, policy, task, columns=shaper.columns(dep) if shaper is not None else None)
    if shaper is not None:
        shaper.recorded(dep, idx)
    return idx


@contextmanager
def realtime_control(rig: Any) -> Iterator[bool]:
    """On a real-time rig, run the calling thread (the control loop) under SCHED_FIFO at the rig file's
    ``realtime_priority`` (as ``record`` does), with the objects imported so far frozen out of the garbage
    collector's sight and the CPUs kept out of slow idle states (:func:`~robolearn.record.cpu_latency_qos`);
    threads and processes started before keep normal scheduling. Yields whether it is."""
    import gc
    import os

    rt, qos = False, None
    if rig.realtime:
        from robolearn.record import _realtime_thread, cpu_latency_qos

        rt = _realtime_thread(int(getattr(getattr(rig, "config", None), "realtime_priority", 0) or 0))
        qos = cpu_latency_qos() if rt and getattr(getattr(rig, "config", None), "cpu_idle_poll", False) else None
        gc.collect()
        gc.freeze()
    try:
        yield rt
    finally:
        if rt:
            from robolearn.record import release_qos

            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
            release_qos(qos)


def _wait_for_start(op: Operator) -> bool:
    """Between episodes on a real rig the arm holds until the operator presses enter (False: quit)."""
    import time

    print("robolearn deploy: enter starts the episode, esc quits", file=sys.stderr, flush=True)
    while True:
        evs = op.events()
        if "quit" in evs or "estop" in evs:
            return False
        if "start" in evs:
            return True
        time.sleep(0.02)


def deploy(rig_spec: str, policy: str, cfg: DeployConfig, episodes: int = 1, seed: int | None = None,
           record: str | None = None, inference: str = "auto", overrides: list[str] | None = None,
           timeout_s: float = 2.0, threads: int | None = None, view: str | None = None, operator: bool | None = None,
           progress: Callable[[DeploySummary], None] | None = None, task: str = "",
           shaper: Any = None) -> DeploySummary:
    """Run ``episodes`` of ``policy`` (a run directory, or a server ``tcp://host:port``) on ``rig_spec``.

    Seeds: simulated rigs and the twin start at ``seed`` (default: the evaluation seeds, so results
    compare with ``robolearn eval``). A safety stop ends the run with :class:`DeployStop` after the
    arm is stopped and the episode in flight is recorded.

    ``shaper`` (on-robot RL, :mod:`robolearn.rl.robot`) is connected to the rig, shapes every tick's
    action (:class:`DeployLoop`), gives extra store columns and hears of every episode recorded."""
    from robolearn.eval.runner import EVAL_SEED_BASE

    cfg.validate()
    if inference == "auto":
        # A real-time rig's control loop must not share the interpreter lock with the policy (the loop
        # waits up to a switch interval for it: jitter p99 14 ms vs 2.4 ms in a process of its own,
        # bench_deploy.py); a simulator's virtual clock does not care.
        from robolearn.rigs import rig_class

        inference = "process" if rig_class(rig_spec).realtime else "thread"
    backend, info, close_backend = make_backend(policy, inference, timeout_s, threads)
    rig = None
    store = None
    op = None
    live_view = None
    summary = DeploySummary()
    scope = ExitStack()
    try:
        rig = make_deploy_rig(rig_spec, info, cfg, overrides)
        if hasattr(backend, "check_features"):  # the server's half of the handshake, with every rig feature
            backend.check_features({k: f for keys in rig.features.values() for k, f in keys.items()})
        if view:
            from robolearn.viz.live import make_view  # lazily: only with --view

            # A real rig's camera frames are in shared memory already: the view reads them there.
            rings = {s: name for s, (name, _) in rig.rings().items()} if hasattr(rig, "rings") else None
            live_view = make_view(view, features=rig.features, action_names=rig.action_feature.names,
                                  camera_rings=rings)
        if operator is None:
            operator = bool(rig.realtime and sys.stdin.isatty())
        if operator:
            op = Operator()
            print("robolearn deploy: keys: " + ", ".join(f"{k} {v}" for k, v in Operator.KEYS.items()),
                  file=sys.stderr, flush=True)
        if shaper is not None:
            shaper.connect(rig)
        loop = DeployLoop(rig, backend, info, cfg, operator=op, view=live_view, shaper=shaper)
        if record:
            from robolearn.data.store import DemoStore

            store = DemoStore.open(record, mode="a")
        scope.enter_context(realtime_control(rig))  # after every thread and device process has started
        simulated = not rig.realtime or getattr(getattr(rig, "config", None), "arm", None) is not None and \
            rig.config.arm.type == "twin"
        next_seed = (EVAL_SEED_BASE if seed is None else seed) if simulated else None
        for _ in range(episodes):
            if op is not None and not _wait_for_start(op):
                break
            try:
                dep = loop.run_episode(next_seed)
            except DeployStop as e:
                summary.stopped = str(e)
                dep = getattr(loop, "last_episode", None)
                if dep is not None and store is not None:
                    summary.store_episodes.append(_record(store, dep, rig, policy, task, shaper))
                raise
            if next_seed is not None:
                next_seed += 1
            if dep.info.get("discard"):
                if dep.info.get("stop_reason") == "quit":
                    break
                continue
            ep = dep.episode
            summary.episodes += 1
            summary.successes += int(bool(ep.success))
            summary.late_dropped += dep.info["late_dropped"]
            summary.held_ticks += dep.info["held_ticks"]
            summary.steps += ep.steps
            summary.per_episode.append({"seed": ep.seed, "success": bool(ep.success), "length": ep.steps,
                                        "late_dropped": dep.info["late_dropped"], "held": dep.info["held_ticks"],
                                        "chunks": dep.info["chunks"]})
            if store is not None:
                summary.store_episodes.append(_record(store, dep, rig, policy, task, shaper))
            if progress is not None:
                progress(summary)
    finally:
        scope.close()
        if op is not None:
            op.close()
        if live_view is not None:
            live_view.close()
        if shaper is not None:
            shaper.disconnect()
        if store is not None:
            store.close()
        if rig is not None:
            rig.close()
        close_backend()
    return summary
