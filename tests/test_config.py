"""The typed config loader, the resolver of built-in files, and how the CLI tells user errors from bugs."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

from robolearn import resources
from robolearn.config import apply_overrides, check_config, load_config, load_yaml_config
from robolearn.errors import ConfigError, MissingFileError, UserError

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Inner:
    dims: tuple[int, ...] = field(default=(8, 16), metadata={"nonempty": True, "min": 1})
    groups: int = 8

    def validate(self) -> None:
        if any(d % self.groups for d in self.dims):
            raise ConfigError(f"{list(self.dims)} must be divisible by groups ({self.groups})", key="dims")


@dataclass
class Outer:
    name: str = field(metadata={"nonempty": True})
    steps: int = field(default=10, metadata={"min": 1})
    lr: float = field(default=1e-4, metadata={"gt": 0.0})
    ratio: float = field(default=0.5, metadata={"min": 0.0, "lt": 1.0})
    flag: bool = False
    mode: Literal["fast", "slow"] = "fast"
    precision: Literal["auto", "no", "bf16"] = "auto"
    kind: str = field(default="a", metadata={"choices": ("a", "b")})
    keys: list[str] = field(default_factory=list)
    weights: dict[str, float] = field(default_factory=dict)
    limit: int | None = None
    path: Path | None = None
    extra: Any = None
    inner: Inner = field(default_factory=Inner)
    source: str = field(default="", metadata={"internal": True})


def test_every_supported_type_is_read_and_converted():
    cfg = load_config(Outer, {
        "name": "x", "steps": 3, "lr": "3e-4", "ratio": 0, "flag": True, "mode": "slow", "kind": "b",
        "precision": False,
        "keys": ["a", "b"], "weights": {"a": 1, "b": 2.5}, "limit": None, "path": "runs/x", "extra": {"any": [1]},
        "inner": {"dims": [16, 32]},
    })
    assert cfg.lr == 3e-4 and isinstance(cfg.lr, float)  # YAML 1.1 reads 3e-4 as a string
    assert cfg.precision == "no"  # ... and `no` as false
    assert cfg.ratio == 0.0 and isinstance(cfg.ratio, float)
    assert cfg.inner == Inner(dims=(16, 32)) and isinstance(cfg.inner.dims, tuple)
    assert cfg.weights == {"a": 1.0, "b": 2.5} and cfg.path == Path("runs/x") and cfg.extra == {"any": [1]}
    assert load_config(Outer, {"name": "y"}) == Outer(name="y")  # missing keys default


@pytest.mark.parametrize("raw, message", [
    ({"name": "x", "stepz": 3}, "f.yaml: unknown key 'stepz' (did you mean 'steps'?); allowed: name, steps, lr,"),
    ({"name": "x", "source": "y"}, "f.yaml: unknown key 'source'"),  # internal: filled in by code only
    ({"steps": 3}, "f.yaml: missing required key 'name'"),
    ({"name": ""}, "f.yaml: name: must not be empty"),
    ({"name": "x", "steps": "many"}, "f.yaml: steps: expected an integer, got 'many'"),
    ({"name": "x", "steps": True}, "f.yaml: steps: expected an integer, got true"),  # bool is not an int
    ({"name": "x", "steps": 2.0}, "f.yaml: steps: expected an integer, got 2.0"),
    ({"name": "x", "steps": 0}, "f.yaml: steps: must be >= 1, got 0"),
    ({"name": "x", "lr": 0}, "f.yaml: lr: must be > 0.0, got 0"),
    ({"name": "x", "lr": "fast"}, "f.yaml: lr: expected a number, got 'fast'"),
    ({"name": "x", "ratio": 1.0}, "f.yaml: ratio: must be < 1.0, got 1.0"),
    ({"name": "x", "flag": "yes please"}, "f.yaml: flag: expected true or false, got 'yes please'"),
    ({"name": "x", "mode": "medium"}, "f.yaml: mode: expected one of 'fast', 'slow', got 'medium'"),
    ({"name": "x", "kind": "c"}, "f.yaml: kind: expected one of 'a', 'b', got 'c'"),
    ({"name": "x", "keys": "a"}, "f.yaml: keys: expected a list of strings, got 'a'"),
    ({"name": "x", "keys": ["a", 3]}, "f.yaml: keys[1]: expected a string, got 3"),
    ({"name": "x", "weights": {"a": "heavy"}}, "f.yaml: weights.a: expected a number, got 'heavy'"),
    ({"name": "x", "limit": "none"}, "f.yaml: limit: expected an integer or null, got 'none'"),
    ({"name": "x", "inner": 5}, "f.yaml: inner: expected a mapping of Inner fields, got 5"),
    ({"name": "x", "inner": {"dims": 5}}, "f.yaml: inner.dims: expected a list of integers, got 5"),
    ({"name": "x", "inner": {"dims": []}}, "f.yaml: inner.dims: must not be empty"),
    ({"name": "x", "inner": {"dims": [8, 0]}}, "f.yaml: inner.dims[1]: must be >= 1, got 0"),
    ({"name": "x", "inner": {"dims": [8, 12]}}, "f.yaml: inner.dims: [8, 12] must be divisible by groups (8)"),
    ({"name": "x", "inner": {"dimz": [8]}}, "f.yaml: inner: unknown key 'dimz' (did you mean 'dims'?)"),
])
def test_mistakes_are_one_line_naming_file_and_key(raw, message):
    with pytest.raises(ConfigError) as e:
        load_config(Outer, raw, where="f.yaml")
    assert str(e.value).startswith(message), str(e.value)
    assert "\n" not in str(e.value) and isinstance(e.value, UserError) and isinstance(e.value, ValueError)


def test_overrides_are_applied_and_blamed():
    raw = {"name": "x", "inner": {"groups": 4}}
    cfg = load_config(Outer, raw, "f.yaml", overrides=["steps=7", "inner.dims=[4, 8]", "weights.a=1e-3", "limit=null"])
    assert cfg.steps == 7 and cfg.inner.dims == (4, 8) and cfg.weights == {"a": 1e-3} and cfg.limit is None
    assert raw == {"name": "x", "inner": {"groups": 4}}  # the input is not modified
    with pytest.raises(ConfigError, match=r"^override steps=0: must be >= 1, got 0$"):
        load_config(Outer, raw, "f.yaml", overrides=["steps=0"])
    with pytest.raises(ConfigError, match=r"^override inner={dims: 5}: inner\.dims: expected a list of integers"):
        load_config(Outer, raw, "f.yaml", overrides=["inner={dims: 5}"])
    # a check across keys cannot tell which one is wrong: it names the file and the overrides
    with pytest.raises(ConfigError, match=r"^f\.yaml with inner\.groups=5: inner\.dims: \[8, 16\] must be divisible"):
        load_config(Outer, {"name": "x"}, "f.yaml", overrides=["inner.groups=5"])
    with pytest.raises(ConfigError, match=r"^override inner\.dims=\[6\]: \[6\] must be divisible by groups \(4\)$"):
        load_config(Outer, raw, "f.yaml", overrides=["inner.dims=[6]"])
    with pytest.raises(ConfigError, match=r"^override inner\.dimz=3: inner: unknown key 'dimz' \(did you mean"):
        load_config(Outer, raw, "f.yaml", overrides=["inner.dimz=3"])
    with pytest.raises(ConfigError, match=r"^override 'steps': not key=value"):
        apply_overrides(raw, ["steps"])
    with pytest.raises(ConfigError, match=r"^override name\.first=a: 'name' is a value, not a section"):
        apply_overrides(raw, ["name.first=a"])


def test_check_config_rechecks_objects_built_in_code():
    check_config(Outer(name="x"))
    with pytest.raises(ConfigError, match=r"^inner\.dims\[0\]: must be >= 1, got -8$"):
        check_config(Outer(name="x", inner=Inner(dims=(-8,))))


def test_a_new_task_field_is_picked_up_without_touching_the_loader(tmp_path):
    from robolearn.sim.tasks import TaskConfig

    @dataclass(frozen=True)
    class TaskWithLighting(TaskConfig):
        lighting: str = field(default="day", metadata={"choices": ("day", "night")})

    path = tmp_path / "t.yaml"
    path.write_text("name: t\nenv_name: Lift\ninstruction: lift it\nhorizon: 10\nlighting: night\n")
    assert load_yaml_config(TaskWithLighting, path, "task file").lighting == "night"
    path.write_text("name: t\nenv_name: Lift\ninstruction: lift it\nhorizon: 10\nlighting: dusk\n")
    with pytest.raises(ConfigError, match=r"t\.yaml: lighting: expected one of 'day', 'night', got 'dusk'"):
        load_yaml_config(TaskWithLighting, path, "task file")
    with pytest.raises(ConfigError, match=r"t\.yaml: unknown key 'lighting'"):
        load_yaml_config(TaskConfig, path, "task file")
    assert {f.name for f in dataclasses.fields(TaskWithLighting)} > {f.name for f in dataclasses.fields(TaskConfig)}


def test_recipe_policy_section_is_checked_at_load(tmp_path):
    from robolearn.policies.train import load_recipe

    r = load_recipe("quickstart", ["policy.unet.down_dims=[16,32]", "train.lr=3e-4"])
    assert r.policy["unet"]["down_dims"] == [16, 32] and r.train.lr == 3e-4 and r.name == "quickstart"
    assert r.policy["horizon"] == r.data.horizon  # window sizes come from the data section
    assert load_recipe("quickstart", ["train.mixed_precision=no"]).train.mixed_precision == "no"
    with pytest.raises(ConfigError, match=r"^override policy\.unet\.down_dims=5: expected a list of integers, got 5$"):
        load_recipe("policies/quickstart.yaml", ["policy.unet.down_dims=5"])
    with pytest.raises(ConfigError, match=r"^override policy\.sampler=ddpn: expected one of 'ddpm', 'ddim'"):
        load_recipe("diffusion_lowdim", ["policy.sampler=ddpn"])
    with pytest.raises(ConfigError, match=r"^override policy\.horizon=8: is taken from data\.horizon \(16\)"):
        load_recipe("quickstart", ["policy.horizon=8"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("policy: {type: flow, unet: {kernel_size: 4}}\ndata: {obs_keys: [a]}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: policy\.unet\.kernel_size: must be odd"):
        load_recipe(bad)
    bad.write_text("policy: {type: flow}\ntrain: {steps: 3}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: missing required key 'data'"):
        load_recipe(bad)
    bad.write_text("policy: {unet: {}}\ndata: {obs_keys: [a]}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: policy: needs a 'type'"):
        load_recipe(bad)
    with pytest.raises(MissingFileError, match=r"recipe not found: nope\.yaml \(available recipes: .*quickstart"):
        load_recipe("nope.yaml")


# ----------------------------------------------------------------------------- resources


def test_builtin_files_resolve_by_name_and_by_repo_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the checkout: names must still resolve
    assert resources.resolve("task", "lift") == REPO / "sim" / "tasks" / "lift.yaml"
    assert resources.resolve("recipe", "policies/quickstart.yaml") == REPO / "policies" / "quickstart.yaml"
    assert resources.resolve("recipe", "quickstart.yaml") == REPO / "policies" / "quickstart.yaml"
    assert resources.resolve("suite", "sim/suites/lift.yaml") == REPO / "sim" / "suites" / "lift.yaml"
    assert set(resources.available("recipe")) >= {"quickstart", "diffusion_lowdim", "flow_lowdim"}
    with pytest.raises(MissingFileError, match=r"unknown task 'lfit'; available: can, lift, square, stack"):
        resources.resolve("task", "lfit")
    with pytest.raises(UserError, match="is a directory"):
        resources.resolve("task", str(tmp_path))


def test_project_folders_in_the_current_directory_shadow_builtins(tmp_path, monkeypatch):
    (tmp_path / "sim" / "tasks").mkdir(parents=True)
    (tmp_path / "sim" / "tasks" / "mine.yaml").write_text("name: mine\nenv_name: Lift\ninstruction: go\nhorizon: 5\n")
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "quickstart.yaml").write_text("name: my_quickstart\npolicy: {type: flow}\n"
                                                             "data: {obs_keys: [a]}\n")
    monkeypatch.chdir(tmp_path)
    from robolearn.policies.train import load_recipe
    from robolearn.sim.tasks import list_tasks, load_task

    assert {"mine", "lift"} <= set(list_tasks())
    assert load_task("mine").horizon == 5 and load_task("lift").source == REPO / "sim" / "tasks" / "lift.yaml"
    assert load_recipe("quickstart").name == "my_quickstart"
    assert load_recipe("flow_lowdim").name == "flow_lowdim"  # not shadowed: the built-in one


# ----------------------------------------------------------------------------- the CLI


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "robolearn", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_bad_policy_override_fails_before_any_work(tmp_path):
    t0 = time.perf_counter()
    res = run("quickstart", "--out", str(tmp_path / "qs"), "policy.unet.down_dims=5")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip() == "robolearn: error: override policy.unet.down_dims=5: expected a list of integers, got 5"
    assert not (tmp_path / "qs").exists() and time.perf_counter() - t0 < 60  # nothing recorded
    res = run("train", "--recipe", "quickstart", "--data", "missing.zarr", "--out", str(tmp_path / "r"),
              "policy.encoder.crop_ratio=1.5")
    assert res.returncode == 2
    assert res.stderr.strip() == "robolearn: error: override policy.encoder.crop_ratio=1.5: must be <= 1.0, got 1.5"


def test_debug_shows_the_traceback_of_a_user_error(tmp_path):
    plain = run("data", "info", str(tmp_path / "none.zarr"))
    assert plain.returncode == 2 and "Traceback" not in plain.stderr and len(plain.stderr.splitlines()) == 1
    debug = run("--debug", "data", "info", str(tmp_path / "none.zarr"))
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "StoreError: no store at" in debug.stderr


def test_bugs_keep_their_traceback(monkeypatch, capsys):
    from robolearn.cli import main as cli

    def buggy(args: argparse.Namespace) -> int:
        raise ValueError("an internal invariant broke")  # a bug, not the user's mistake

    def mistaken(args: argparse.Namespace) -> int:
        raise UserError("the store is for another task")

    monkeypatch.setattr(cli, "cmd_data_info", buggy)
    with pytest.raises(ValueError, match="internal invariant"):
        cli.main(["data", "info", "x.zarr"])
    monkeypatch.setattr(cli, "cmd_data_info", mistaken)
    assert cli.main(["data", "info", "x.zarr"]) == 2
    assert capsys.readouterr().err == "robolearn: error: the store is for another task\n"
    with pytest.raises(UserError):
        cli.main(["--debug", "data", "info", "x.zarr"])


def test_path_errors_are_the_users_only_for_paths_they_gave(tmp_path):
    from robolearn.cli.main import _is_user_error, build_parser

    args = build_parser().parse_args(["train", "--recipe", "r.yaml", "--data", "d.zarr", "--out", str(tmp_path)])
    theirs = PermissionError(13, "Permission denied", str(tmp_path / "metrics.jsonl"))
    ours = FileNotFoundError(2, "No such file or directory", "/usr/share/robolearn/internal.bin")
    assert _is_user_error(theirs, args) and not _is_user_error(ours, args)
    assert not _is_user_error(KeyError("x"), args)
