"""A real rig from its rig file (``hardware/<rig>.yaml``): an arm and its cameras behind the `Rig` interface.

The arm runs in its controller process (:func:`robolearn.hardware.arms.open_arm`), every camera in
its own process writing a shared-memory ring (:func:`robolearn.hardware.cameras.open_camera`). The
rig's streams: ``control`` (the arm's state, on the arm's clock) and one stream per camera (on the
camera's clock). ``observe`` gives the latest sample of each; ``new_samples`` every camera frame
that arrived since the last call, so a recorder stores each frame, not only the one seen at a tick.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from robolearn.config import load_yaml_config
from robolearn.errors import ConfigError, UserError
from robolearn.features import CONTROL_STREAM, Feature
from robolearn.hardware.arms import ArmConfig, open_arm
from robolearn.hardware.cameras import CameraConfig, open_camera
from robolearn.rigs.base import Observation, Rig, RigError, Sample, StepResult
from robolearn.teleop.devices import TeleopSettings

DEVICES = ("keyboard", "spacemouse", "gamepad", "leader")


@dataclass
class RigTeleopConfig(TeleopSettings):
    """The rig's teleoperation device (``record --teleop`` picks another by name)."""

    device: Literal["keyboard", "spacemouse", "gamepad", "leader"] = "keyboard"
    leader: ArmConfig | None = None  # the leader arm, for device: leader


@dataclass
class LatencyConfig:
    """Measured delays the device clocks do not show; kept with every episode for later alignment."""

    camera_s: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})  # exposure -> device timestamp
    action_s: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})  # command sent -> arm moving


@dataclass
class RigConfig:
    """One rig file: ``hardware/<rig>.yaml``."""

    arm: ArmConfig
    name: str = ""  # defaults to the file's stem
    cameras: list[CameraConfig] = field(default_factory=list)
    teleop: RigTeleopConfig = field(default_factory=RigTeleopConfig)
    # Control ticks per second: the recorder's loop and the arm's command rate (the arm servos faster).
    control_hz: float = field(default=10.0, metadata={"min": 1.0, "max": 500.0})
    task: str = ""  # what the operator demonstrates, unless `record --task` says
    max_episode_s: float = field(default=300.0, metadata={"gt": 0.0})
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    # SCHED_FIFO priority of the recorder's control loop (Linux, root or CAP_SYS_NICE), below the arm's
    # servo loop (50); 0: normal scheduling. Without it a busy machine delays ticks by milliseconds.
    realtime_priority: int = field(default=40, metadata={"min": 0, "max": 99})
    # While that loop runs, keep idle CPUs polling instead of halting (PM QoS, /dev/cpu_dma_latency = 0):
    # a halted CPU, or a VM's halted vCPU, can wake milliseconds late. Costs idle CPU time (power).
    cpu_idle_poll: bool = True
    source: Path | None = field(default=None, metadata={"internal": True})

    def validate(self) -> None:
        names = [c.name for c in self.cameras]
        for i, n in enumerate(names):
            if n == CONTROL_STREAM:
                raise ConfigError(f"'{CONTROL_STREAM}' is the arm's stream; name the camera otherwise",
                                  key=f"cameras[{i}].name")
            if n in names[:i]:
                raise ConfigError(f"two cameras are named {n!r}; camera names must be unique",
                                  key=f"cameras[{i}].name")
        servo = getattr(self.arm, "servo_hz", None)
        if servo is not None and self.control_hz > servo:
            raise ConfigError(f"{self.control_hz:g} Hz is above the arm's servo rate ({servo:g} Hz, arm.servo_hz)",
                              key="control_hz")
        if self.teleop.device == "leader" and self.teleop.leader is None:
            raise ConfigError("device 'leader' needs the leader arm in teleop.leader", key="teleop.leader")

    @property
    def max_steps(self) -> int:
        return max(1, int(round(self.max_episode_s * self.control_hz)))


def load_rig_config(spec: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RigConfig:
    """Read and check a rig file (a path, or a name found by :mod:`robolearn.resources`)."""
    from robolearn.resources import resolve

    path = resolve("rig", spec)
    cfg = load_yaml_config(RigConfig, path, "rig file", overrides=list(overrides))
    cfg.source = path
    if not cfg.name:
        cfg.name = path.stem
    return cfg


class HardwareRig(Rig):
    """An arm and cameras from a rig file, each in its own process."""

    realtime = True

    def __init__(self, config: RigConfig, spec: str | None = None) -> None:
        self.config = config
        self.name = config.name
        self._spec = spec or str(config.source or config.name)
        self.arm: Any = None
        self.cameras: dict[str, Any] = {}
        self._last_frame: dict[str, int] = {}
        self._start_index: dict[str, int] = {}
        self._started_at: float | None = None
        self._closed = False
        self.last_seed: int | None = None

    # ------------------------------------------------------------ lifecycle
    def connect(self) -> None:
        if self.arm is not None:
            return
        for cam in self.config.cameras:
            if cam.type == "playback" and cam.path is not None and not Path(cam.path).exists():
                raise UserError(f"{self._spec}: camera {cam.name}: playback file {cam.path} not found; make it "
                                f"with `robolearn hardware make-playback --rig {self._spec}`")
        # One host clock for every stream: the arm's controller stamps time.monotonic(), cameras stamp
        # time.time() minus clock_origin; this origin puts the cameras on the monotonic clock too.
        origin = time.time() - time.monotonic()
        # The arm takes one action per control tick: the rig's rate is the arm's command rate.
        arm_cfg = dataclasses.replace(self.config.arm, control_hz=self.config.control_hz)
        try:
            for cam in self.config.cameras:
                self.cameras[cam.name] = open_camera(cam, clock_origin=origin)
            self.arm = open_arm(arm_cfg)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        errors = []
        if self.arm is not None:  # the arm first: it must stop even when a camera fails to close
            try:
                self.arm.close()
            except Exception as e:  # noqa: BLE001 - every device gets its close
                errors.append(e)
        for cam in self.cameras.values():
            try:
                cam.close()
            except Exception as e:  # noqa: BLE001
                errors.append(e)
        if errors:
            raise errors[0]

    def _need(self) -> None:
        if self.arm is None:
            if self._closed:
                raise RuntimeError(f"rig {self.name} is closed")
            self.connect()

    # ------------------------------------------------------------ declaration
    @property
    def features(self) -> dict[str, dict[str, Feature]]:
        self._need()
        out = {CONTROL_STREAM: dict(self.arm.features)}
        for name, cam in self.cameras.items():
            out[name] = dict(cam.features)
        return out

    @property
    def action_feature(self) -> Feature:
        self._need()
        return self.arm.action_feature

    @property
    def control_hz(self) -> float:
        return float(self.config.control_hz)

    @property
    def clocks(self) -> dict[str, str]:
        arm_clock = "sim" if self.config.arm.type == "twin" else "arm"
        return {CONTROL_STREAM: getattr(self.arm, "clock", arm_clock),
                **{name: cam.clock for name, cam in self.cameras.items()}}

    @property
    def task_text(self) -> str:
        return self.config.task

    @property
    def max_steps(self) -> int:
        return self.config.max_steps

    def spec(self) -> str:
        return self._spec

    # ------------------------------------------------------------ episodes
    def reset(self, seed: int | None = None) -> Observation:
        """A new episode: the twin draws a new scene (from ``seed``); a real arm stays where the operator
        left it. Camera frames and drop counts start afresh."""
        self._need()
        if self.config.arm.type == "twin" and hasattr(self.arm, "reset"):
            self.arm.reset(seed)
            self.last_seed = seed
        obs = self.observe()
        for name, cam in self.cameras.items():
            # The episode's frames are those after this one: a recording standing in for a camera may
            # have waited, its ring full, while nobody read it (between episodes), so the frame in the
            # ring now can be seconds old.
            f = cam.latest()
            self._last_frame[name], self._start_index[name] = f.frame_number, f.index + 1
            cam.reset_dropped()
        self._started_at = time.time()
        return obs

    def observe(self, streams: Collection[str] | None = None) -> Observation:
        self._need()
        values, t_dev, t_host = self.arm.state()
        out: Observation = {CONTROL_STREAM: Sample(values, float(t_dev), float(t_host))}
        for name, cam in self.cameras.items():
            if streams is not None and name not in streams:
                continue  # two RGB-D copies cost a 125 Hz loop ~1 ms a tick; a low-dim policy reads neither
            f = cam.latest()
            out[name] = Sample(f.values, float(f.t_device), float(f.t_host))
        return out

    def new_samples(self) -> dict[str, list[Sample]]:
        """Every camera frame since the last call (or the last reset), copied out of the ring."""
        out: dict[str, list[Sample]] = {}
        for name, cam in self.cameras.items():
            frames = cam.frames_since(self._last_frame.get(name, -1))
            if frames:
                self._last_frame[name] = frames[-1].frame_number
            out[name] = [Sample(f.values, float(f.t_device), float(f.t_host)) for f in frames]  # copies
        return out

    def rings(self) -> dict[str, tuple[str, int]]:
        """Per camera: its shared-memory ring and the ring index this episode's frames start at (the
        first after ``reset``), for a process that stores frames straight from the rings."""
        return {name: (cam._ring.name, self._start_index.get(name, 0))  # noqa: SLF001 - the ring is shared by design
                for name, cam in self.cameras.items()}

    def ring_counts(self) -> dict[str, int]:
        """Per camera: frames its ring has received so far (the next ring index)."""
        return {name: int(cam._ring.count) for name, cam in self.cameras.items()}  # noqa: SLF001

    def send_action(self, action: np.ndarray) -> StepResult:
        self._need()
        self.arm.send_action(np.asarray(action, np.float32))
        success = self.arm.success() if hasattr(self.arm, "success") else None
        return StepResult(success=None if success is None else bool(success))

    def stop(self) -> None:
        """Hold the arm where it is (between episodes, on an error)."""
        if self.arm is not None:
            self.arm.stop()

    def dropped_frames(self) -> dict[str, int]:
        """Frames each camera dropped since the episode began."""
        return {n: int(c.dropped_frames) for n, c in self.cameras.items()}

    def episode_notes(self) -> dict[str, Any]:
        cams = {c.name: {"type": c.type, "serial": self.cameras[c.name].serial if c.name in self.cameras else c.serial,
                         "path": str(c.path) if c.path else None} for c in self.config.cameras}
        return {"dropped_frames": self.dropped_frames(), "started_at": self._started_at, "rig_name": self.name,
                "cameras": cams, "arm": self.config.arm.type,
                "latency": {"camera_s": self.config.latency.camera_s, "action_s": self.config.latency.action_s}}

    def __repr__(self) -> str:
        return f"HardwareRig({self._spec})"


__all__ = ["DEVICES", "HardwareRig", "LatencyConfig", "RigConfig", "RigError", "RigTeleopConfig", "load_rig_config"]
