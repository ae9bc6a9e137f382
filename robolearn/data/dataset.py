"""Training windows from a demonstration store as torch batches.

Ties the pieces together: the sampler says which control rows make a window, ``align`` maps them to
frames of each camera stream, ``FrameReader`` fetches frames from disk (or RAM with
``in_memory=True``), and the result is one batch dict::

    {"obs": {key: (B, n_obs_steps, ...)}, "action": (B, horizon, A), "episode": (B,)}

Low-dim values come back raw (float32); policies normalise with the statistics that travel in their
checkpoints (``dataset.normalizer()``). Images come back uint8 (B, T, C, H, W): a quarter of the bytes
of float32 to pass between worker processes and to the GPU; policies scale them to [0, 1] on their
device. Depth comes back as float32 metres with a channel axis.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robolearn.data.align import align_to_reference
from robolearn.data.frames import FrameReader
from robolearn.data.normalizer import Normalizer, store_stats
from robolearn.data.sampler import WindowSampler, split_episodes
from robolearn.data.schema import CONTROL_STREAM, SchemaError
from robolearn.data.store import DemoStore
from robolearn.data.tensors import to_tensor
from robolearn.errors import UserError


class WindowDataset(torch.utils.data.Dataset):
    def __init__(
        self,
        store: str | os.PathLike | DemoStore,
        obs_keys: Sequence[str],
        action_key: str = "action",
        n_obs_steps: int = 2,
        horizon: int = 16,
        n_action_steps: int = 8,
        split: str = "train",
        val_ratio: float = 0.1,
        seed: int = 0,
        in_memory: bool = False,
        align_method: str = "latest",
        frame_cache_mb: int = 1024,
    ) -> None:
        self.store = store if isinstance(store, DemoStore) else DemoStore.open(store)
        self.path = Path(self.store.path)
        if n_obs_steps > horizon:
            raise UserError(f"n_obs_steps ({n_obs_steps}) cannot exceed horizon ({horizon})")
        if n_action_steps < 1 or n_obs_steps - 1 + n_action_steps > horizon:
            raise UserError(f"need n_obs_steps - 1 + n_action_steps <= horizon, got {n_obs_steps}, {n_action_steps}, {horizon}")
        if split not in ("train", "val", "all"):
            raise UserError(f"split must be train, val or all, got {split!r}")
        keys = self.store.keys
        for k in (*obs_keys, action_key):
            if k not in keys:
                raise SchemaError(f"no key {k!r} in {self.path}; keys: {', '.join(sorted(keys))}")
        if keys[action_key][0] != CONTROL_STREAM:
            raise SchemaError(f"action key {action_key!r} must live in the control stream")
        self.obs_keys, self.action_key = list(obs_keys), action_key
        self.n_obs_steps, self.horizon = n_obs_steps, horizon
        self.n_episodes = self.store.n_episodes  # a snapshot: episodes committed later are not seen
        if self.n_episodes == 0:
            raise SchemaError(f"{self.path} has no episodes")
        train, val = split_episodes(self.n_episodes, val_ratio, seed)
        mask = {"train": train, "val": val, "all": np.ones(self.n_episodes, bool)}[split]
        ends = self.store.ends(CONTROL_STREAM)
        self.sampler = WindowSampler(ends, horizon, pad_before=n_obs_steps - 1, pad_after=n_action_steps - 1,
                                     episode_mask=mask)
        self._episode_of_row = np.repeat(np.arange(len(ends)), np.diff(ends, prepend=0))
        n_ctrl = int(ends[-1])

        self.lowdim: dict[str, np.ndarray] = {}
        self.frame_rows: dict[str, np.ndarray] = {}  # control row -> frame row, per image key
        self.specs = {k: keys[k][1] for k in (*obs_keys, action_key)}
        for k in (*obs_keys, action_key):
            stream, spec = keys[k]
            if spec.kind == "lowdim":
                if stream != CONTROL_STREAM:
                    raise SchemaError(f"low-dim key {k!r} lives in stream {stream!r}; only control keys are supported")
                self.lowdim[k] = np.asarray(self.store.array(k)[:n_ctrl], dtype=np.float32)
            else:
                self.frame_rows[k] = self._align_stream(stream, align_method)
        self._in_memory = in_memory
        self._frames: dict[str, np.ndarray] = {}
        self._readers: dict[str, FrameReader] | None = None
        # Decoded-frame cache per process: training revisits every frame each epoch, and decoding
        # (~30 us a frame) costs ten times more than copying one. Keys whose frames fit the budget
        # are cached densely; np.empty costs no memory until frames are actually decoded into it.
        self.frame_cache_mb = 0 if in_memory else frame_cache_mb
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if in_memory:
            for k in self.frame_rows:
                stream = keys[k][0]
                self._frames[k] = self.store.array(k)[: self.store.committed_rows(stream)]

    def _align_stream(self, stream: str, method: str) -> np.ndarray:
        rows = []
        ref_all = self.store.stream_array(CONTROL_STREAM, "t_host")[: self.store.committed_rows(CONTROL_STREAM)]
        src_all = self.store.stream_array(stream, "t_host")[: self.store.committed_rows(stream)]
        for e in range(self.n_episodes):
            ra, rb = self.store.episode_range(CONTROL_STREAM, e)
            sa, sb = self.store.episode_range(stream, e)
            if rb == ra:
                continue
            if sb == sa:
                raise SchemaError(f"episode {e}: stream {stream!r} has no frames; drop the episode or the key")
            rows.append(sa + align_to_reference(ref_all[ra:rb], src_all[sa:sb], method))
        return np.concatenate(rows) if rows else np.zeros(0, np.int64)

    # torch pickles datasets into spawned workers: zarr handles and readers are rebuilt there
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_readers"] = None
        state["_cache"] = {}  # each worker fills its own
        state["store"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.store = DemoStore.open(self.path)

    def _reader(self, key: str) -> FrameReader:
        if self._readers is None:
            self._readers = {}
        if key not in self._readers:
            stream = self.store.stream_of(key)
            # Rows up to this dataset's snapshot are committed, whatever the writer does later.
            committed = int(self.store.ends(stream)[self.n_episodes - 1])
            self._readers[key] = FrameReader(self.store.array(key), committed)
        return self._readers[key]

    def _read_frames(self, key: str, rows: np.ndarray) -> np.ndarray:
        reader = self._reader(key)
        cache = self._cache.get(key)
        if cache is None:
            frame_bytes = int(np.prod(self.specs[key].shape)) * np.dtype(self.specs[key].dtype).itemsize
            used = sum(c[0].nbytes for c in self._cache.values())
            if used + reader.committed_rows * frame_bytes > self.frame_cache_mb * 2**20:
                return reader.read(rows)
            cache = self._cache[key] = (np.empty((reader.committed_rows, *self.specs[key].shape), self.specs[key].dtype),
                                        np.zeros(reader.committed_rows, dtype=bool))
        frames, filled = cache
        missing = np.unique(rows[~filled[rows]])
        if len(missing):
            frames[missing] = reader.read(missing)
            filled[missing] = True
        return frames[rows]

    def __len__(self) -> int:
        return len(self.sampler)

    def __getitem__(self, i: int) -> dict[str, Any]:
        batch = self.__getitems__([i])
        return {
            "obs": {k: v[0] for k, v in batch["obs"].items()},
            "action": batch["action"][0],
            "episode": batch["episode"][0],
        }

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:
        rows = self.sampler.rows(np.asarray(indices, dtype=np.int64))  # (B, horizon)
        obs_rows = rows[:, : self.n_obs_steps]
        obs: dict[str, torch.Tensor] = {}
        for k in self.obs_keys:
            if k in self.lowdim:
                obs[k] = to_tensor(self.specs[k], self.lowdim[k][obs_rows], k)
                continue
            frames = self.frame_rows[k][obs_rows]
            flat = frames.reshape(-1)
            data = self._frames[k][flat] if self._in_memory else self._read_frames(k, flat)
            # The conversion the rollout's observation history uses too (robolearn.data.tensors).
            obs[k] = to_tensor(self.specs[k], data.reshape(*frames.shape, *self.specs[k].shape), k)
        action = torch.from_numpy(self.lowdim[self.action_key][rows])
        episode = torch.from_numpy(self._episode_of_row[rows[:, 0].clip(min=0)])
        return {"obs": obs, "action": action, "episode": episode}

    def normalizer(self, modes: dict[str, str] | str = "minmax") -> Normalizer:
        """Statistics of the low-dim obs keys and the action, from the store's cache."""
        keys = [k for k in (*self.obs_keys, self.action_key) if k in self.lowdim]
        return Normalizer(store_stats(self.store, keys), modes)


def _batched(x: Any) -> Any:
    # __getitems__ already returns a collated batch
    return x


def make_loader(
    dataset: WindowDataset,
    batch_size: int,
    shuffle: bool = True,
    num_workers: int = 0,
    seed: int = 0,
    drop_last: bool = True,
    persistent_workers: bool | None = None,
) -> torch.utils.data.DataLoader:
    """A DataLoader that fetches whole batches per call (one disk pass per batch, not per window)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        collate_fn=_batched,
        drop_last=drop_last,
        generator=gen,
        persistent_workers=bool(num_workers) if persistent_workers is None else persistent_workers,
        prefetch_factor=4 if num_workers else None,
    )
