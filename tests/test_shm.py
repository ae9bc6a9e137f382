"""The shared-memory ring across real processes: every sample arrives intact, torn reads are refused,
a blocking writer waits for the reader, the segment is gone after close."""

from __future__ import annotations

import multiprocessing as mp
import time
from multiprocessing import shared_memory

import numpy as np
import pytest

from robolearn.features import Feature
from robolearn.hardware.shm import ENDED, RUNNING, ShmRing, SlotSpec

SPECS = {"img": Feature((12, 16, 3), "uint8", "rgb"), "depth": Feature((12, 16), "uint16", "depth", depth_scale=1e-3),
         "pos": ((3,), "float32")}


def _pattern(k: int) -> dict[str, np.ndarray]:
    img = np.full((12, 16, 3), k % 256, np.uint8)
    img[0, 0] = (k // 256) % 256
    return {"img": img, "depth": np.full((12, 16), 1000 + k, np.uint16),
            "pos": np.array([k, -k, 0.5 * k], np.float32)}


def _writer(name: str, n: int, blocking: bool) -> None:
    ring = ShmRing.attach(name)
    ring.blocking = blocking
    ring.set_info({"who": "writer"})
    ring.state = RUNNING
    for k in range(n):
        while not ring.has_room():
            ring.beat()
            time.sleep(0.0005)
        ring.write(_pattern(k), frame_number=100 + k, t_device=k / 30, t_host=time.time())
    ring.state = ENDED
    ring.close()


def _check(e, k: int, frame_number: int | None = None) -> None:
    exp = _pattern(k)
    assert e.frame_number == (100 + k if frame_number is None else frame_number)
    for key, v in exp.items():
        np.testing.assert_array_equal(e.values[key], v)


def test_blocking_writer_in_another_process_delivers_every_sample_to_a_slow_reader():
    ring = ShmRing.create(SPECS, capacity=4)
    try:
        p = mp.get_context("spawn").Process(target=_writer, args=(ring.name, 60, True))
        p.start()
        got, nxt, deadline = [], 0, time.time() + 30
        while (ring.state != ENDED or nxt < ring.count) and time.time() < deadline:
            entries, missed = ring.since(nxt)
            assert missed == 0  # the writer never laps a reader that acknowledges
            for e in entries:
                got.append(e)
                nxt = e.index + 1
            ring.ack(nxt)
            time.sleep(0.003)  # slower than the writer: it must wait, not overwrite
        p.join(10)
        assert p.exitcode == 0
        assert [e.index for e in got] == list(range(60))
        for k, e in enumerate(got):
            _check(e, k)
        assert ring.info == {"who": "writer"}
    finally:
        ring.close()


def test_non_blocking_writer_laps_the_reader_and_the_reader_sees_the_loss():
    ring = ShmRing.create(SPECS, capacity=4)
    try:
        p = mp.get_context("spawn").Process(target=_writer, args=(ring.name, 20, False))
        p.start()
        p.join(30)
        assert ring.count == 20
        entries, missed = ring.since(0)
        assert missed == 16 and [e.index for e in entries] == [16, 17, 18, 19]
        _check(ring.latest(), 19)
        assert ring.latest().t_device == pytest.approx(19 / 30)
        assert ring.nearest(10 / 30 + 0.001, clock="device").index == 16  # 10 is gone: nearest kept one
        assert ring.nearest(19 / 30, clock="device").index == 19
    finally:
        ring.close()


def test_seqlock_refuses_a_slot_being_written_and_views_know_when_they_are_stale():
    with ShmRing.create(SPECS, capacity=3) as ring:
        for k in range(2):
            ring.write(_pattern(k), k, k, k)
        view = ring.read(1, copy=False)
        assert not view.values["img"].flags.writeable
        _check(ring.read(1), 1, frame_number=1)
        slot = ring.begin()  # sample 2 half-written: slot 2 is marked, nothing published yet
        slot["img"][:] = 7
        assert ring.read(2) is None and ring.latest().index == 1
        ring.commit(2, 2.0, 2.0)
        ring.write(_pattern(3), 3, 3.0, 3.0)  # wraps onto slot 0
        ring.write(_pattern(4), 4, 4.0, 4.0)  # wraps onto slot 1: the view of sample 1 is stale now
        assert not ring.still_valid(view) and ring.read(1) is None
        assert ring.read(2).values["img"][0, 0, 0] == 7


def test_close_unlinks_the_segment_and_attach_checks_it():
    ring = ShmRing.create({"x": SlotSpec((2,), "float64")}, capacity=2)
    name = ring.name
    other = ShmRing.attach(name)
    assert other.specs == {"x": SlotSpec((2,), "float64")} and other.capacity == 2
    other.close()
    ring.close()
    ring.close()  # idempotent
    with pytest.raises(FileNotFoundError):
        shared_memory.SharedMemory(name=name)
    raw = shared_memory.SharedMemory(create=True, size=8192)
    try:
        with pytest.raises(ValueError, match="not a robolearn ring"):
            ShmRing(raw, owner=False)
    finally:
        raw.close()
        raw.unlink()
