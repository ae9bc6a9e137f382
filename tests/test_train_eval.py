"""`robolearn train` and `robolearn eval` end to end on a tiny store and a tiny model (CPU)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from robolearn.eval import eval_seeds, wilson_interval
from robolearn.record import RecordConfig, record

TINY = ["policy.unet.down_dims=[16,32]", "policy.encoder.lowdim_hidden_dims=[32]", "train.batch_size=16",
        "train.warmup_steps=2", "train.val_every=5", "train.ckpt_every=5", "train.num_workers=0"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "robolearn", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "lift.zarr"
    record(RecordConfig(rig="sim:lift", out=str(out), episodes=6, workers=1))
    return out


def test_train_resume_and_eval(store, tmp_path):
    run_dir = tmp_path / "run"
    res = run("train", "--recipe", "policies/diffusion_lowdim.yaml", "--data", str(store), "--out", str(run_dir),
              "-q", "train.steps=10", *TINY)
    assert res.returncode == 0, res.stderr
    assert (run_dir / "checkpoints" / "step_0000010" / "model.safetensors").is_file()
    assert (run_dir / "checkpoints" / "last" / "config.json").is_file()
    assert any((run_dir / "tb").iterdir())
    again = run("train", "--recipe", "policies/diffusion_lowdim.yaml", "--data", str(store), "--out", str(run_dir),
                "-q", "train.steps=10", *TINY)
    assert again.returncode == 2 and "--resume" in again.stderr  # never overwrite a run silently
    resumed = run("train", "--recipe", "policies/diffusion_lowdim.yaml", "--data", str(store), "--out", str(run_dir),
                  "--resume", "-q", "train.steps=15", *TINY)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run_dir / "result.json").read_text())["steps"] == 15

    out = tmp_path / "eval"
    ev = run("eval", "--policy", str(run_dir), "--task", "lift", "--episodes", "2", "--n-envs", "2", "--videos", "1",
             "--max-steps", "60", "--out", str(out))
    assert ev.returncode == 0, ev.stderr
    report = json.loads((out / "report.json").read_text())
    r = report["results"][0]
    assert r["episodes"] == 2 and r["task"] == "lift" and r["inference_ms_per_chunk"] > 0
    assert [e["seed"] for e in r["per_episode"]] == eval_seeds(2)  # fixed seeds: comparable across policies
    assert r["wilson95"][0] <= r["success_rate"] <= r["wilson95"][1]
    assert (out / "summary.md").is_file() and len(r["videos"]) == 1
    assert (out / r["videos"][0].split(str(out) + "/")[1]).stat().st_size > 1000
    # A lift policy reads lift's 12-d object vector; can gives 18: refused up front, with the key named.
    wrong = run("eval", "--policy", str(run_dir), "--task", "can", "--episodes", "1", "--out", str(tmp_path / "e2"))
    assert wrong.returncode == 2 and "'object'" in wrong.stderr and "Traceback" not in wrong.stderr


def test_distributed_two_process_cpu_run(store, tmp_path):
    """The same command under torchrun: 2 CPU processes, gloo, gradients synchronised."""
    run_dir = tmp_path / "ddp"
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "robolearn", "train", "--recipe", "policies/diffusion_lowdim.yaml", "--data", str(store),
         "--out", str(run_dir), "-q", "train.steps=6", *TINY],
        capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 0, res.stderr
    result = json.loads((run_dir / "result.json").read_text())
    assert result["processes"] == 2 and result["replicas_in_sync"] and result["steps"] == 6
    assert (run_dir / "checkpoints" / "last" / "model.safetensors").is_file()
    assert res.stdout.count("6 steps") == 1  # only rank 0 reports


@pytest.mark.parametrize("args, needle", [
    (["train", "--recipe", "nope.yaml", "--data", "x", "--out", "y"], "recipe not found"),
    (["train", "--recipe", "policies/diffusion_lowdim.yaml", "--data", "x", "--out", "y", "train.stepz=3"],
     "unknown key 'stepz'"),
    (["train", "--recipe", "policies/diffusion_lowdim.yaml", "--data", "x", "--out", "y", "train.steps=many"],
     "expected an integer"),
    (["train", "--recipe", "policies/diffusion_lowdim.yaml", "--data", "missing.zarr", "--out", "y"], "no store at"),
    (["eval", "--policy", "no/such/run", "--task", "lift", "--out", "z"], "no checkpoint at"),
    (["eval", "--suite", "no/such/suite.yaml", "--out", "z"], "suite file not found"),
])
def test_train_eval_usage_errors(args, needle):
    res = run(*args)
    assert res.returncode == 2 and needle in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_wilson_interval():
    assert wilson_interval(0, 50)[0] == 0.0 and wilson_interval(50, 50)[1] == 1.0
    lo, hi = wilson_interval(45, 50)
    assert lo == pytest.approx(0.7864, abs=1e-3) and hi == pytest.approx(0.9565, abs=1e-3)


def test_scientific_notation_overrides_are_numbers(tmp_path):
    # YAML 1.1 reads "3e-4" (no dot) as a string; a float field must still take it, from a file or a key=value.
    from robolearn.policies.train import load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text("policy: {type: flow, ema: {power: 75e-2}}\ndata: {obs_keys: [a]}\ntrain: {lr: 5e-4}\n")
    r = load_recipe(recipe, [])
    assert r.train.lr == 5e-4
    assert load_recipe(recipe, ["train.lr=3e-4"]).train.lr == 3e-4
    with pytest.raises(ValueError, match="expected a number"):
        load_recipe(recipe, ["train.lr=fast"])
