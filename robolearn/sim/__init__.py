"""Simulated robosuite tasks behind a gymnasium-style env, with scripted experts for demonstrations.

Typical collection: roll the expert out in a camera-less env (``make_env(task)``; ``expert.reset(env)``
after every ``env.reset(seed=...)``, then ``env.step(expert.act(env, obs))`` until ``info["success"]`` or
``truncated``), saving ``env.get_state()`` per step; afterwards render the images with
``make_env(task, cameras=[...]).render_state(state)``, bit-identical to rendering them online.
"""

from robolearn.sim.env import LOWDIM_KEYS, Pose, Privileged, SimEnv, make_env
from robolearn.sim.experts import Expert, make_expert
from robolearn.sim.tasks import TaskConfig, list_tasks, load_task

__all__ = [
    "LOWDIM_KEYS",
    "Expert",
    "Pose",
    "Privileged",
    "SimEnv",
    "TaskConfig",
    "list_tasks",
    "load_task",
    "make_env",
    "make_expert",
]
