"""The data-collection loop behind `robolearn record`: any rig, any teleoperator, into the store.

A rig (``sim:<task>`` or a rig file) is driven by a teleoperator through the one rollout loop
(:func:`robolearn.rollout.run_episode`); every attempt worth keeping becomes one episode, written
through the store's episode writer. Nothing here knows what kind of rig it drives: the simulator's
fast path (roll out without cameras, render kept attempts from saved states) is the sim rig's
``deferred_streams`` capability, and parallel attempts its ``supports_parallel_attempts``.

Real-time rigs (rig files): one attempt at a time in this process; a human operator presses START
for each episode and drives the arm, unrecorded, in between; the loop is paced at the rig's rate;
a store-writer process (:mod:`robolearn.record_writer`) takes every camera frame straight from the
cameras' shared memory as it arrives, and the control rows when the episode ends; a device error
ends the run (``RecordSummary.error``) keeping every committed episode.

Determinism (simulation): attempt k uses reset seed ``seed + k``, and a run appending to an existing
store continues after the highest seed it already holds, so a run that was killed and restarted
produces the same episodes as one that never stopped, for any number of worker processes.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from robolearn.data.schema import CONTROL_STREAM, EpisodeInfo, Feature, SchemaError
from robolearn.data.store import DemoStore
from robolearn.errors import UserError
from robolearn.rigs import Rig, RigError, make_rig, rig_class
from robolearn.rollout import Episode, run_episode
from robolearn.teleop import Event, Teleoperator, make_teleop

CODECS = ("qoi", "jpeg")
HUMAN_DEVICES = ("spacemouse", "keyboard", "gamepad", "leader")  # one operator: one attempt at a time


@dataclass
class RecordConfig:
    rig: str
    out: str
    episodes: int = 10
    # Who drives: None picks the sim expert for sim:<task>, the rig file's teleop.device for a real rig.
    teleop: str | None = None
    cameras: Sequence[str] = ()
    image_size: int = 84
    depth: bool = False
    seed: int = 0
    keep_failures: bool = False
    codec: str = "qoi"
    # Control ticks kept after the task first succeeds, so policies also learn what "done" looks like.
    hold_steps: int = 5
    max_attempts: int | None = None
    # Processes running attempts (rigs that allow it); 0 picks one per core (at most 4). The writer
    # is always this process.
    workers: int = 0
    task: str | None = None  # task text for rigs that do not know their task (real robots)
    # A perturbed expert (robolearn.sim.perturb: noise, early_release, stall) to record failures on
    # demand; its attempts are kept whatever their outcome and count towards ``episodes``.
    perturb: str | None = None
    # A live status line on stderr for real-time rigs (episode, rate and drops per stream).
    status: bool = True
    rig_overrides: Sequence[str] = ()  # key=value changes to a rig file (e.g. teleop.path=/dev/hidraw3)
    # A live Rerun view of the loop (robolearn.viz.live): spawn, save:FILE.rrd, serve[:PORT]; None: no view.
    # With a view, attempts run in this process and a simulator renders its cameras online (to show them).
    view: str | None = None

    def __post_init__(self) -> None:
        if self.rig_overrides and self.is_sim:
            raise UserError("--set changes rig files; sim:<task> rigs take --cameras, --image-size, --depth")
        if self.teleop is None:
            self.teleop = "expert" if self.is_sim else _rig_file_device(self.rig, self.rig_overrides)
        if self.episodes < 1:
            raise UserError(f"--episodes must be at least 1, got {self.episodes}")
        if not 8 <= self.image_size <= 1024:
            raise UserError(f"--image-size must be between 8 and 1024, got {self.image_size}")
        if self.codec not in CODECS:
            raise UserError(f"--codec must be one of {', '.join(CODECS)}, got {self.codec!r}")
        if self.hold_steps < 0:
            raise UserError(f"hold_steps must be >= 0, got {self.hold_steps}")
        cams = [c.strip() for c in self.cameras if c.strip()]
        if len(set(cams)) != len(cams):
            raise UserError(f"--cameras lists a camera twice: {','.join(cams)}")
        self.cameras = cams
        if self.perturb is not None:
            make_teleop(self.teleop, perturb=self.perturb)  # an unknown kind fails before any work

    @property
    def is_sim(self) -> bool:
        return self.rig.startswith("sim:")

    def rig_options(self) -> dict[str, Any]:
        """Settings of a simulated rig: cameras are rendered after the attempt (fast path)."""
        if not self.is_sim:
            return {"overrides": tuple(self.rig_overrides)} if self.rig_overrides else {}
        return {"cameras": tuple(self.cameras), "image_size": self.image_size, "depth": self.depth,
                "defer_cameras": self.view is None, "seed": self.seed}


@dataclass
class RecordSummary:
    out: str
    committed: int = 0
    successes: int = 0
    failures_kept: int = 0
    attempts: int = 0
    steps: int = 0
    seconds: float = 0.0
    rollout_seconds: float = 0.0
    render_seconds: float = 0.0
    write_seconds: float = 0.0
    interrupted: bool = False
    error: str | None = None  # a device failed (a camera stalled, the arm faulted): the run stopped
    episode_indices: list[int] = field(default_factory=list)
    # Real-time rigs: control-loop tick periods (seconds) of the recorded episodes, frames per stream.
    tick_periods: list[float] = field(default_factory=list)
    frames: dict[str, int] = field(default_factory=dict)
    dropped_frames: dict[str, int] = field(default_factory=dict)
    handoff_s: list[float] = field(default_factory=list)  # camera process -> store writer, per frame

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds else 0.0


def _rig_file_device(spec: str, overrides: Sequence[str] = ()) -> str:
    """The teleop device a rig file names (read without loading its hardware modules)."""
    from robolearn.config import apply_overrides, read_yaml_mapping
    from robolearn.resources import resolve

    raw = apply_overrides(read_yaml_mapping(resolve("rig", spec), "rig file", "a rig"), overrides)
    teleop = raw.get("teleop") or {}
    return str(teleop.get("device", "keyboard")) if isinstance(teleop, dict) else "keyboard"


def _raise_interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def check_store_matches(store: DemoStore, cfg: RecordConfig) -> None:
    """Fail before any work when a sim store was recorded with other cameras or image sizes (real
    rigs declare their streams from the rig file; the first episode's declaration checks them)."""
    if not cfg.is_sim:
        return
    have = set(store.streams) - {CONTROL_STREAM}
    if store.n_episodes and have != set(cfg.cameras):
        raise SchemaError(
            f"{store.path} holds cameras [{','.join(sorted(have)) or 'none'}], this run records "
            f"[{','.join(cfg.cameras) or 'none'}]; use the same --cameras or another --out"
        )
    for cam in cfg.cameras:
        spec = store.streams.get(cam, {}).get(f"{cam}_image")
        if spec is not None and spec.shape[:2] != (cfg.image_size, cfg.image_size):
            raise SchemaError(
                f"{store.path} holds {cam} images of {spec.shape[1]}x{spec.shape[0]}, this run records "
                f"{cfg.image_size}x{cfg.image_size}; use --image-size {spec.shape[0]} or another --out"
            )
    for cam in cfg.cameras:
        keys = store.streams.get(cam)
        if keys is not None and (f"{cam}_depth" in keys) != cfg.depth:
            had = "with" if f"{cam}_depth" in keys else "without"
            raise SchemaError(f"{store.path} was recorded {had} depth; match it with --depth or use another --out")


def check_control_matches(store: DemoStore, rig_spec: str) -> None:
    """Fail when the store's control keys have other shapes than the rig gives (a store recorded by
    an older robolearn with another observation layout). Builds the rig: for tools that decide whether
    to reuse a store; `record` itself checks the first episode it writes instead."""
    if CONTROL_STREAM not in store.streams or not store.n_episodes:
        return
    rig = make_rig(rig_spec)
    try:
        _check_control_shapes(store, {k: f.shape for k, f in rig.features[CONTROL_STREAM].items()}, rig_spec)
    finally:
        rig.close()


def _check_control_shapes(store: DemoStore, shapes: dict[str, tuple[int, ...]], rig: str) -> None:
    have = store.streams[CONTROL_STREAM]
    for key, shape in shapes.items():
        if key in have and tuple(have[key].shape) != tuple(shape):
            raise SchemaError(
                f"{store.path} holds {key!r} of shape {list(have[key].shape)}, rig {rig!r} now gives "
                f"{list(shape)}: the store was recorded with another observation layout; "
                f"record into another --out"
            )


def _next_seed(store: DemoStore, seed: int) -> int:
    seeds = [e.seed for e in store.episodes() if e.seed is not None]
    return max(seed, max(seeds) + 1) if seeds else seed


# ----------------------------------------------------------------------------- attempts


@dataclass
class Attempt:
    """One finished attempt, as it crosses from a worker process to the writer."""

    episode: Episode
    deferred: dict[str, dict[str, np.ndarray]]  # streams the rig produced after the episode
    features: dict[str, dict[str, Feature]]  # every stream's features, deferred ones included
    action: Feature
    notes: dict[str, Any]  # the rig's per-episode facts (dropped frames, ...)
    clocks: dict[str, str]
    task_text: str
    fps: float
    keep: bool
    success: bool
    rollout_s: float
    render_s: float
    # Real-time rigs: the writer process stores camera frames as they arrive; these are the cameras'
    # ring counts at the episode's end (what it must have stored before the episode commits).
    live_end: dict[str, int] | None = None


class _Operator:
    """Turns a teleoperator's events into episode decisions (keep/discard, success marks, quit)."""

    def __init__(self, teleop: Teleoperator) -> None:
        self.teleop = teleop
        self.mark: bool | None = None  # success marked by the operator
        self.discard = False
        self.quit = False
        self._pending: deque[Event] = deque()  # events after the one that ended an episode: the next's

    def reset(self) -> None:
        self.mark, self.discard = None, False

    def push_back(self, events: list[Event]) -> None:
        self._pending.extend(events)

    def events(self) -> list[Event]:
        out = [*self._pending, *self.teleop.events()]
        self._pending.clear()
        return out

    def stop(self, step: int, result: object) -> bool:
        del step, result
        events = self.events()
        for i, ev in enumerate(events):
            if ev in (Event.SUCCESS, Event.FAILURE):
                self.mark = ev is Event.SUCCESS
            elif ev in (Event.DISCARD, Event.RESET):  # a reset mid-episode drops it
                self.discard = True
            elif ev is Event.QUIT:
                self.quit = self.discard = True
            if ev in (Event.KEEP, Event.SUCCESS, Event.FAILURE, Event.DISCARD, Event.RESET, Event.QUIT):
                self._pending.extend(events[i + 1:])
                return True
        return False


class _Status:
    """The live status line of a real-time recording (stderr): episode, time, rate and drops per stream."""

    KEYS = "enter start | k keep | y success | n failure | x discard | r reset | esc quit"

    def __init__(self, enabled: bool, every_s: float = 0.5) -> None:
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.every_s = every_s if self.tty else 5.0  # a log file gets a line every few seconds
        self._last = 0.0
        self._mark: tuple[float, dict[str, int]] = (time.monotonic(), {})
        self.t0 = time.monotonic()

    def line(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < self.every_s):
            return
        self._last = now
        print(f"\r\x1b[K{text}" if self.tty else text, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def start(self) -> None:
        self.t0 = time.monotonic()
        self._mark = (self.t0, {})

    def due(self) -> bool:
        return self.enabled and time.monotonic() - self._last >= self.every_s

    def episode(self, n: int, t0: float, counts: dict[str, int], drops: dict[str, int], pending: int) -> None:
        now = time.monotonic()
        if not self.enabled or now - self._last < self.every_s:
            return
        t_mark, before = self._mark
        dt = max(now - t_mark, 1e-6)
        rates = " | ".join(f"{s} {(c - before.get(s, 0)) / dt:5.1f}/s" + (f" {drops[s]} dropped" if s in drops else "")
                           for s, c in counts.items())
        self._mark = (now, dict(counts))
        self.line(f"episode {n} recording {now - t0:5.1f}s | {rates} | frames not yet stored {pending}", force=True)

    def done(self) -> None:
        if self.tty:
            print(file=sys.stderr, flush=True)


def _realtime_thread(priority: int) -> bool:
    """Run the calling thread (the control loop) under SCHED_FIFO; processes started later get normal
    scheduling (reset-on-fork). False where not permitted or asked for."""
    if not priority or not hasattr(os, "SCHED_FIFO"):
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(priority))
    except OSError:
        print("robolearn record: no permission for real-time scheduling (SCHED_FIFO); the control loop runs "
              "with normal priority", file=sys.stderr, flush=True)
        return False
    return True


def cpu_latency_qos() -> int | None:
    """Keep every CPU out of idle states that take long to leave while a control loop runs: a PM QoS
    request of 0 us on /dev/cpu_dma_latency, as cyclictest makes. Idle CPUs then poll instead of halting;
    on a VM a halted vCPU wakes only when the host schedules it again, which made a bare 125 Hz loop here
    miss its tick by 3-10 ms now and then. Returns the descriptor to close (which withdraws the request),
    None where the file is missing or not writable (not root)."""
    import struct

    try:
        fd = os.open("/dev/cpu_dma_latency", os.O_WRONLY)
    except OSError:
        return None
    try:
        os.write(fd, struct.pack("i", 0))
    except OSError:
        os.close(fd)
        return None
    return fd


def release_qos(fd: int | None) -> None:
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass


class _Collector:
    """A rig and its teleoperator, running attempts (in this process or a worker)."""

    def __init__(self, cfg: RecordConfig, live: Any = None) -> None:
        self.cfg = cfg
        self.live = live  # the store writer process of a real-time recording
        self._declared = False
        self.rig: Rig = make_rig(cfg.rig, **cfg.rig_options())
        try:
            self.rig.connect()
            settings = getattr(getattr(self.rig, "config", None), "teleop", None)
            self.teleop = make_teleop(cfg.teleop, settings, perturb=cfg.perturb)
            self.teleop.connect(self.rig)
        except BaseException:
            self.rig.close()
            raise
        self.operator = _Operator(self.teleop)
        self.view = None
        if cfg.view is not None:
            from robolearn.viz.live import make_view

            try:
                # A real rig's camera frames are in shared memory already: the view reads them there.
                rings = {s: name for s, (name, _) in self.rig.rings().items()} if hasattr(self.rig, "rings") else None
                self.view = make_view(cfg.view, features=self.rig.features, action_names=self.rig.action_feature.names,
                                      camera_rings=rings)
            except BaseException:
                try:
                    self.teleop.disconnect()
                finally:
                    self.rig.close()
                raise
        self.status = _Status(cfg.status and self.rig.realtime)
        self.n = 0  # attempts begun
        # After every device process and reader thread has started: they keep normal scheduling.
        self._rt = self.rig.realtime and _realtime_thread(getattr(getattr(self.rig, "config", None),
                                                                  "realtime_priority", 0))
        self._qos = cpu_latency_qos() if self._rt and getattr(getattr(self.rig, "config", None),
                                                               "cpu_idle_poll", False) else None
        if self.rig.realtime:
            # Everything imported so far (MuJoCo, robosuite, torch...) out of the collector's sight: a
            # full collection over those objects would stall a control tick for tens of milliseconds.
            import gc

            from robolearn.hardware.shm import retain_heap

            gc.collect()
            gc.freeze()
            retain_heap()  # each tick copies the latest frames: no fresh pages to fault in for them

    def _wait_for_start(self) -> bool:
        """Between episodes: the operator drives the rig (not recorded) until START (True) or QUIT."""
        rig, period = self.rig, 1.0 / self.rig.control_hz
        obs = rig.observe()
        t_next = time.monotonic()
        while True:
            events = self.operator.events()
            for i, ev in enumerate(events):
                if ev is Event.START:
                    self.operator.push_back(events[i + 1:])
                    return True
                if ev is Event.QUIT:
                    return False
                if ev is Event.RESET:
                    obs = rig.reset(None)
            self.status.line(f"episode {self.n + 1}: waiting for START | {_Status.KEYS}")
            action, _ = self.teleop.act(obs)
            rig.send_action(np.asarray(action, np.float32))
            t_next += period
            time.sleep(max(0.0, t_next - time.monotonic()))
            obs = rig.observe()

    def attempt(self, seed: int | None) -> Attempt | None:
        """One attempt; None when the operator quit instead of starting one."""
        if not self.teleop.autostart and not self._wait_for_start():
            self.operator.quit = True
            return None
        self.n += 1
        t0 = time.perf_counter()
        self.operator.reset()
        rig = self.rig
        live = self.live
        on_reset = on_step = None
        if live is not None:
            if not self._declared:
                live.declare(rig.features, rig.action_feature)
                self._declared = True
            drops = getattr(rig, "dropped_frames", dict)
            starts: dict[str, int] = {}

            def on_reset(obs: object) -> None:
                del obs
                rings = rig.rings()
                starts.update({s: start for s, (_, start) in rings.items()})
                live.begin(rings)
                self.status.start()

            def on_step(step: int, obs: object, action: object, result: object) -> None:
                del obs, action, result
                if not self.status.due():
                    return
                written = live.written()
                behind = sum(n - starts[s] - written.get(s, 0) for s, n in rig.ring_counts().items())
                self.status.episode(self.n, self.status.t0, {"control": step + 1, **written}, drops(), behind)
        if self.view is not None:
            on_step = self._viewed(on_step)
        begun = False
        try:
            # A human drives in real time, also in simulation: the loop is paced at the rig's rate then.
            ep = run_episode(rig, self.teleop, seed, hold_steps=self.cfg.hold_steps, stop=self.operator.stop,
                             on_step=on_step, on_reset=on_reset, collect=live is None,
                             realtime=rig.realtime or not self.teleop.autostart)
            begun = True
        finally:
            if live is not None:
                end = rig.ring_counts()
                if starts:
                    live.stop(end, time.monotonic())  # at once: frames arriving after this belong to no episode
                if hasattr(rig, "stop"):
                    rig.stop()  # hold the arm while the operator decides and resets
                self.status.done()
                if not begun and starts:  # an error mid-episode: drop it (everything committed stays)
                    try:
                        live.end(end, keep=False)
                    except Exception:  # noqa: BLE001 - the first error is the one to report
                        pass
        t1 = time.perf_counter()
        success = bool(ep.success) if self.operator.mark is None else self.operator.mark
        keep = not self.operator.discard and (success or self.cfg.keep_failures or bool(self.cfg.perturb))
        deferred = self.rig.fill_deferred(ep.control) if keep else {}
        features = {**self.rig.features, **self.rig.deferred_streams}
        end = end if live is not None else None
        notes = {**rig.episode_notes(), **self.teleop.episode_notes()}
        return Attempt(ep, deferred, features, rig.action_feature, notes, rig.clocks, rig.task_text,
                       rig.control_hz, keep, success, t1 - t0, time.perf_counter() - t1, end)

    def _viewed(self, on_step: Callable | None) -> Callable:
        """``on_step`` that also hands the tick to the live view (which only queues it)."""
        view, rig = self.view, self.rig
        drops = getattr(rig, "dropped_frames", None)
        episode = self.n

        def step(i: int, obs: Any, action: Any, result: Any) -> None:
            scalars: dict[str, float] = {"episode": float(episode)}
            if result.success is not None:
                scalars["success"] = float(result.success)
            if drops is not None and i % 10 == 0:  # counters read across processes: not every tick
                scalars |= {f"dropped_frames/{s}": float(n) for s, n in drops().items()}
            # The host's monotonic clock: a real rig's camera frames carry host times on it too.
            view.log_tick(time.monotonic(), obs, action=action, scalars=scalars)
            if on_step is not None:
                on_step(i, obs, action, result)

        return step

    def close(self) -> None:
        if self._rt:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
            release_qos(getattr(self, "_qos", None))
        try:
            if getattr(self, "view", None) is not None:
                view, self.view = self.view, None
                view.close()
                if self.cfg.status:
                    print(f"live view ({view.where}): {view.logged_ticks} of {view.ticks} ticks logged, "
                          f"{view.dropped_views} views dropped", file=sys.stderr, flush=True)
            self.teleop.disconnect()
        finally:
            self.rig.close()


_COLLECTOR: _Collector | None = None
_INIT_ERROR: BaseException | None = None


def _init_worker(cfg: RecordConfig, parent_pid: int) -> None:
    global _COLLECTOR, _INIT_ERROR
    # Ctrl-C is the parent's to handle; and a worker must not outlive a parent killed with SIGKILL.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    # A parent that died while this process was still starting up sends no death signal: leave now,
    # before spending seconds building environments for nobody.
    if os.getppid() != parent_pid:
        os._exit(0)
    try:
        _COLLECTOR = _Collector(cfg)
    except Exception as e:  # a failed initializer breaks the pool and loses the error: hand it over instead
        _INIT_ERROR = e


def _worker_attempt(seed: int) -> Attempt:
    if _INIT_ERROR is not None:
        raise _INIT_ERROR
    assert _COLLECTOR is not None
    return _COLLECTOR.attempt(seed)


def _attempts(cfg: RecordConfig, first_seed: int | None, workers: int,
              live: Any = None) -> Iterator[tuple[int | None, Attempt]]:
    """(seed, attempt) in seed order, computed by ``workers`` processes a few seeds ahead; the caller
    stops iterating when it has enough. Rigs without seeds (real robots) run in this process."""
    if workers <= 1:
        collector = _Collector(cfg, live)
        try:
            seed = first_seed
            while True:
                att = collector.attempt(seed)
                if att is None:
                    return
                yield seed, att
                if collector.operator.quit:
                    return
                seed = None if seed is None else seed + 1
        finally:
            collector.close()
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    assert first_seed is not None
    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                               initargs=(cfg, os.getpid()))
    pending: deque = deque()
    next_seed = first_seed
    try:
        while True:
            while len(pending) < 2 * workers:  # a bounded look-ahead keeps memory flat
                pending.append((next_seed, pool.submit(_worker_attempt, next_seed)))
                next_seed += 1
            seed, fut = pending.popleft()
            yield seed, fut.result()
    finally:
        for _, fut in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------- the recording


def record(cfg: RecordConfig, progress: Callable[[RecordSummary], None] | None = None) -> RecordSummary:
    """Record ``cfg.episodes`` successful episodes (plus kept failures) into ``cfg.out``.

    Attempts run in ``cfg.workers`` processes where the rig allows it; only this process writes, in
    seed order, so the store is the same whatever the number of workers."""
    if cfg.is_sim:
        from robolearn.sim.tasks import load_task

        load_task(cfg.rig.split(":", 1)[1])  # an unknown task fails now, before any process starts
    store = DemoStore.open(cfg.out, mode="a")
    try:
        check_store_matches(store, cfg)
    except Exception:
        store.close()
        raise
    summary = RecordSummary(out=str(cfg.out))
    max_attempts = cfg.max_attempts or 3 * cfg.episodes + 20
    workers = cfg.workers or min(os.cpu_count() or 1, 4)
    parallel = (rig_class(cfg.rig).supports_parallel_attempts and cfg.teleop not in HUMAN_DEVICES
                and cfg.view is None)  # the view shows the attempts this process runs
    workers = max(1, min(workers, max_attempts)) if parallel else 1
    t_start = time.perf_counter()

    # SIGTERM (e.g. from a supervisor) ends the run like Ctrl-C: the episode in flight is dropped,
    # everything committed stays.
    in_main = threading.current_thread() is threading.main_thread()
    old_term = signal.signal(signal.SIGTERM, _raise_interrupt) if in_main else None
    # Seeds pick the initial scene where a rig has one (simulators, the MuJoCo twin); real arms ignore them.
    first_seed = _next_seed(store, cfg.seed)
    live = None
    if rig_class(cfg.rig).realtime:  # a process of its own writes the store (see robolearn.record_writer)
        from robolearn.record_writer import LiveWriter

        store.close()
        try:
            live = LiveWriter(cfg.out, cfg.codec)
        except BaseException:
            if in_main:
                signal.signal(signal.SIGTERM, old_term)
            raise
    attempts = _attempts(cfg, first_seed, workers, live)
    try:
        for seed, att in attempts:
            summary.attempts += 1
            summary.rollout_seconds += att.rollout_s
            summary.render_seconds += att.render_s
            summary.steps += att.episode.steps
            if live is not None:
                summary.tick_periods += np.diff(att.episode.tick_times).tolist()
                idx, frames, missed, handoff = live.end(att.live_end, att.keep, att.episode.control if att.keep else None,
                                               _columns(att, cfg) if att.keep else None,
                                               _episode_info(att, seed, cfg) if att.keep else None)
                summary.handoff_s += handoff
                for stream, n in frames.items():
                    summary.frames[stream] = summary.frames.get(stream, 0) + n
                for stream, n in att.notes.get("dropped_frames", {}).items():
                    summary.dropped_frames[stream] = summary.dropped_frames.get(stream, 0) + int(n) + missed.get(stream, 0)
            if att.keep:
                t0 = time.perf_counter()
                summary.episode_indices.append(idx if live is not None else _write_episode(store, att, seed, cfg))
                summary.write_seconds += time.perf_counter() - t0
                summary.committed += 1
                if att.success:
                    summary.successes += 1
                else:
                    summary.failures_kept += 1
            if progress:
                progress(summary)
            # A simulator records until it has enough successes (or kept perturbed attempts); on a real
            # rig the operator decides what is kept, and --episodes counts the kept episodes.
            enough = summary.committed if (live is not None or cfg.perturb) else summary.successes
            if enough >= cfg.episodes or (summary.attempts >= max_attempts and live is None):
                break
    except KeyboardInterrupt:
        summary.interrupted = True
    except RigError as e:  # a device failed: the episode in flight is dropped, the committed ones stay
        summary.error = str(e)
    finally:
        attempts.close()
        if in_main:
            signal.signal(signal.SIGTERM, old_term)
        summary.seconds = time.perf_counter() - t_start
        if live is not None:
            live.close()
        else:
            store.close()
    return summary


def _declare(store: DemoStore, features: dict[str, dict[str, Feature]], action: Feature, codec: str) -> None:
    control = dict(features[CONTROL_STREAM])
    if CONTROL_STREAM in store.streams:
        # Checked on the episode itself: building a rig up front would slow every resumed run.
        _check_control_shapes(store, {k: f.shape for k, f in control.items()}, store.path.name)
    control["action"] = action
    store.declare_stream(CONTROL_STREAM, control)
    for stream, keys in features.items():
        if stream != CONTROL_STREAM:
            store.declare_stream(stream, {k: Feature(f.shape, f.dtype, f.kind, f.depth_scale,
                                                     codec if f.kind == "rgb" else f.codec)
                                          for k, f in keys.items()})


def _episode_info(att: Attempt, seed: int | None, cfg: RecordConfig) -> EpisodeInfo:
    notes = dict(att.notes)
    dropped = {k: int(v) for k, v in notes.pop("dropped_frames", {}).items()}
    return EpisodeInfo(
        task=cfg.task or att.task_text, success=att.success, source="expert" if cfg.teleop == "expert" else "teleop",
        rig=cfg.rig, fps=float(att.fps), seed=seed if cfg.is_sim else att.episode.seed, dropped_frames=dropped,
        started_at=notes.pop("started_at", None),
        notes={**notes, "teleop": cfg.teleop, "clocks": att.clocks, **({"image_size": cfg.image_size} if cfg.cameras else {})},
    )


def _columns(att: Attempt, cfg: RecordConfig) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
    """Per-step columns of an episode: who intervened, and the rig's own success check."""
    ep = att.episode
    out = {}
    if ep.intervention.any():
        out["intervention"] = (ep.intervention.astype(np.float32), {"source": cfg.teleop})
    if ep.step_success is not None:  # the rig's own success check after each tick
        out["reward"] = (ep.step_success.astype(np.float32), {"source": "sim" if cfg.is_sim else "rig", "rig": cfg.rig})
    return out


def _write_episode(store: DemoStore, att: Attempt, seed: int | None, cfg: RecordConfig) -> int:
    _declare(store, att.features, att.action, cfg.codec)
    ep = att.episode
    control = ep.control
    with store.begin_episode() as w:
        w.extend(CONTROL_STREAM, control["t_device"], control["t_host"],
                 **{k: control[k] for k in store.streams[CONTROL_STREAM]})
        for stream in store.streams:
            if stream == CONTROL_STREAM:
                continue
            if stream in att.deferred:  # rendered from the control ticks' states: the control clock
                w.extend(stream, control["t_device"], control["t_host"], **att.deferred[stream])
            elif stream in ep.streams:
                rows = ep.streams[stream]
                w.extend(stream, rows["t_device"], rows["t_host"], **{k: rows[k] for k in store.streams[stream]})
        for name, (values, provenance) in _columns(att, cfg).items():
            w.set_column(name, values, provenance=provenance)
        return w.commit(_episode_info(att, seed, cfg))
