"""LeRobot datasets (format v3.0) in and out of the demonstration store, through the lerobot package itself.

Export writes with ``LeRobotDataset.create`` / ``add_frame`` / ``save_episode`` (lerobot encodes the videos
and computes the statistics); import opens with ``LeRobotDataset`` and decodes with lerobot's own video
decoder. Nothing here re-implements the format.

How store keys map onto LeRobot features (and back, exactly, on import):

=====================================  ==========================================================
store                                  LeRobot feature
=====================================  ==========================================================
``action``                             ``action``
1-D float32 control keys               ``observation.state``, names ``"<key>.<i>"``
``object``                             ``observation.environment_state``, names ``"object.<i>"``
other control keys (float64 sim state) ``observation.<key>`` with their own dtype and shape
``<camera>_image`` (RGB)               ``observation.images.<camera>``, a video
``<camera>_depth`` (uint16)            ``observation.depth.<camera>``, uint16 (H, W) in the parquet
                                       data (lossless; video would quantise it to 8 bits)
column ``reward``                      ``next.reward``
other columns (intervention, ...)      ``complementary_info.<name>``
episode success                        ``next.success``, true on the last frame of a success
episode task text                      the task string of every frame
=====================================  ==========================================================

The ``names`` of the concatenated vectors are what lets import split them back into the original keys;
a foreign dataset (pusht, aloha) keeps its own feature names, ``observation.`` dropped.
"""

from __future__ import annotations

import json
import os
import re
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robolearn.data.schema import CONTROL_STREAM, EpisodeInfo, KeySpec
from robolearn.data.store import DemoStore
from robolearn.errors import UserError

LEROBOT_FORMAT = "v3.0"
STATE, ENV_STATE = "observation.state", "observation.environment_state"
IMAGES, DEPTH = "observation.images.", "observation.depth."
LEROBOT_INTERNAL = ("timestamp", "frame_index", "episode_index", "index", "task_index")
INSTALL_HINT = "install it with `bash install.sh --lerobot` (or `pip install 'robolearn[lerobot]'`)"
# Where install.sh puts torchvision on a machine with a CPU-only torch build (see _import_torchvision).
TORCHVISION_DIR = Path(sysconfig.get_paths()["data"]) / "share" / "robolearn" / "torchvision"
_KEEP: list[Any] = []


class InteropError(UserError):
    """A dataset or request that cannot be converted; the message says why and what to do."""


# ---------------------------------------------------------------------------------------------- lerobot
def _import_torchvision() -> None:
    """Make ``import torchvision`` work where torch is a CPU-only build.

    PyPI's torchvision wheels are linked against CUDA torch; beside a CPU-only torch their compiled ops
    cannot load, and torchvision's import then fails on registering ``torchvision::nms``. lerobot imports
    torchvision for its transforms but its dataset code calls none of the compiled ops, so declaring the
    two op schemas torchvision registers unconditionally lets its pure-Python parts import. install.sh
    keeps such a torchvision outside site-packages (TORCHVISION_DIR) so that no other library in the
    environment (transformers' image processors) trips over it.
    """
    import torch

    if not any(Path(p, "torchvision").is_dir() for p in sys.path if p) and TORCHVISION_DIR.is_dir():
        sys.path.append(str(TORCHVISION_DIR))
    try:
        import torchvision  # noqa: F401
        return
    except RuntimeError as e:
        if "torchvision::nms" not in str(e):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for op in ("nms", "qnms"):
        lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _KEEP.append(lib)  # the schemas live as long as the library object
    import torchvision  # noqa: F401, F811


def lerobot_modules() -> dict[str, Any]:
    """lerobot's dataset class and video decoder, imported offline (nothing is fetched from a hub)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import datasets

        datasets.disable_progress_bars()  # one "Map" bar per episode otherwise
        _import_torchvision()
        import lerobot
        from lerobot.datasets.lerobot_dataset import LeRobotDataset
        from lerobot.datasets.video_utils import decode_video_frames
    except ModuleNotFoundError as e:
        raise InteropError(f"the lerobot package is not usable here ({e}); {INSTALL_HINT}") from None
    return {"LeRobotDataset": LeRobotDataset, "decode_video_frames": decode_video_frames,
            "version": getattr(lerobot, "__version__", "?")}


def _decode_episode_video(lr: dict[str, Any], ds: Any, episode: int, key: str, timestamps: np.ndarray,
                          chunk: int = 64) -> np.ndarray:
    """Every frame of one episode's video as uint8 (T, H, W, 3), decoded by lerobot's own decoder."""
    import torch

    ep = ds.meta.episodes[episode]
    path = ds.root / ds.meta.get_video_file_path(episode, key)
    start = float(ep[f"videos/{key}/from_timestamp"])
    out = []
    for i in range(0, len(timestamps), chunk):  # bounded memory: lerobot returns float32 frames
        ts = [start + float(t) for t in timestamps[i:i + chunk]]
        frames = lr["decode_video_frames"](path, ts, ds.tolerance_s, ds.video_backend)
        out.append((frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out) if out else np.zeros((0, *ds.meta.features[key]["shape"]), np.uint8)


def scalars_as_0d(ds: Any) -> None:
    """Before ``save_episode``: per-frame values of shape-(1,) features as 0-d arrays.

    lerobot 0.4 validates such features as (1,) arrays in ``add_frame`` but then hands them to
    ``datasets.Value``, which calls ``float()`` on each; NumPy >= 2.4 refuses ``float()`` of a 1-element
    1-D array. (lerobot >= 0.5 pins numpy < 2.3; the core runs NumPy 2.4.)"""
    for key, ft in ds.features.items():
        if tuple(ft.get("shape") or ()) == (1,) and ft["dtype"] not in ("image", "video", "string") \
                and key in ds.episode_buffer and key not in LEROBOT_INTERNAL:
            ds.episode_buffer[key] = [np.asarray(v).reshape(()) for v in ds.episode_buffer[key]]


def release_decoders() -> None:
    """Close the video decoders lerobot caches per process. A decoder holds an open file whose offset
    forked DataLoader workers would share with this process, corrupting each other's reads."""
    from lerobot.datasets import video_utils

    cache = getattr(video_utils, "_default_decoder_cache", None)
    if cache is not None:
        cache.clear()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 image stacks in dB (inf when identical)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


# ---------------------------------------------------------------------------------------------- export
@dataclass
class ExportReport:
    out: Path
    repo_id: str
    lerobot_version: str
    episodes: int
    frames: int
    fps: int
    features: dict[str, str]  # LeRobot feature -> what it carries
    not_carried: list[str]
    psnr: dict[str, float]  # video feature -> dB over the checked episodes
    psnr_episodes: list[int]
    seconds: float

    def summary(self) -> str:
        lines = [f"{self.out}: LeRobot {LEROBOT_FORMAT} dataset {self.repo_id!r} (lerobot {self.lerobot_version}), "
                 f"{self.episodes} episodes, {self.frames} frames at {self.fps} fps, {self.seconds:.1f}s"]
        lines += [f"  {k}: {v}" for k, v in self.features.items()]
        if self.psnr:
            lines.append(f"  video PSNR over episodes {self.psnr_episodes}: "
                         + ", ".join(f"{k} {v:.1f} dB" for k, v in self.psnr.items()))
        lines += [f"  not carried: {x}" for x in self.not_carried]
        return "\n".join(lines)


def _plan_export(store: DemoStore) -> tuple[dict[str, dict], dict[str, list[str]], list[str]]:
    """LeRobot features, the store keys behind each, and what cannot be carried."""
    features: dict[str, dict] = {}
    sources: dict[str, list[str]] = {}
    not_carried: list[str] = []
    keys = store.keys
    if "action" not in keys or keys["action"][0] != CONTROL_STREAM:
        raise InteropError(f"{store.path} has no 'action' key in its control stream; LeRobot datasets need one")
    state, env = [], []
    for k, (stream, spec) in sorted(keys.items()):
        if spec.kind == "lowdim" and stream != CONTROL_STREAM:
            not_carried.append(f"{k} (low-dim key of stream {stream!r}; LeRobot has one clock)")
        elif spec.kind == "lowdim" and k != "action":
            flat = spec.dtype == "float32" and len(spec.shape) == 1
            if flat and k == "object":
                env.append(k)
            elif flat:
                state.append(k)
            else:
                name = f"observation.{k}"
                features[name] = {"dtype": spec.dtype, "shape": tuple(spec.shape) or (1,), "names": None}
                sources[name] = [k]
    a = keys["action"][1]
    features["action"] = {"dtype": "float32", "shape": tuple(a.shape) or (1,),
                          "names": [f"action.{i}" for i in range(int(np.prod(a.shape)))]}
    sources["action"] = ["action"]
    for name, group in ((STATE, state), (ENV_STATE, env)):
        if group:
            names = [f"{k}.{i}" for k in group for i in range(keys[k][1].shape[0])]
            features[name] = {"dtype": "float32", "shape": (len(names),), "names": names}
            sources[name] = group
    for k, (_stream, spec) in sorted(keys.items()):
        if spec.kind == "rgb":
            cam = k.removesuffix("_image")
            if spec.shape[-1] != 3:
                not_carried.append(f"{k} ({spec.shape[-1]}-channel image; LeRobot videos are RGB)")
                continue
            features[IMAGES + cam] = {"dtype": "video", "shape": tuple(spec.shape),
                                      "names": ["height", "width", "channels"]}
            sources[IMAGES + cam] = [k]
        elif spec.kind == "depth":
            cam = k.removesuffix("_depth")
            features[DEPTH + cam] = {"dtype": "uint16", "shape": tuple(spec.shape), "names": ["height", "width"],
                                     "info": {"depth_scale": spec.depth_scale}}
            sources[DEPTH + cam] = [k]
    for col in sorted(store.columns):
        name = "next.reward" if col == "reward" else f"complementary_info.{col}"
        dtype = store.columns[col]["values"].dtype
        features[name] = {"dtype": "float32" if dtype.kind == "f" else dtype.name, "shape": (1,), "names": None}
        sources[name] = [f"column {col}"]
    features["next.success"] = {"dtype": "bool", "shape": (1,), "names": None}
    sources["next.success"] = ["episode success (true on the last frame)"]
    not_carried += [
        "store timestamps (t_device, t_host): LeRobot frames are timed frame_index / fps",
        "camera clocks: frames are aligned onto control ticks ('latest' frame at each tick)",
        "per-episode source, rig (the first episode's becomes robot_type), seed, dropped_frames, notes, started_at",
    ]
    if store.columns:
        not_carried.append("column provenance (who labelled reward/progress, with what)")
    return features, sources, not_carried


def export_lerobot(store_path: str | os.PathLike, out: str | os.PathLike, repo_id: str | None = None,
                   vcodec: str = "libsvtav1", check_episodes: int = 3,
                   progress: Callable[[int, int], None] | None = None) -> ExportReport:
    """Write a store as a LeRobot v3.0 dataset at ``out``; reopen it with ``LeRobotDataset`` and measure
    the video PSNR on ``check_episodes`` episodes spread over the dataset."""
    t0 = time.perf_counter()
    out = Path(out)
    store = DemoStore.open(store_path)
    if store.n_episodes == 0:
        raise InteropError(f"{store.path} has no episodes to export")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InteropError(f"{out} already exists; choose a new --out (LeRobot datasets are written from scratch)")
    infos = store.episodes()
    rates = sorted({round(i.fps) for i in infos})
    if len(rates) != 1 or rates[0] <= 0:
        raise InteropError(f"{store.path}: episodes have frame rates {rates}; a LeRobot dataset has one fps > 0")
    fps = int(rates[0])
    repo_id = repo_id or f"robolearn/{Path(store.path).name.removesuffix('.zarr')}"
    if repo_id.count("/") != 1:
        raise InteropError(f"--repo-id must look like OWNER/NAME, got {repo_id!r}")
    features, sources, not_carried = _plan_export(store)
    if any(abs(i.fps - fps) > 1e-6 for i in infos):
        not_carried.append(f"fractional frame rate {infos[0].fps} (written as {fps} fps)")
    lr = lerobot_modules()
    if out.exists():
        out.rmdir()  # lerobot creates the directory itself and refuses an existing one
    ds = lr["LeRobotDataset"].create(repo_id, fps=fps, features=features, root=out, robot_type=infos[0].rig or None,
                                     use_videos=True, vcodec=vcodec)
    frames = 0
    try:
        for e in range(store.n_episodes):
            frames += _export_episode(store, e, ds, features, sources)
            if progress:
                progress(e + 1, store.n_episodes)
    finally:
        ds.finalize()
    # Proof that lerobot reads what it wrote, and the codec's loss measured on real episodes.
    back = lr["LeRobotDataset"](repo_id, root=out)
    if back.num_episodes != store.n_episodes or back.num_frames != frames:
        raise InteropError(f"{out}: lerobot reads {back.num_episodes} episodes / {back.num_frames} frames, "
                           f"{store.n_episodes} / {frames} were written")
    check = sorted({int(x) for x in np.linspace(0, store.n_episodes - 1, min(check_episodes, store.n_episodes))})
    scores: dict[str, float] = {}
    for name, (src,) in ((n, s) for n, s in sources.items() if n.startswith(IMAGES)):
        mse = []
        for e in check:
            ref = store.read_episode(e, [src])[src]
            got = _decode_episode_video(lr, back, e, name, np.arange(len(ref)) / fps)
            mse.append(np.mean((ref.astype(np.float64) - got.astype(np.float64)) ** 2))
        m = float(np.mean(mse))
        scores[name] = float("inf") if m == 0 else float(10 * np.log10(255.0**2 / m))
    release_decoders()
    carried = {n: ", ".join(s) for n, s in sources.items()}
    carried["task"] = "episode task text"
    return ExportReport(out, repo_id, lr["version"], store.n_episodes, frames, fps, carried, not_carried, scores,
                        check if scores else [], time.perf_counter() - t0)


def _export_episode(store: DemoStore, e: int, ds: Any, features: dict[str, dict], sources: dict[str, list[str]]) -> int:
    info = store.episode_info(e)
    keys = [k for s in sources.values() for k in s if not k.startswith(("column ", "episode "))]
    data = store.read_episode(e, keys)
    n = len(data["action"])
    cols = {name: store.read_column(srcs[0].removeprefix("column "), e)[0]
            for name, srcs in sources.items() if srcs[0].startswith("column ")}
    per_step: dict[str, np.ndarray] = {}
    for name, ft in features.items():
        if name in cols:
            per_step[name] = np.asarray(cols[name], dtype=ft["dtype"]).reshape(n, 1)
        elif name == "next.success":
            per_step[name] = np.zeros((n, 1), bool)
            per_step[name][-1] = bool(info.success)
        elif name in (STATE, ENV_STATE):
            per_step[name] = np.concatenate([data[k].reshape(n, -1) for k in sources[name]], axis=1).astype(np.float32)
        elif ft["dtype"] == "video":
            per_step[name] = data[sources[name][0]]
        else:
            per_step[name] = data[sources[name][0]].reshape(n, *ft["shape"]).astype(ft["dtype"], copy=False)
    for t in range(n):
        frame = {name: v[t] for name, v in per_step.items()}
        frame["task"] = info.task
        ds.add_frame(frame)
    scalars_as_0d(ds)
    ds.save_episode()
    return n


# ---------------------------------------------------------------------------------------------- import
@dataclass
class ImportReport:
    src: Path
    out: Path
    episodes: int
    frames: int
    fps: int
    keys: dict[str, str]  # store key -> LeRobot feature it came from
    not_carried: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [f"{self.out}: imported {self.episodes} episodes, {self.frames} frames at {self.fps} fps "
                 f"from {self.src} in {self.seconds:.1f}s"]
        lines += [f"  {k} <- {v}" for k, v in self.keys.items()]
        lines += [f"  not carried: {x}" for x in self.not_carried]
        return "\n".join(lines)


def _resolve_source(src: str) -> tuple[Path, str]:
    path = Path(src).expanduser()
    if path.exists():
        return path, f"{path.parent.name or 'local'}/{path.name}"
    if re.fullmatch(r"[\w.-]+/[\w.-]+", src):
        home = Path(os.environ.get("HF_LEROBOT_HOME", Path(os.environ.get("HF_HOME", "~/.cache/huggingface")) / "lerobot"))
        cached = home.expanduser() / src
        if cached.exists():
            return cached, src
        raise InteropError(f"no LeRobot dataset {src!r} on disk (looked in {cached}); robolearn does not download: "
                           f"fetch it first, e.g. `hf download {src} --repo-type dataset --local-dir DIR`, and import DIR")
    raise InteropError(f"no dataset at {src}: give a LeRobot dataset directory or a repo id cached on disk")


def check_format(root: Path, repo_id: str) -> dict[str, Any]:
    """The dataset's info.json, or one clear line naming its format version and the conversion command."""
    info_path = root / "meta" / "info.json"
    if not info_path.is_file():
        if (root / "meta_data" / "info.json").is_file():
            raise InteropError(f"{root} is a LeRobot v1.x dataset; lerobot 0.4 cannot convert it: re-download it in "
                               f"format {LEROBOT_FORMAT} (most hub datasets have been converted)")
        raise InteropError(f"{root} is not a LeRobot dataset (no meta/info.json)")
    try:
        info = json.loads(info_path.read_text())
    except json.JSONDecodeError as e:
        raise InteropError(f"{info_path} is not valid JSON ({e})") from None
    version = str(info.get("codebase_version", "?"))
    convert = (f"python -m lerobot.datasets.v30.convert_dataset_v21_to_v30 --repo-id={repo_id} "
               f"--root={root.parent.parent} --push-to-hub=false")
    if version == "v2.1":
        raise InteropError(f"{root} is a LeRobot v2.1 dataset; robolearn reads {LEROBOT_FORMAT}: convert it with `{convert}`")
    if version == "v2.0":
        raise InteropError(f"{root} is a LeRobot v2.0 dataset; robolearn reads {LEROBOT_FORMAT}: convert it to v2.1 with "
                           f"lerobot 0.3's `python -m lerobot.datasets.v21.convert_dataset_v20_to_v21 --repo-id={repo_id}`, "
                           f"then `{convert}`")
    if version != LEROBOT_FORMAT:
        raise InteropError(f"{root} is a LeRobot {version} dataset; robolearn reads {LEROBOT_FORMAT} (lerobot 0.4)")
    return info


def _arrow_rows(tbl: Any) -> dict[str, np.ndarray]:
    """Columns of an Arrow table as NumPy arrays with the time axis first, dtypes as stored."""
    import pyarrow as pa

    out = {}
    for name in tbl.column_names:
        arr = tbl.column(name).combine_chunks()
        if isinstance(arr.type, pa.ExtensionType):  # datasets' Array2D/3D
            arr = arr.storage
        shape = []
        while pa.types.is_fixed_size_list(arr.type) or pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
            shape.append(len(arr.flatten()) // max(len(arr), 1))
            arr = arr.flatten()
        out[name] = arr.to_numpy(zero_copy_only=False).reshape(tbl.num_rows, *shape)
    return out


def _split_names(names: Any, width: int) -> list[tuple[str, slice]] | None:
    """``["eef.0", "eef.1", "q.0"]`` -> [("eef", 0:2), ("q", 2:3)]: the layout export writes; None otherwise."""
    if not isinstance(names, list) or len(names) != width:
        return None
    parts: list[tuple[str, slice]] = []
    for i, n in enumerate(names):
        m = re.fullmatch(r"(.+)\.(\d+)", str(n))
        if not m:
            return None
        key, idx = m.group(1), int(m.group(2))
        if parts and parts[-1][0] == key and idx == parts[-1][1].stop - parts[-1][1].start:
            parts[-1] = (key, slice(parts[-1][1].start, i + 1))
        elif idx == 0 and all(p[0] != key for p in parts):
            parts.append((key, slice(i, i + 1)))
        else:
            return None
    return parts


def _plan_import(features: dict[str, dict]) -> tuple[dict[str, tuple[str, Any]], list[str]]:
    """feature -> (how, detail): how in lowdim | split | video | image | depth | column | success | skip."""
    plan: dict[str, tuple[str, Any]] = {}
    not_carried: list[str] = []
    for name, ft in features.items():
        if name in LEROBOT_INTERNAL:
            continue
        shape = tuple(ft.get("shape") or ())
        if ft["dtype"] in ("video", "image"):
            cam = name.removeprefix(IMAGES).removeprefix("observation.").replace("/", "_")
            plan[name] = (ft["dtype"], cam)
        elif name.startswith(DEPTH) and ft["dtype"] == "uint16" and len(shape) == 2:
            plan[name] = ("depth", name.removeprefix(DEPTH))
        elif name == "next.reward":
            plan[name] = ("column", "reward")
        elif name.startswith("complementary_info."):
            plan[name] = ("column", name.removeprefix("complementary_info."))
        elif name == "next.success":
            plan[name] = ("success", None)
        elif name == "next.done":
            not_carried.append("next.done (the store's episode ends say the same)")
        elif ft["dtype"] in ("string", "str"):
            not_carried.append(f"{name} (text per frame)")
        else:
            split = _split_names(ft.get("names"), shape[0]) if name != "action" and len(shape) == 1 else None
            plan[name] = ("split", split) if split else ("lowdim", name.removeprefix("observation."))
    if "action" not in plan:
        raise InteropError("the dataset has no 'action' feature; the store needs one to train on")
    return plan, not_carried


def import_lerobot(src: str | os.PathLike, out: str | os.PathLike, source: str = "teleop",
                   progress: Callable[[int, int], None] | None = None) -> ImportReport:
    """Copy a LeRobot v3.0 dataset (directory, or repo id in lerobot's local cache) into a new store.

    Episode boundaries, timestamps (as both store clocks), task strings, cameras (decoded by lerobot's own
    decoder), low-dim features, rewards and other per-step columns are kept; each episode is committed
    atomically, so an interrupted import leaves a valid store of the episodes done."""
    t0 = time.perf_counter()
    root, repo_id = _resolve_source(str(src))
    check_format(root, repo_id)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InteropError(f"{out} already exists; import into a new --out")
    lr = lerobot_modules()
    ds = lr["LeRobotDataset"](repo_id, root=root)
    feats = ds.meta.features
    plan, not_carried = _plan_import(feats)
    numeric = [n for n, (how, _) in plan.items() if how not in ("video", "image")]
    # Arrow, not datasets' numpy format: that one turns float64 into float32.
    table = ds.hf_dataset.with_format("arrow", columns=[*numeric, "timestamp", "episode_index", "task_index"])
    tasks = ds.meta.tasks
    task_of = {int(row.task_index): str(idx) for idx, row in tasks.iterrows()} if len(tasks) else {}
    keys: dict[str, str] = {}
    frames = 0
    store = DemoStore.open(out, mode="a")
    try:
        for e in range(ds.num_episodes):
            ep = ds.meta.episodes[e]
            a, b = int(ep["dataset_from_index"]), int(ep["dataset_to_index"])
            rows = _arrow_rows(table[a:b])
            if not np.all(rows["episode_index"] == e):
                raise InteropError(f"{root}: rows {a}:{b} of episode {e} belong to other episodes; the dataset is inconsistent")
            ts = np.asarray(rows["timestamp"], np.float64).reshape(-1)
            control: dict[str, tuple[np.ndarray, KeySpec]] = {}
            cameras: dict[str, dict[str, tuple[np.ndarray, KeySpec]]] = {}
            columns: dict[str, np.ndarray] = {}
            success = False
            for name, (how, detail) in plan.items():
                if how in ("video", "image"):
                    if how == "video":
                        img = _decode_episode_video(lr, ds, e, name, ts)
                    else:
                        img = np.stack([np.asarray(x.convert("RGB")) for x in ds.hf_dataset.with_format(None)[a:b][name]])
                    key = detail if detail.endswith("image") else f"{detail}_image"
                    cameras.setdefault(detail, {})[key] = (img, KeySpec(img.shape[1:], "uint8", "rgb"))
                    keys[f"{detail}/{key}"] = name
                    continue
                v = np.asarray(rows[name])
                if how == "split":
                    for key, sl in detail:
                        control[key] = (v[:, sl], KeySpec((sl.stop - sl.start,), "float32"))
                        keys[key] = f"{name}[{sl.start}:{sl.stop}]"
                elif how == "lowdim":
                    shape = tuple(feats[name]["shape"])
                    control[detail] = (v.reshape(len(ts), *shape), KeySpec(shape, feats[name]["dtype"]))
                    keys[detail] = name
                elif how == "depth":
                    scale = float((feats[name].get("info") or {}).get("depth_scale") or 0.001)
                    spec = KeySpec(tuple(feats[name]["shape"]), "uint16", "depth", depth_scale=scale)
                    cameras.setdefault(detail, {})[f"{detail}_depth"] = (v.astype(np.uint16), spec)
                    keys[f"{detail}/{detail}_depth"] = name
                elif how == "column":
                    columns[detail] = v.reshape(-1)
                    keys[f"column {detail}"] = name
                elif how == "success":
                    success = bool(v.any())
            task_ids = sorted({int(t) for t in np.asarray(rows["task_index"]).reshape(-1)})
            texts = [task_of.get(t, "") for t in task_ids]
            notes: dict[str, Any] = {"lerobot": {"repo_id": repo_id, "episode_index": e}}
            if len(texts) > 1:
                notes["lerobot"]["tasks"] = texts
            info = EpisodeInfo(task=texts[0] if texts else "", success=success, source=source,
                               rig=ds.meta.robot_type or "", fps=float(ds.fps), notes=notes)
            _write_episode(store, ts, control, cameras, columns, info, repo_id)
            frames += len(ts)
            if progress:
                progress(e + 1, ds.num_episodes)
    finally:
        store.close()
        release_decoders()
    return ImportReport(root, out, ds.num_episodes, frames, int(ds.fps), keys, not_carried, time.perf_counter() - t0)


def _write_episode(store: DemoStore, ts: np.ndarray, control: dict[str, tuple[np.ndarray, KeySpec]],
                   cameras: dict[str, dict[str, tuple[np.ndarray, KeySpec]]], columns: dict[str, np.ndarray],
                   info: EpisodeInfo, repo_id: str) -> None:
    # Streams are declared with the dataset's own dtypes: inference would turn float64 into float32.
    store.declare_stream(CONTROL_STREAM, {k: spec for k, (_, spec) in control.items()})
    for cam, items in cameras.items():
        store.declare_stream(cam, {k: spec for k, (_, spec) in items.items()})
    with store.begin_episode() as w:
        w.extend(CONTROL_STREAM, ts, ts, **{k: v for k, (v, _) in control.items()})
        for cam, items in cameras.items():
            w.extend(cam, ts, ts, **{k: v for k, (v, _) in items.items()})
        for name, values in columns.items():
            w.set_column(name, values, {"source": "lerobot", "repo_id": repo_id},
                         dtype="float32" if values.dtype.kind == "f" else values.dtype.name)
        w.commit(info)
