"""Online residual RL on top of a frozen base policy, in simulation (and later on the robot).

- ``residual_td3.py``: the algorithm, one file top to bottom (TD3, or SAC with ``algo: sac``) and
  :func:`finetune`, what ``robolearn finetune`` runs;
- ``residual.py``: the residual actor, the critic ensemble, base + residual as one policy;
- ``replay.py``: n-step replay over several environments, demonstrations mixed in (RLPD);
- ``envs.py``: simulated rigs stepped in worker processes.
"""

from robolearn.rl.residual_td3 import FinetuneRecipe, finetune, load_finetune_recipe

__all__ = ["FinetuneRecipe", "finetune", "load_finetune_recipe"]
