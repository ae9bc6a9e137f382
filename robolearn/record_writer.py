"""The store writer of a real-time recording: a process of its own that pulls every camera frame
straight out of the cameras' shared-memory rings and writes it into the open episode.

Encoding (QOI, zstd) and disk writes cost about 7.5 ms of CPU per 640x480 RGB-D frame; done in the
control process they would take the GIL from the control loop for half of every second. Here the
control loop only reads the latest frames (for the operator or a policy); this process stores each
frame as it arrives, with its own timestamps, and the control rows when the episode ends: a thread
copies each frame out of its ring within ~2 ms, the main thread encodes and writes them a shard at a
time. Frames a camera overwrote before they could be copied out are counted as dropped.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
from collections import deque
from typing import Any

from robolearn.errors import UserError
from robolearn.rigs.base import RigError

MAX_STREAMS = 16
PULL_S = 0.002  # how often the puller looks for new frames: the hand-off latency to this process
MAX_BUFFERED_BYTES = 512 << 20  # frames copied out but not yet stored; beyond, frames wait in the rings


class _Puller(threading.Thread):
    """Takes every new frame out of the cameras' rings as soon as it is there (a copy), for the main
    thread to store. Encoding a batch of 640x480 RGB-D frames takes the main thread ~0.1 s at a time;
    pulling meanwhile keeps the hand-off short and the rings empty, so a writer that falls behind for a
    while buffers frames here instead of losing them to a live camera's ring. Everything shared with
    the main thread is guarded by ``lock``."""

    def __init__(self) -> None:
        super().__init__(name="robolearn-ring-puller", daemon=True)
        self.lock = threading.Lock()
        self.rings: dict[str, Any] = {}
        self.cursor: dict[str, int] = {}
        self.missed: dict[str, int] = {}
        self.limit: dict[str, int] = {}  # ring index where the episode's frames end (once it has ended)
        self.t_end = float("inf")  # and the host time it ended at
        self.queue: deque[tuple[str, Any]] = deque()
        self.buffered = 0  # bytes in the queue
        self.handoff: list[float] = []  # per frame: taken out of the ring minus received by the camera (s)
        self.active = False
        self.error: BaseException | None = None
        self._done = threading.Event()

    def run(self) -> None:
        try:
            while not self._done.wait(PULL_S):
                with self.lock:
                    if self.active:
                        self.pull()
        except BaseException as e:  # noqa: BLE001 - the main thread reports it
            self.error = e

    def pull(self) -> int:
        """Copy out what the rings hold past the cursors (call with ``lock`` held)."""
        n = 0
        for stream, ring in self.rings.items():
            lim = self.limit.get(stream, 1 << 62)
            if self.cursor[stream] >= lim or self.buffered > MAX_BUFFERED_BYTES:
                continue
            entries, m = ring.since(self.cursor[stream], copy=True)
            now = time.monotonic()  # camera t_host is on this clock (the rig's clock_origin)
            self.missed[stream] += m
            if not entries:
                continue
            self.cursor[stream] = entries[-1].index + 1
            for e in entries:
                if e.index < lim and e.t_host <= self.t_end:
                    self.handoff.append(now - e.t_host)
                    self.queue.append((stream, e))
                    self.buffered += sum(v.nbytes for v in e.values.values())
                    n += 1
        return n

    def take(self) -> list[tuple[str, Any]]:
        """The frames pulled so far (oldest first), without those past the episode's end."""
        with self.lock:
            out = [(s, e) for s, e in self.queue
                   if e.index < self.limit.get(s, 1 << 62) and e.t_host <= self.t_end]
            self.queue.clear()
            self.buffered = 0
        return out

    def close(self) -> None:
        self._done.set()
        self.join(5.0)


def _writer_main(path: str, codec: str, conn: Any, written: Any) -> None:
    from robolearn.hardware.arms.controller import die_with_parent
    from robolearn.hardware.shm import ShmRing, retain_heap

    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the recorder's; it tells this process what to do
    retain_heap()
    # Keep up with the cameras on a busy machine: it needs ~half a core, more than any other process of
    # a recording, and the real-time ones (servo loop, control loop, twin world) come first. Above the
    # cameras (-5), which only copy frames. Needs root or CAP_SYS_NICE.
    try:
        os.setpriority(os.PRIO_PROCESS, 0, -10)
    except OSError:
        pass
    from robolearn.data.store import DemoStore
    from robolearn.record import _declare

    try:
        store = DemoStore.open(path, mode="a")
    except Exception as e:  # noqa: BLE001 - reported to the recorder
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready", store.n_episodes))
    puller = _Puller()
    puller.start()
    slot: dict[str, int] = {}
    ep = None

    def store_pulled() -> int:
        if puller.error is not None:
            raise RuntimeError(f"reading the cameras' rings failed: {puller.error}")
        frames = puller.take()
        for stream, e in frames:
            ep.add(stream, e.t_device, e.t_host, **e.values)
            written[slot[stream]] += 1
        return len(frames)

    try:
        while True:
            if ep is not None:
                store_pulled()
                if not conn.poll(0.003):
                    continue
            msg = conn.recv()
            kind = msg[0]
            try:
                if kind == "declare":
                    _declare(store, msg[1], msg[2], codec)
                    conn.send(("ok", None))
                elif kind == "begin":  # {stream: (ring name, first index)}
                    with puller.lock:
                        for i, (stream, (name, start)) in enumerate(msg[1].items()):
                            if stream not in puller.rings or puller.rings[stream].name != name:
                                # spawned by the rings' creator: its resource tracker
                                puller.rings[stream] = ShmRing.attach(name)
                            slot[stream], puller.cursor[stream], puller.missed[stream] = i, int(start), 0
                            written[i] = 0
                        puller.limit.clear()
                        puller.t_end = float("inf")
                        puller.handoff.clear()
                        puller.queue.clear()
                        puller.buffered = 0
                        ep = store.begin_episode()
                        puller.active = True
                elif kind == "stop":  # the episode ended: its frames are those before these ring counts
                    with puller.lock:
                        puller.limit.update(msg[1])
                        puller.t_end = msg[2]
                elif kind == "end":  # (end counts, keep, control rows, columns, info)
                    _, end, keep, control, columns, info = msg
                    deadline = time.monotonic() + 2.0
                    while time.monotonic() < deadline:
                        with puller.lock:
                            puller.pull()
                            behind = any(puller.cursor[s] < n for s, n in end.items())
                        if not store_pulled() and not behind:
                            break
                        if behind:
                            time.sleep(0.002)
                    with puller.lock:
                        puller.active = False
                        missed, handoff = dict(puller.missed), list(puller.handoff)
                    store_pulled()  # frames pulled before active went off
                    counts = {s: int(written[slot[s]]) for s in puller.rings}
                    if not keep:
                        ep.discard()
                        ep = None
                        conn.send(("ok", (None, counts, missed, handoff)))
                        continue
                    info.dropped_frames = {s: int(info.dropped_frames.get(s, 0)) + missed.get(s, 0)
                                           for s in set(info.dropped_frames) | set(missed)}
                    ep.extend("control", control["t_device"], control["t_host"],
                              **{k: control[k] for k in store.streams["control"]})
                    for name, (values, provenance) in columns.items():
                        ep.set_column(name, values, provenance=provenance)
                    idx = ep.commit(info)
                    ep = None
                    conn.send(("ok", (idx, counts, missed, handoff)))
                elif kind == "close":
                    break
            except Exception as e:  # noqa: BLE001 - reported to the recorder, which stops
                with puller.lock:
                    puller.active = False
                if ep is not None:
                    ep.discard()
                    ep = None
                conn.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        puller.close()
        if ep is not None:
            ep.discard()
        for ring in puller.rings.values():
            ring.close()
        store.close()


class LiveWriter:
    """The recorder's handle on the writer process (see the module docstring)."""

    def __init__(self, path: str, codec: str) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._written = ctx.Array("q", MAX_STREAMS, lock=False)
        self._streams: list[str] = []
        self._proc = ctx.Process(target=_writer_main, args=(str(path), codec, child, self._written),
                                 name="robolearn-store-writer", daemon=True)
        self._proc.start()
        child.close()
        self._reply(120.0)

    def _reply(self, timeout: float = 60.0) -> Any:
        if not self._conn.poll(timeout):
            raise RigError(f"the store writer process did not answer in {timeout:.0f} s")
        try:
            kind, value = self._conn.recv()
        except EOFError:
            raise RigError(f"the store writer process died (exit code {self._proc.exitcode})") from None
        if kind == "error":
            if value.startswith(("StoreError", "SchemaError", "UserError")):
                raise UserError(value.split(": ", 1)[1])
            raise RigError(f"store writer: {value}")
        return value

    def declare(self, features: dict, action: Any) -> None:
        self._conn.send(("declare", features, action))
        self._reply()

    def begin(self, rings: dict[str, tuple[str, int]]) -> None:
        if len(rings) > MAX_STREAMS:
            raise UserError(f"at most {MAX_STREAMS} cameras per rig, got {len(rings)}")
        self._streams = list(rings)
        self._conn.send(("begin", rings))

    def stop(self, counts: dict[str, int], t_end: float) -> None:
        """The episode ended at host time ``t_end``, when the rings held ``counts`` frames: store none after."""
        self._conn.send(("stop", counts, t_end))

    def written(self) -> dict[str, int]:
        """Frames stored so far in this episode, per stream."""
        return {s: int(self._written[i]) for i, s in enumerate(self._streams)}

    def end(self, counts: dict[str, int], keep: bool, control: dict | None = None, columns: dict | None = None,
            info: Any = None) -> tuple[int | None, dict[str, int], dict[str, int], list[float]]:
        """Store every frame up to ``counts`` (ring indices), then commit the episode with its control
        rows (``keep``) or drop it; returns (episode index or None, frames stored, frames missed, each
        frame's hand-off latency from its camera process to this writer in seconds)."""
        self._conn.send(("end", counts, keep, control, columns or {}, info))
        return self._reply()

    def close(self) -> None:
        if self._proc.is_alive():
            try:
                self._conn.send(("close",))
            except (BrokenPipeError, OSError):
                pass
            self._proc.join(30.0)
            if self._proc.is_alive():
                os.kill(self._proc.pid, signal.SIGTERM)
                self._proc.join(5.0)
        self._conn.close()
