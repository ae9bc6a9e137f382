"""A serial servo bus on a pseudo-terminal: Feetech (SCS/STS) and Dynamixel (protocol 2.0) motors
that answer the real protocols' instruction packets with status packets.

The vendor SDKs open the pseudo-terminal's device path like a USB serial adapter, so a driver runs
unchanged against it: for tests without hardware, and for a dry run of a bus arm's rig file. Faults
can be injected: a response latency, status packets with a broken checksum, and a disconnect (the
adapter unplugged: the port raises on the next read or write).

Each motor has a control table (bytes) with the model number, torque enable, goal and present
position at the addresses of the STS3215 and the XL430; with torque on, the present position moves
toward the goal at ``speed`` ticks per second.
"""

from __future__ import annotations

import os
import select
import threading
import time
import tty
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class MotorTable:
    """Where a motor model keeps what a driver needs (addresses and sizes in bytes)."""

    model_number: int
    model_addr: int
    torque_addr: int
    goal_addr: int
    present_addr: int
    position_bytes: int
    size: int
    big_endian: bool = False


STS3215 = MotorTable(
    model_number=777, model_addr=3, torque_addr=40, goal_addr=42, present_addr=56, position_bytes=2, size=128
)
XL430 = MotorTable(
    model_number=1060,
    model_addr=0,
    torque_addr=64,
    goal_addr=116,
    present_addr=132,
    position_bytes=4,
    size=256,
)


def dxl_crc(data: bytes) -> int:
    """CRC-16 of Dynamixel protocol 2.0 (polynomial 0x8005, initial 0, not reflected)."""
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def _stuff(body: bytes) -> bytes:
    """Protocol 2.0 byte stuffing: FF FF FD inside a packet is sent as FF FF FD FD."""
    out = bytearray()
    for b in body:
        out.append(b)
        if b == 0xFD and out[-3:-1] == b"\xff\xff" and len(out) >= 3:
            out.append(0xFD)
    return bytes(out)


def _unstuff(body: bytes) -> bytes:
    out = bytearray()
    i = 0
    while i < len(body):
        out.append(body[i])
        if body[i] == 0xFD and out[-3:-1] == b"\xff\xff" and i + 1 < len(body) and body[i + 1] == 0xFD:
            i += 1
        i += 1
    return bytes(out)


class ServoBusEmulator:
    """Motors ``ids`` on a pseudo-terminal; ``port`` is the device path to give the SDK."""

    def __init__(
        self,
        protocol: Literal["feetech", "dynamixel"],
        ids: Iterable[int] = range(1, 7),
        *,
        latency_s: float = 0.0,
        speed: float = 20000.0,
        start: int = 2048,
    ) -> None:
        if protocol not in ("feetech", "dynamixel"):
            raise ValueError(f"unknown servo protocol {protocol!r}")
        self.protocol = protocol
        self.table = STS3215 if protocol == "feetech" else XL430
        self.latency_s = latency_s
        self.speed = speed
        self.mem: dict[int, bytearray] = {}
        self._present: dict[int, float] = {}
        for i in ids:
            m = bytearray(self.table.size)
            self._put(m, self.table.model_addr, self.table.model_number, 2)
            self._put(m, self.table.goal_addr, start, self.table.position_bytes)
            self._present[i] = float(start)
            self.mem[i] = m
        self.packets = 0  # instruction packets parsed
        self.bad_packets = 0  # instruction packets with a wrong checksum (ignored, as motors do)
        self._corrupt = 0
        self._delays: list[float] = []  # extra seconds before the next answers
        self._last_motion = time.monotonic()
        self._lock = threading.Lock()
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.port = os.ttyname(self._slave)
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=f"{protocol}-bus-emulator", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- control table
    def _put(self, m: bytearray, addr: int, value: int, n: int) -> None:
        m[addr : addr + n] = int(value).to_bytes(
            n, "big" if self.table.big_endian else "little", signed=False
        )

    def _get(self, m: bytearray, addr: int, n: int) -> int:
        return int.from_bytes(m[addr : addr + n], "big" if self.table.big_endian else "little")

    def goal(self, motor_id: int) -> int:
        with self._lock:
            return self._get(self.mem[motor_id], self.table.goal_addr, self.table.position_bytes)

    def present(self, motor_id: int) -> int:
        with self._lock:
            self._move()
            return int(round(self._present[motor_id]))

    def torque(self, motor_id: int) -> bool:
        with self._lock:
            return bool(self.mem[motor_id][self.table.torque_addr])

    def _move(self) -> None:
        now = time.monotonic()
        dt, self._last_motion = now - self._last_motion, now
        t = self.table
        for i, m in self.mem.items():
            if m[t.torque_addr]:
                goal = self._get(m, t.goal_addr, t.position_bytes)
                p = self._present[i]
                step = max(-self.speed * dt, min(self.speed * dt, goal - p))
                self._present[i] = p + step
            self._put(m, t.present_addr, int(round(self._present[i])), t.position_bytes)

    # ---------------------------------------------------------------- faults
    def corrupt_next(self, n: int = 1) -> None:
        """Send the next ``n`` status packets with a wrong checksum."""
        self._corrupt += n

    def delay_next(self, n: int = 1, seconds: float = 0.2) -> None:
        """Answer the next ``n`` instructions ``seconds`` late (a USB adapter or a host that stalls): the
        host times out, and the late answers arrive while it is asking again."""
        self._delays += [seconds] * n

    def disconnect(self) -> None:
        """Unplug: the port's next read or write fails."""
        self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self._master)
            self._thread.join(2.0)
            os.close(self._slave)

    def __enter__(self) -> ServoBusEmulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- the wire
    def _send(self, packet: bytes) -> None:
        if self._corrupt > 0:
            self._corrupt -= 1
            packet = packet[:-1] + bytes([packet[-1] ^ 0x5A])
        os.write(self._master, packet)

    def _serve(self) -> None:
        # Real motors answer within microseconds whatever the host is doing; where allowed, give this
        # thread real-time priority so a busy machine does not make the emulated bus miss the SDK's
        # status timeouts (which a real bus would not).
        try:
            os.sched_setscheduler(threading.get_native_id(), os.SCHED_FIFO, os.sched_param(60))
        except (AttributeError, PermissionError, OSError):
            pass
        buf = bytearray()
        while not self._closed:
            try:
                ready, _, _ = select.select([self._master], [], [], 0.05)
                if not ready:
                    continue
                buf += os.read(self._master, 4096)
            except OSError:
                return
            try:
                while True:
                    used = self._parse_feetech(buf) if self.protocol == "feetech" else self._parse_dxl(buf)
                    if used == 0:
                        break
                    del buf[:used]
            except OSError:
                return

    # Feetech: FF FF id len instr params... checksum; len = params + 2,
    # checksum = ~(id + len + instr + params).
    def _parse_feetech(self, buf: bytearray) -> int:
        start = buf.find(b"\xff\xff")
        if start < 0:
            return max(len(buf) - 1, 0)
        if start > 0:
            return start
        if len(buf) < 4:
            return 0
        n = buf[3]
        if len(buf) < 4 + n:
            return 0
        pkt = bytes(buf[: 4 + n])
        if (~sum(pkt[2:-1])) & 0xFF != pkt[-1]:
            self.bad_packets += 1
            return 4 + n
        self.packets += 1
        self._handle(pkt[2], pkt[4], pkt[5:-1])
        return 4 + n

    def _feetech_status(self, motor_id: int, params: bytes = b"") -> None:
        body = bytes([motor_id, len(params) + 2, 0]) + params
        self._send(b"\xff\xff" + body + bytes([(~sum(body)) & 0xFF]))

    # Dynamixel 2.0: FF FF FD 00 id lenL lenH instr params... crcL crcH, len = params + 3.
    def _parse_dxl(self, buf: bytearray) -> int:
        start = buf.find(b"\xff\xff\xfd\x00")
        if start < 0:
            return max(len(buf) - 3, 0)
        if start > 0:
            return start
        if len(buf) < 7:
            return 0
        n = buf[5] | (buf[6] << 8)
        if len(buf) < 7 + n:
            return 0
        pkt = bytes(buf[: 7 + n])
        if dxl_crc(pkt[:-2]) != (pkt[-2] | (pkt[-1] << 8)):
            self.bad_packets += 1
            return 7 + n
        self.packets += 1
        body = _unstuff(pkt[7:-2])
        self._handle(pkt[4], body[0], body[1:])
        return 7 + n

    def _dxl_status(self, motor_id: int, params: bytes = b"") -> None:
        inner = _stuff(bytes([0x55, 0]) + params)
        head = b"\xff\xff\xfd\x00" + bytes([motor_id, (len(inner) + 2) & 0xFF, (len(inner) + 2) >> 8])
        pkt = head + inner
        crc = dxl_crc(pkt)
        self._send(pkt + bytes([crc & 0xFF, crc >> 8]))

    # ---------------------------------------------------------------- instructions
    def _handle(self, motor_id: int, instr: int, p: bytes) -> None:
        dxl = self.protocol == "dynamixel"
        status = self._dxl_status if dxl else self._feetech_status
        addr_len = 2 if dxl else 1  # address and length fields are 2 bytes in protocol 2.0

        def field(i: int) -> int:
            return int.from_bytes(p[i * addr_len : (i + 1) * addr_len], "little")

        with self._lock:
            self._move()
            if instr == 0x01:  # ping
                if motor_id in self.mem:
                    model = self._get(self.mem[motor_id], self.table.model_addr, 2).to_bytes(2, "little")
                    replies = [(motor_id, model + b"\x2d" if dxl else b"")]
                else:
                    replies = []
            elif instr == 0x02:  # read
                addr, n = field(0), field(1)
                replies = (
                    [(motor_id, bytes(self.mem[motor_id][addr : addr + n]))] if motor_id in self.mem else []
                )
            elif instr == 0x03:  # write
                addr, data = field(0), p[addr_len:]
                replies = []
                if motor_id in self.mem:
                    self.mem[motor_id][addr : addr + len(data)] = data
                    if motor_id != 0xFE:
                        replies = [(motor_id, b"")]
            elif instr == 0x82:  # sync read: each listed motor answers in turn
                addr, n = field(0), field(1)
                replies = [
                    (i, bytes(self.mem[i][addr : addr + n])) for i in p[2 * addr_len :] if i in self.mem
                ]
            elif instr == 0x83:  # sync write: no answer
                addr, n = field(0), field(1)
                rest = p[2 * addr_len :]
                for k in range(0, len(rest) - n, n + 1):
                    i = rest[k]
                    if i in self.mem:
                        self.mem[i][addr : addr + n] = rest[k + 1 : k + 1 + n]
                replies = []
            else:
                replies = []
        if replies and self.latency_s:  # the bus answers an instruction this much later
            time.sleep(self.latency_s)
        if replies and self._delays:
            time.sleep(self._delays.pop(0))
        for i, data in replies:
            status(i, data)
