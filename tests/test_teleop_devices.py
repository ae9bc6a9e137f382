"""Teleop devices parse the bytes their devices send: raw 3Dconnexion HID reports through a packet
pipe (one report per read, as hidraw gives them), key bytes through a real pseudo-terminal, and Linux
input_event records. The fixtures are written here, in the devices' own byte formats."""

from __future__ import annotations

import os
import struct
import termios
import time

import numpy as np
import pytest

from robolearn.teleop import Event, make_teleop
from robolearn.teleop.devices import KeyParser, TeleopSettings, apply_deadzone
from robolearn.teleop.gamepad import EVENT, GamepadTeleop, ecodes
from robolearn.teleop.keyboard import KeyboardTeleop
from robolearn.teleop.spacemouse import SpaceMouseTeleop, parse_report

pytestmark = pytest.mark.realtime  # has the CPU alone under xdist (conftest.py)


def _wait(cond, timeout=2.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return True
        time.sleep(0.005)
    return False


def _write_fixture(path, reports):
    """A capture file: each report as a 2-byte length and its bytes."""
    with open(path, "wb") as f:
        for r in reports:
            f.write(struct.pack("<H", len(r)) + r)


def _read_fixture(path):
    data, out, i = open(path, "rb").read(), [], 0
    while i < len(data):
        (n,) = struct.unpack_from("<H", data, i)
        out.append(data[i + 2:i + 2 + n])
        i += 2 + n
    return out


def _drain(teleop):
    """Events until the reader thread has caught up (events arrive asynchronously)."""
    evs = []
    _wait(lambda: evs.extend(teleop.events()) or False, 0.3)
    return evs


def test_deadzone_zeroes_small_values_and_stays_continuous():
    v = apply_deadzone(np.array([0.04, -0.05, 0.1, -1.0, 1.5]), 0.05)
    assert v[0] == 0 and v[1] == 0
    assert v[2] == pytest.approx(0.05 / 0.95)
    assert v[3] == -1.0 and v[4] == 1.0  # clipped


@pytest.mark.parametrize("wireless", [False, True])
def test_spacemouse_hid_reports(tmp_path, wireless):
    # Reports as the devices send them: older models split translation (id 1) and rotation (id 2);
    # the Wireless/Compact firmware sends all six axes in one id-1 report. Buttons: id 3 bit mask.
    if wireless:
        motion = [bytes([1]) + struct.pack("<6h", 175, -350, 10, 0, 0, 350)]
    else:
        motion = [bytes([1]) + struct.pack("<3h", 175, -350, 10), bytes([2]) + struct.pack("<3h", 0, 0, 350)]
    reports = motion + [bytes([3, 0b01, 0]), bytes([3, 0b00, 0]), bytes([3, 0b10, 0]), bytes([3, 0, 0])]
    fixture = tmp_path / "spacemouse.bin"
    _write_fixture(fixture, reports)

    r, w = os.pipe2(os.O_DIRECT)  # packet mode: one read returns one report, as /dev/hidraw does
    settings = TeleopSettings(path=f"/proc/self/fd/{r}", deadzone=0.1, scale_translation=0.5,
                              axes=["y", "x", "-z", "rx", "ry", "rz"], keys=False)
    sm = make_teleop("spacemouse", settings)
    assert isinstance(sm, SpaceMouseTeleop)
    sm.connect()
    try:
        for rep in _read_fixture(fixture):
            os.write(w, rep)
        assert _wait(lambda: sm.gripper == 1.0 and sm.act({})[0][5] != 0)
        a, intervening = sm.act({})
        assert intervening and a.dtype == np.float32 and a.shape == (7,)
        # dx <- y = -1.0; dy <- x = 0.5; dz <- -z: 10/350 is inside the deadzone; yaw <- rz = 1
        np.testing.assert_allclose(a[:6], [-0.5, 0.5 * (0.5 - 0.1) / 0.9, 0, 0, 0, 1.0], atol=1e-6)
        assert a[6] == 1.0  # button 0 toggled the gripper closed (press only, release ignored)
        assert _drain(sm) == [Event.KEEP]  # button 1 -> keep
    finally:
        sm.disconnect()
        os.close(r)
        os.close(w)


def test_spacemouse_report_parser_ignores_unknown_reports():
    assert parse_report(b"") == ({}, None)
    assert parse_report(bytes([0x17, 1, 2, 3])) == ({}, None)  # battery / LED reports
    assert parse_report(bytes([3, 0, 1])) == ({}, 1 << 8)


def test_key_parser_splits_escape_sequences_across_reads():
    p = KeyParser()
    assert p.feed(b"w\x1b") == ["w"]
    assert p.feed(b"[A\r ") == ["up", "enter", "space"]
    assert p.feed(b"\x1b[") == []
    assert p.feed(b"5~x\x7f") == ["pageup", "x", "backspace"]
    assert p.feed(b"\x1b") == [] and p.flush() == ["esc"]
    assert p.feed(b"\x1b[1;5Ck") == ["k"]  # an unknown sequence (ctrl-right) is skipped whole


def test_keyboard_through_a_pseudo_terminal(tmp_path):
    master, slave = os.openpty()
    tty = os.ttyname(slave)
    before = termios.tcgetattr(slave)
    kb = make_teleop("keyboard", TeleopSettings(path=tty, key_hold_s=0.5))
    assert isinstance(kb, KeyboardTeleop)
    kb.connect()
    try:
        mode = termios.tcgetattr(slave)
        assert not mode[3] & termios.ECHO and not mode[3] & termios.ICANON  # cbreak: keys arrive one by one
        keys = tmp_path / "keys.bin"
        keys.write_bytes(b"w" + b"\x1b[A" + b" " + b"\r" + b"y" + b"k")
        os.write(master, keys.read_bytes())
        assert _wait(lambda: kb.gripper == 1.0)
        a, _ = kb.act({})
        np.testing.assert_allclose(a, [1, 0, 0, 0, 1, 0, 1])  # w: +x, up: +pitch, space: gripper closed
        assert _drain(kb) == [Event.START, Event.SUCCESS, Event.KEEP]
        time.sleep(0.55)  # no auto-repeat arrived: the keys are released
        np.testing.assert_allclose(kb.act({})[0][:6], 0)
    finally:
        kb.disconnect()
    assert termios.tcgetattr(slave)[3] == before[3]  # the terminal is restored
    os.close(master)
    os.close(slave)


def test_gamepad_input_events(tmp_path):
    try:  # the kernel's codes as the evdev package knows them (when installed)
        from evdev import ecodes as real

        for name, code in vars(ecodes).items():
            assert getattr(real, name) == code, name
    except ImportError:
        pass
    t = 1700000000.0

    def ev(typ, code, value):
        return EVENT.pack(int(t), 0, typ, code, value)

    syn = ev(ecodes.EV_SYN, ecodes.SYN_REPORT, 0)
    stream = b"".join([
        ev(ecodes.EV_ABS, ecodes.ABS_Y, -32768), ev(ecodes.EV_ABS, ecodes.ABS_X, 1000), syn,  # push forward
        ev(ecodes.EV_ABS, ecodes.ABS_RZ, 255), syn,  # right trigger fully pressed
        ev(ecodes.EV_ABS, ecodes.ABS_HAT0Y, -1), syn,
        ev(ecodes.EV_KEY, ecodes.BTN_START, 1), syn, ev(ecodes.EV_KEY, ecodes.BTN_START, 0), syn,
        ev(ecodes.EV_KEY, ecodes.BTN_SOUTH, 1), ev(ecodes.EV_KEY, ecodes.BTN_SOUTH, 2), syn,  # 2 = auto-repeat
    ])
    fixture = tmp_path / "gamepad.bin"
    fixture.write_bytes(stream)
    r, w = os.pipe()
    pad = make_teleop("gamepad", TeleopSettings(deadzone=0.1, keys=False))
    assert isinstance(pad, GamepadTeleop)
    pad = GamepadTeleop(TeleopSettings(deadzone=0.1, keys=False), fd=r)
    pad.connect()
    try:
        data = fixture.read_bytes()
        os.write(w, data[:37])  # records split across reads, as a stream may deliver them
        time.sleep(0.05)
        os.write(w, data[37:])
        assert _wait(lambda: pad.gripper == 1.0 and pad.act({})[0][4] != 0)
        a, _ = pad.act({})
        assert a[0] == pytest.approx(1.0, abs=1e-4)  # stick fully forward -> +x
        assert a[1] == 0.0  # 1000/32768 is inside the 0.1 deadzone
        assert a[4] == 1.0  # d-pad up -> +pitch
        assert _drain(pad) == [Event.START, Event.SUCCESS]
    finally:
        pad.disconnect()
        os.close(r)
        os.close(w)


def test_settings_errors_name_the_key():
    from robolearn.config import load_config
    from robolearn.errors import ConfigError

    with pytest.raises(ConfigError, match=r"rig.yaml: teleop.axes\[2\]: unknown axis 'w'"):
        load_config(TeleopSettings, {"axes": ["x", "y", "w", "rx", "ry", "rz"]}, where="rig.yaml", prefix="teleop")
    with pytest.raises(ConfigError, match=r"teleop.buttons.1: unknown action 'jump'"):
        load_config(TeleopSettings, {"buttons": {1: "jump"}}, where="rig.yaml", prefix="teleop")
    with pytest.raises(ConfigError, match=r"teleop.deadzone"):
        load_config(TeleopSettings, {"deadzone": 1.5}, where="rig.yaml", prefix="teleop")


def test_unknown_teleop_lists_devices():
    from robolearn.errors import UserError

    with pytest.raises(UserError, match="spacemouse, keyboard, gamepad, leader"):
        make_teleop("joystick")


def test_leader_arm_on_an_emulated_feetech_bus():
    # An SO-101 leader on a pseudo-terminal servo bus that answers the Feetech protocol, read through
    # the vendor SDK: torque off (moved by hand), joint angles and gripper as the follower's action.
    import math

    from robolearn.hardware.arms import ArmConfig
    from robolearn.hardware.arms.bus_emulator import ServoBusEmulator
    from robolearn.teleop.leader import LeaderTeleop

    with ServoBusEmulator("feetech") as bus:
        leader = make_teleop("leader", None)
        assert isinstance(leader, LeaderTeleop)
        leader = LeaderTeleop(TeleopSettings(keys=False), ArmConfig(type="so101", serial_port=bus.port, action="joints"))
        leader.connect()
        try:
            assert not any(bus.torque(i) for i in range(1, 7))
            with bus._lock:  # the operator moves the leader by hand
                bus._present.update({1: 2048 + 1024, 2: 2048 - 512, 6: 0.0})
            a, intervening = leader.act({})
            assert intervening and a.shape == (6,) and a.dtype == np.float32
            np.testing.assert_allclose(a[:5], [math.pi / 2, -math.pi / 4, 0, 0, 0], atol=1e-6)
            assert a[5] == 1.0  # gripper motor at its range's minimum: closed
        finally:
            leader.disconnect()
    from robolearn.errors import UserError

    with pytest.raises(UserError, match="needs the leader arm in the rig file's teleop.leader"):
        LeaderTeleop(TeleopSettings(keys=False)).connect()
