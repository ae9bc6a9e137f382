import numpy as np
import pytest

from robolearn.data.sampler import WindowSampler, split_episodes


def test_padding_contract():
    ends = np.array([10, 13, 30])  # episodes of length 10, 3, 17
    horizon, n_obs, n_act = 8, 2, 4
    s = WindowSampler(ends, horizon, pad_before=n_obs - 1, pad_after=n_act - 1)
    lengths = np.diff(ends, prepend=0)
    # one window per start in [-pad_before, L - horizon + pad_after]; short episodes too
    assert len(s) == sum(max(0, L - horizon + n_obs - 1 + n_act - 1 + 1) for L in lengths)
    all_rows = s.rows(np.arange(len(s)))
    starts = np.concatenate([[0], ends[:-1]])
    for rows in all_rows:
        e = np.searchsorted(ends, rows[-1], side="right")
        assert np.all((rows >= starts[e]) & (rows < ends[e])), "a window crosses episodes"
        assert np.all(np.diff(rows) >= 0) and np.all(np.diff(rows) <= 1)
    # the first window of each episode: obs steps before the start repeat the first row
    first = all_rows[0]
    assert first[:n_obs].tolist() == [0, 0] and first[n_obs - 1] == 0
    # the last window of episode 0 ends with repeats of its last row (held final action)
    last_ep0 = all_rows[s.ep_end == 10][-1]
    assert last_ep0[-n_act:].tolist() == [9] * n_act
    # episode 0: current-observation ticks run from its first tick up to the one whose executed
    # chunk (n_act actions from the current tick) ends exactly on its last action
    current = all_rows[s.ep_end == 10][:, n_obs - 1]
    assert current.tolist() == list(range(0, 10 - n_act + 1))
    executed = all_rows[s.ep_end == 10][:, n_obs - 1: n_obs - 1 + n_act]
    assert executed.max() == 9 and set(executed.ravel().tolist()) == set(range(10))


def test_episode_mask_and_split():
    ends = np.cumsum([20] * 10)
    train, val = split_episodes(10, 0.2, seed=3)
    assert val.sum() == 2 and not np.any(train & val)
    s_val = WindowSampler(ends, 4, 1, 1, episode_mask=val)
    eps = {int(np.searchsorted(ends, r[0], side="right")) for r in s_val.rows(np.arange(len(s_val)))}
    assert eps == set(np.flatnonzero(val).tolist())
    assert split_episodes(10, 0.2, seed=3)[1].tolist() == val.tolist()  # deterministic
    assert split_episodes(1, 0.5)[1].sum() == 0


def test_bad_arguments():
    with pytest.raises(ValueError):
        WindowSampler(np.array([5]), 4, pad_before=4)
    with pytest.raises(ValueError):
        split_episodes(5, 1.0)
