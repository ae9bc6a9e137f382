"""A scripted operator that replays the actions of recorded episodes, tick by tick.

``replay:<store>`` drives any rig with the actions of the store's episodes in turn (attempt k
replays episode k mod n): it stands in for the sim expert on rigs where the expert cannot read
the simulator (the MuJoCo twin behind its process boundary) and repeats a demonstration on hardware.
"""

from __future__ import annotations

import numpy as np

from robolearn.errors import UserError
from robolearn.rigs.base import Observation, Rig
from robolearn.teleop.base import Teleoperator


class ReplayTeleop(Teleoperator):
    autostart = True

    def __init__(self, store: str) -> None:
        from robolearn.data.store import DemoStore

        self.name = f"replay:{store}"
        self.source = store
        with DemoStore.open(store) as s:
            if not s.n_episodes:
                raise UserError(f"teleoperator {self.name}: the store holds no episodes to replay")
            self.actions = [s.read("action", i) for i in range(s.n_episodes)]
        self._ep = -1
        self._step = 0

    def connect(self, rig: Rig) -> None:
        shape = tuple(rig.action_feature.shape)
        if self.actions[0].shape[1:] != shape:
            raise UserError(f"teleoperator {self.name} replays actions of shape {list(self.actions[0].shape[1:])}, "
                            f"rig {rig.name} takes {list(shape)}")

    def reset(self, seed: int | None = None) -> None:
        self._ep += 1
        self._step = 0

    @property
    def episode(self) -> int:
        return self._ep % len(self.actions)

    def act(self, observation: Observation) -> tuple[np.ndarray, bool]:
        del observation
        acts = self.actions[self.episode]
        a = acts[min(self._step, len(acts) - 1)]
        self._step += 1
        return np.asarray(a, np.float32), False

    @property
    def done(self) -> bool:
        return self._ep >= 0 and self._step >= len(self.actions[self.episode])
