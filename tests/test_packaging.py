"""A non-editable install (`pip install .`) carries the built-in tasks, suites and recipes and finds
them from any directory, with no source checkout on the path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# What building the package reads; the rest of the checkout (tests, data, runs) must not be needed.
BUILD_INPUTS = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "robolearn", "sim", "policies", "hardware")

CHECK = r"""
import json, sys
from pathlib import Path
import robolearn
from robolearn import resources
from robolearn.policies.train import load_recipe
from robolearn.sim import list_tasks, load_task
from robolearn.eval import load_suite

pkg = Path(robolearn.__file__).resolve().parent
print(json.dumps({
    "package": str(pkg),
    "builtin_root": str(resources.builtin_root()),
    "tasks": list_tasks(),
    "lift_source": str(load_task("lift").source),
    # Training recipes (residual RL recipes, residual_*.yaml, are read by robolearn.rl).
    "recipes": {n: load_recipe(n).name for n in resources.available("recipe") if not n.startswith("residual_")},
    "recipe_by_repo_path": str(resources.resolve("recipe", "policies/quickstart.yaml")),
    "suite": load_suite(resources.resolve("suite", "sim/suites/lift.yaml")).tasks,
    "files": sorted(str(p.relative_to(resources.builtin_root())) for p in resources.builtin_root().rglob("*")
                    if p.is_file()),
}))
"""


def test_non_editable_install_finds_builtins_from_any_directory(tmp_path):
    src = tmp_path / "src"
    for name in BUILD_INPUTS:
        p = REPO / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "_builtin"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(p, src / name)
    venv = tmp_path / "venv"
    # --system-site-packages: the dependencies (torch, robosuite, ...) come from this interpreter's site;
    # robolearn itself must come from the venv, not from the editable install or the checkout.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    install = subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                              str(src)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert install.returncode == 0, install.stderr
    shutil.rmtree(src)  # nothing may be read from the sources once installed

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    res = subprocess.run([py, "-c", CHECK], capture_output=True, text=True, env=env, cwd=elsewhere, timeout=300)
    assert res.returncode == 0, res.stderr
    import json

    got = json.loads(res.stdout.strip().splitlines()[-1])
    site = venv.resolve()
    assert Path(got["package"]).is_relative_to(site)
    assert Path(got["builtin_root"]) == Path(got["package"]) / "_builtin"
    assert set(got["tasks"]) >= {"lift", "can", "square", "stack"}
    assert Path(got["lift_source"]) == Path(got["builtin_root"]) / "sim" / "tasks" / "lift.yaml"
    repo_recipes = sorted(p.stem for p in (REPO / "policies").glob("*.yaml") if not p.stem.startswith("residual_"))
    assert sorted(got["recipes"]) == repo_recipes and got["recipes"]["quickstart"] == "quickstart"
    assert Path(got["recipe_by_repo_path"]).is_relative_to(got["builtin_root"])
    assert got["suite"] == ["lift"]
    # One source of truth: the wheel holds exactly the checkout's files of those folders.
    repo_files = sorted(str(p.relative_to(REPO)) for folder in ("sim", "policies", "hardware")
                        for p in (REPO / folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert got["files"] == repo_files

    # The installed command resolves a README-style recipe path and task name from elsewhere; the error
    # is about the missing store, i.e. the recipe was found and checked.
    robolearn = venv / "bin" / "robolearn"
    res = subprocess.run([robolearn, "train", "--recipe", "policies/diffusion_lowdim.yaml", "--data", "none.zarr",
                          "--out", "run"], capture_output=True, text=True, env=env, cwd=elsewhere, timeout=300)
    assert res.returncode == 2 and "no store at none.zarr" in res.stderr, res.stderr
    res = subprocess.run([robolearn, "quickstart", "--out", "qs", "policy.unet.down_dims=5"], capture_output=True,
                         text=True, env=env, cwd=elsewhere, timeout=300)
    assert res.returncode == 2 and "override policy.unet.down_dims=5: expected a list of integers" in res.stderr
