"""The MuJoCo twin as an arm: its world (:mod:`robolearn.hardware.twin`) runs in a process of its own,
and this driver talks to it the way a real driver talks to its arm's controller box."""

from __future__ import annotations

import multiprocessing as mp
import time
from typing import Any

import numpy as np

from robolearn.features import Feature
from robolearn.hardware.arms.base import Arm, ArmConfig, ArmState
from robolearn.hardware.twin import STATUS_KEYS, TwinStateReader, TwinWorldConfig, run_world


class TwinArm(Arm):
    """The sim task's Panda, driven through the world process."""

    def __init__(self, cfg: ArmConfig) -> None:
        super().__init__(cfg)
        self._proc: Any = None
        self._conn: Any = None
        self._reader: TwinStateReader | None = None
        self._grip: float | None = None
        self._info: dict[str, Any] = {}

    def connect(self) -> None:
        from robolearn.sim.tasks import load_task

        load_task(self.cfg.task)  # an unknown task is the user's mistake: say so before starting anything
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        world_cfg = TwinWorldConfig(
            task=str(self.cfg.task),
            seed=self.cfg.seed,
            action_latency_s=self.cfg.action_latency_s,
            # the servo loop's 50 -> 30: below the servo loop and the recorder's control loop (40)
            rt_priority=max(0, self.cfg.rt_priority - 20) if self.cfg.rt_priority else 0,
        )
        self._proc = ctx.Process(target=run_world, args=(world_cfg, child), name="robolearn-twin-world")
        self._proc.start()
        child.close()
        if not self._conn.poll(self.cfg.connect_timeout_s):
            self._proc.kill()
            raise RuntimeError(
                f"twin world for task {self.cfg.task!r} did not start in {self.cfg.connect_timeout_s} s"
            )
        kind, info = self._conn.recv()
        if kind != "ready":
            raise RuntimeError(info)
        self._info = info
        self._reader = TwinStateReader(info["shm"], info["layout"])
        self._features = {
            k: Feature(shape, "float64" if k == "sim_state" else "float32")
            for k, (_, shape) in info["layout"].items()
            if k not in STATUS_KEYS
        }

    @property
    def features(self) -> dict[str, Feature]:
        return self._features

    @property
    def joint_limits(self) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self._info["joint_limits"]
        return np.asarray(lo), np.asarray(hi)

    def read(self) -> ArmState:
        assert self._reader is not None
        vals, t, _ = self._reader.read()
        out = {
            k: (v.astype(np.float64) if k == "sim_state" else v.astype(np.float32))
            for k, v in vals.items()
            if k not in STATUS_KEYS
        }
        return ArmState(out, t, success=bool(vals["success"] > 0.5))

    def _send(self, *msg: Any) -> None:
        try:
            self._conn.send((*msg, time.monotonic()))
        except (BrokenPipeError, OSError):
            raise RuntimeError("the twin world process is gone") from None

    def servo_pose(self, pose: np.ndarray, t: float) -> None:
        self._send("pose", np.asarray(pose, dtype=np.float64))

    def servo_joints(self, q: np.ndarray, t: float) -> None:
        self._send("joints", np.asarray(q, dtype=np.float64))

    def gripper(self, close: float) -> None:
        if self._grip != close:  # the world keeps the last command; resend only changes
            self._grip = close
            self._send("grip", float(close))

    def stop(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            self._send("hold")

    def set_action_latency(self, seconds: float) -> None:
        self._send("latency", float(seconds))

    def reset(self, seed: int | None) -> None:
        self._conn.send(("reset", seed))
        if not self._conn.poll(self.cfg.connect_timeout_s):
            raise RuntimeError("twin world did not answer a reset")
        self._conn.recv()
        self._grip = None

    def extra_info(self) -> dict[str, Any]:
        return {
            "twin_shm": self._info.get("shm"),
            "twin_layout": self._info.get("layout"),
            "world_pid": self._proc.pid if self._proc else None,
        }

    def disconnect(self) -> None:
        if self._proc is None:
            return
        try:
            self._conn.send(("close",))
        except (BrokenPipeError, OSError):
            pass
        self._proc.join(5.0)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(1.0)
        if self._reader is not None:
            self._reader.close()
        self._proc = None
