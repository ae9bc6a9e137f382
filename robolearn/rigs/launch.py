"""Bringing up a whole rig: every camera process and the arm's controller from a rig file, or a
launch file (``launch/*.yaml``) naming the rig, its overrides and, optionally, a recording session.

``robolearn hardware up --rig hardware/sim_twin.yaml`` starts the stack and prints, once a second,
each stream's rate and drops and the arm's position, until Ctrl-C (or ``--seconds``): the check that
a rig works before recording on it. With a launch file that has a ``record`` section, the stack is
brought up by ``robolearn record`` with those settings instead.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from robolearn.config import load_yaml_config
from robolearn.errors import ConfigError


@dataclass
class LaunchRecord:
    """A recording session (the flags of ``robolearn record``)."""

    out: str = field(metadata={"nonempty": True})
    task: str | None = None
    teleop: str | None = None
    episodes: int = field(default=10, metadata={"min": 1})
    keep_failures: bool = False
    codec: str = field(default="qoi", metadata={"choices": ("qoi", "jpeg")})
    seed: int = 0


@dataclass
class LaunchConfig:
    """``launch/<name>.yaml``."""

    rig: str = field(metadata={"nonempty": True})
    set: list[str] = field(default_factory=list)  # key=value changes to the rig file
    record: LaunchRecord | None = None
    source: Path | None = field(default=None, metadata={"internal": True})

    def validate(self) -> None:
        for i, item in enumerate(self.set):
            if "=" not in item:
                raise ConfigError(f"expected key=value, got {item!r}", key=f"set[{i}]")


def load_launch(path: str | Path) -> LaunchConfig:
    cfg = load_yaml_config(LaunchConfig, path, "launch file")
    cfg.source = Path(path)
    return cfg


def hardware_up(rig: str, overrides: list[str] | tuple[str, ...] = (), seconds: float | None = None,
                out: TextIO | None = None) -> dict[str, Any]:
    """Start every device of rig file ``rig``, report once a second, stop everything after ``seconds``
    (or Ctrl-C); returns per stream the frames received and dropped, and the arm's state reads."""
    from robolearn.rigs import make_rig

    out = out or sys.stderr
    rig = make_rig(rig, overrides=tuple(overrides))
    t0 = time.monotonic()
    report: dict[str, Any] = {"rig": rig.name, "streams": {}}
    with rig:
        rig.reset(None)
        first = rig.ring_counts()
        out.write(f"{rig.name}: up in {time.monotonic() - t0:.1f}s: arm {rig.config.arm.type} "
                  f"(pid {getattr(rig.arm, 'pid', '?')}), cameras "
                  + ", ".join(f"{n} (pid {c.pid}, {c.clock})" for n, c in rig.cameras.items()) + "\n")
        t_start = last_t = time.monotonic()
        last = dict(first)
        reads = 0
        try:
            while seconds is None or time.monotonic() - t_start < seconds:
                time.sleep(max(0.0, min(1.0, (seconds or 1e9) - (time.monotonic() - t_start))))
                obs = rig.observe()  # raises for a stalled camera or a faulted arm
                reads += 1
                now, counts = time.monotonic(), rig.ring_counts()
                rates = " | ".join(f"{n} {(counts[n] - last[n]) / (now - last_t):5.1f} fps "
                                   f"{rig.dropped_frames()[n]} dropped" for n in counts)
                pos = obs["control"].values.get("robot0_eef_pos")
                out.write(f"{now - t_start:6.1f}s | {rates} | arm "
                          + (" ".join(f"{v:+.3f}" for v in pos) if pos is not None else "ok") + "\n")
                last, last_t = counts, now
        except KeyboardInterrupt:
            pass
        counts = rig.ring_counts()
        report["seconds"] = time.monotonic() - t_start
        report["arm_reads"] = reads
        for n in counts:
            report["streams"][n] = {"frames": counts[n] - first[n], "dropped": rig.dropped_frames()[n]}
    return report
