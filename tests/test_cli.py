"""The `robolearn` command as a user meets it: one clear line and exit 2 for mistakes, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "robolearn", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["record", "--rig", "sim:lift"], "--out"),
        (["record", "--rig", "sim:lift", "--out", "x", "--episodes", "many"], "invalid int value"),
        (["record", "--rig", "robot:ur5", "--out", "x"], "unknown rig 'robot:ur5'"),
        (["record", "--rig", "sim:nosuchtask", "--out", "x"], "unknown task 'nosuchtask'"),
        (["record", "--rig", "sim:lift", "--teleop", "spacemouse", "--out", "x"], "teleoperator 'spacemouse'"),
        (["record", "--rig", "sim:lift", "--out", "x", "--episodes", "0"], "--episodes must be at least 1"),
        (["record", "--rig", "sim:lift", "--out", "x", "--image-size", "3"], "--image-size"),
        (["data", "info", "does/not/exist.zarr"], "no store at does/not/exist.zarr"),
        (["data", "verify", "does/not/exist.zarr"], "no store at does/not/exist.zarr"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2_with_one_clear_line(tmp_path, args, needle):
    res = run(*args, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert needle in res.stderr
    assert "Traceback" not in res.stderr


def test_malformed_task_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: lift\n  horizon: [unclosed\n")
    res = run("record", "--rig", f"sim:{bad}", "--out", str(tmp_path / "s.zarr"))
    assert res.returncode == 2 and "Traceback" not in res.stderr and "bad.yaml" in res.stderr


def test_info_and_verify(synth_store, tmp_path):
    path, eps = synth_store
    res = run("data", "info", str(path), "--json")
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    assert d["episodes"] == len(eps) and d["steps"] == sum(len(e["action"]) for e in eps)
    assert d["success"] == 3 and d["failure"] == 2
    assert d["streams"]["cam"]["keys"]["cam_image"] == {"shape": [16, 16, 3], "dtype": "uint8", "kind": "rgb",
                                                        "codec": "robolearn.qoi"}
    assert d["size_bytes"] > 0 and d["fps"] == [20.0]
    assert d["streams"]["control"]["rate_hz"] == pytest.approx(20.0)
    assert d["streams"]["cam"]["rate_hz"] == pytest.approx(30.0, rel=0.1)  # its own clock, not resampled
    text = run("data", "info", str(path)).stdout
    assert "episodes  5" in text and "cam_image" in text
    ok = run("data", "verify", str(path))
    assert ok.returncode == 0 and "OK" in ok.stdout
    # corrupt one frame of episode 2 (rows 37.. in the camera stream)
    shard = next(p for p in (path / "cam" / "cam_image" / "c").rglob("*") if p.is_file())
    raw = bytearray(shard.read_bytes())
    from robolearn.data.store import DemoStore

    store = DemoStore.open(path)
    a, _ = store.episode_range("cam", 2)
    reader_index = _frame_offset(shard, a)
    raw[reader_index + 10] ^= 0xFF
    shard.write_bytes(bytes(raw))
    bad = run("data", "verify", str(path))
    assert bad.returncode == 1
    assert "episode 2, key cam/cam_image" in bad.stderr and "Traceback" not in bad.stderr


def _frame_offset(shard, row: int) -> int:
    import numpy as np

    data = shard.read_bytes()
    index = np.frombuffer(data[-(128 * 16 + 4):-4], dtype="<u8").reshape(128, 2)
    return int(index[row][0])


def test_quickstart_runs_the_pipeline(tmp_path):
    out = tmp_path / "qs"
    rl = [f"--rl-set={kv}" for kv in ("env.max_steps=20", "env.n_envs=2", "env.workers=0", "learning_starts=20",
                                      "critic_warmup=20", "batch_size=16", "actor.hidden=16", "critic.hidden=16")]
    res = run("quickstart", "--out", str(out), "--episodes", "3", "--train-steps", "4", "--eval-episodes", "2",
              "--rl-steps", "40", "--failures", "2", "--reward-steps", "5", *rl,
              "train.batch_size=16", "policy.unet.down_dims=[16,32]")
    assert res.returncode == 0, res.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["store_info"]["episodes"] == 3 and report["store_info"]["success"] == 3
    # Reward and RL stages: base and base + residual on the same seeds, with the curve.
    assert report["rl"]["env_steps"] == 40 and report["rl"]["curve"][0]["env_steps"] == 0
    assert report["rl"]["base_success"] is not None and (out / "rl_curve.png").is_file()
    assert (out / "reward" / "scores.json").is_file() and "base + residual" in (out / "report.md").read_text()
    assert report["train"]["steps"] == 4 and report["eval"]["episodes"] == 2
    assert (out / "report.md").is_file() and (out / "training_loss.png").is_file()
    assert (out / "eval" / "report.json").is_file()
    assert run("data", "verify", report["store"]).returncode == 0
    again = run("quickstart", "--out", str(out))
    assert again.returncode == 2 and "not empty" in again.stderr
