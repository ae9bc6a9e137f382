"""Simulated rigs for RL: ``n_envs`` environments spread over worker processes, stepped in lockstep.

The policy side (base, residual, critics) stays in the main process and batches all environments;
a worker only steps its rigs. ``workers=0`` keeps the rigs in this process (tests, tiny runs).
"""

from __future__ import annotations

import multiprocessing as mp
import time
import traceback
from collections.abc import Mapping
from typing import Any

import numpy as np

from robolearn.errors import UserError

WORKER_TIMEOUT_S = 600.0  # one step or reset taking longer than this is a hung worker

Obs = dict[str, np.ndarray]


class _Rigs:
    """A few rigs in one process: reset by seed, step, flat low-dim observations (+ one camera)."""

    def __init__(self, task: str, n: int, camera: str | None, image_size: int, max_steps: int | None) -> None:
        from robolearn.rigs import make_rig

        cams = [camera] if camera else []
        # The camera is rendered from the simulator's state only when asked for (bit-identical to rendering
        # while stepping): evaluations, which read low-dim state only, then step at the physics' speed.
        self.rigs = [make_rig(f"sim:{task}", cameras=cams, image_size=image_size, defer_cameras=bool(cams))
                     for _ in range(n)]
        self.camera = camera
        self.render = bool(camera)
        self.limit = max_steps or self.rigs[0].max_steps
        self.steps = [0] * n

    def set_render(self, on: bool) -> dict:
        self.render = bool(on) and self.camera is not None
        return {}

    def _obs(self, j: int) -> Obs:
        from robolearn.rigs.base import flat

        obs = {k: np.asarray(v) for k, v in flat(self.rigs[j].observe()).items()}
        state = obs.pop("sim_state")
        if self.render:
            obs.update(self.rigs[j].render_state(state))
        return obs

    def reset(self, seeds: list[tuple[int, int]]) -> dict[int, Obs]:
        out = {}
        for j, seed in seeds:
            self.rigs[j].reset(seed)
            self.steps[j] = 0
            out[j] = self._obs(j)
        return out

    def step(self, actions: Mapping[int, np.ndarray]) -> dict[int, tuple[Obs, bool, bool]]:
        out = {}
        for j, a in actions.items():
            r = self.rigs[j].send_action(np.asarray(a, np.float32))
            self.steps[j] += 1
            out[j] = (self._obs(j), bool(r.success), bool(r.truncated or self.steps[j] >= self.limit))
        return out

    def close(self) -> None:
        for r in self.rigs:
            r.close()


def _worker(conn: Any, args: tuple) -> None:
    import torch

    torch.set_num_threads(1)
    rigs = None
    try:
        rigs = _Rigs(*args)
        conn.send(("ok", None))
        while True:
            cmd, payload = conn.recv()
            if cmd == "close":
                break
            conn.send(("ok", getattr(rigs, cmd)(payload)))
    except (EOFError, ConnectionError, KeyboardInterrupt):  # the parent is gone or stopping: nothing to report
        pass
    except BaseException as e:  # noqa: BLE001 - the parent reports it
        conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
    finally:
        if rigs is not None:
            rigs.close()


class EnvPool:
    """``n_envs`` simulated rigs of ``task`` over ``workers`` processes; indices 0..n_envs-1."""

    def __init__(self, task: str, n_envs: int, workers: int = 0, camera: str | None = None,
                 image_size: int = 84, max_steps: int | None = None) -> None:
        from robolearn.sim.tasks import load_task

        self.task = load_task(task)
        if n_envs < 1:
            raise UserError(f"env.n_envs must be >= 1, got {n_envs}")
        self.n_envs = n_envs
        self.max_steps = max_steps or self.task.horizon
        self.workers = min(workers, n_envs)
        self._inflight: tuple[str, dict[int, dict[int, Any]]] | None = None
        if self.workers == 0:
            self.local: _Rigs | None = _Rigs(task, n_envs, camera, image_size, max_steps)
            self.owner = [(0, j) for j in range(n_envs)]
            self._back = {(0, j): j for j in range(n_envs)}
            return
        self.local = None
        per = [n_envs // self.workers + (w < n_envs % self.workers) for w in range(self.workers)]
        self.owner = [(w, j) for w in range(self.workers) for j in range(per[w])]
        self._back = {(w, j): i for i, (w, j) in enumerate(self.owner)}
        ctx = mp.get_context("spawn")
        self.conns, self.procs = [], []
        for w in range(self.workers):
            a, b = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(b, (task, per[w], camera, image_size, max_steps)), daemon=True,
                            name=f"robolearn-rl-env-{w}")
            p.start()
            b.close()  # the worker's end lives in the worker only: its death is an EOF here, not a hang
            self.conns.append(a)
            self.procs.append(p)
        for w in range(self.workers):
            self._recv(w)

    def _recv(self, w: int) -> Any:
        t0 = time.monotonic()
        while not self.conns[w].poll(1.0):
            if not self.procs[w].is_alive():
                break  # recv() below reports the death with its exit code
            if time.monotonic() - t0 > WORKER_TIMEOUT_S:
                raise RuntimeError(f"RL env worker {w} made no progress for {WORKER_TIMEOUT_S:.0f} s")
        try:
            kind, payload = self.conns[w].recv()
        except (EOFError, ConnectionResetError):  # the worker died (reset: it died with our message unread)
            self.procs[w].join(2)  # reaped, so its exit code is known
            raise RuntimeError(f"RL env worker {w} (pid {self.procs[w].pid}) died "
                               f"(exit code {self.procs[w].exitcode})") from None
        if kind == "error":
            raise RuntimeError(f"RL env worker {w} failed: {payload}")
        return payload

    def _call(self, cmd: str, per_env: Mapping[int, Any]) -> dict[int, Any]:
        self._send(cmd, per_env)
        return self._gather()

    def _send(self, cmd: str, per_env: Mapping[int, Any]) -> None:
        if self._inflight is not None:
            raise RuntimeError("EnvPool: a step is still in flight; call step_wait() first")
        by_worker: dict[int, dict[int, Any]] = {}
        for i, v in per_env.items():
            w, j = self.owner[i]
            by_worker.setdefault(w, {})[j] = v
        if self.local is None:  # in-process pools do the work at _gather
            for w, arg in by_worker.items():
                self.conns[w].send((cmd, list(arg.items()) if cmd == "reset" else arg))
        self._inflight = (cmd, by_worker)

    def _gather(self) -> dict[int, Any]:
        if self._inflight is None:
            raise RuntimeError("EnvPool: nothing in flight")
        cmd, by_worker = self._inflight
        self._inflight = None
        if self.local is not None:
            arg = by_worker.get(0, {})
            res = getattr(self.local, cmd)(list(arg.items()) if cmd == "reset" else arg)
            return {self._back[(0, j)]: v for j, v in res.items()}
        out: dict[int, Any] = {}
        for w in by_worker:
            for j, v in self._recv(w).items():
                out[self._back[(w, j)]] = v
        return out

    def reset(self, seeds: Mapping[int, int]) -> dict[int, Obs]:
        return self._call("reset", seeds)

    def set_render(self, on: bool) -> None:
        """Whether observations carry the camera image (off for evaluations: low-dim only, much faster)."""
        if self.local is not None:
            self.local.set_render(on)
            return
        for w in range(self.workers):
            self.conns[w].send(("set_render", on))
        for w in range(self.workers):
            self._recv(w)

    def step(self, actions: Mapping[int, np.ndarray]) -> dict[int, tuple[Obs, bool, bool]]:
        """Per env: (observation after the action, success, episode over by the step limit)."""
        return self._call("step", actions)

    def step_async(self, actions: Mapping[int, np.ndarray]) -> None:
        """Start a step on the workers and return at once; ``step_wait`` collects it. The caller's own work
        in between (gradient updates) overlaps with the physics. In-process pools step at ``step_wait``."""
        self._send("step", actions)

    def step_wait(self) -> dict[int, tuple[Obs, bool, bool]]:
        return self._gather()

    def close(self) -> None:
        if self.local is not None:
            self.local.close()
            return
        for c in self.conns:
            try:
                c.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.terminate()
                p.join(5)

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
