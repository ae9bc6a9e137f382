"""Training windows over episodes: which rows make up window i, and nothing else.

A window is ``horizon`` consecutive control ticks of one episode. As in diffusion_policy, windows
may start up to ``pad_before`` ticks before an episode and end up to ``pad_after`` ticks after it;
rows outside the episode repeat its first or last row. With ``pad_before = n_obs_steps - 1`` every
tick can be the current observation, and with ``pad_after = n_action_steps - 1`` the last ticks
still get full action chunks (repeating the final action, i.e. "hold still").
"""

from __future__ import annotations

import numpy as np

from robolearn.errors import UserError


def split_episodes(n_episodes: int, val_ratio: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Boolean train/validation masks over episodes; never splits an episode's windows."""
    if not 0.0 <= val_ratio < 1.0:
        raise UserError(f"val_ratio must be in [0, 1), got {val_ratio}")
    val = np.zeros(n_episodes, dtype=bool)
    n_val = int(round(n_episodes * val_ratio))
    if val_ratio > 0 and n_episodes > 1:
        n_val = min(max(n_val, 1), n_episodes - 1)  # at least one each side when asked for a split
        val[np.random.default_rng(seed).choice(n_episodes, size=n_val, replace=False)] = True
    return ~val, val


class WindowSampler:
    """Indexes fixed-length windows over episodes given by cumulative ``episode_ends``."""

    def __init__(
        self,
        episode_ends: np.ndarray,
        horizon: int,
        pad_before: int = 0,
        pad_after: int = 0,
        episode_mask: np.ndarray | None = None,
    ) -> None:
        if horizon < 1 or pad_before < 0 or pad_after < 0:
            raise ValueError("horizon must be >= 1 and paddings >= 0")
        if pad_before >= horizon or pad_after >= horizon:
            raise ValueError("paddings must be smaller than the horizon")
        ends = np.asarray(episode_ends, dtype=np.int64)
        starts = np.concatenate([[0], ends[:-1]])
        mask = np.ones(len(ends), dtype=bool) if episode_mask is None else np.asarray(episode_mask, dtype=bool)
        first, ep_start, ep_end = [], [], []
        for s, e, keep in zip(starts, ends, mask, strict=True):
            length = int(e - s)
            if not keep or length == 0:
                continue
            # window offsets relative to the episode start
            offs = np.arange(-pad_before, length - horizon + pad_after + 1, dtype=np.int64)
            first.append(s + offs)
            ep_start.append(np.full(len(offs), s, dtype=np.int64))
            ep_end.append(np.full(len(offs), e, dtype=np.int64))
        self.first, self.ep_start, self.ep_end = (
            np.concatenate(x) if x else np.zeros(0, np.int64) for x in (first, ep_start, ep_end)
        )
        self.horizon = horizon
        self._arange = np.arange(horizon, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.first)

    def rows(self, i: int | np.ndarray) -> np.ndarray:
        """Global row indices of window(s) ``i``: shape (horizon,) or (len(i), horizon)."""
        i = np.asarray(i)
        rows = self.first[i][..., None] + self._arange
        return np.clip(rows, self.ep_start[i][..., None], self.ep_end[i][..., None] - 1)
