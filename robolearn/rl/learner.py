"""On-robot residual RL, the learner: ``robolearn learner`` (the actor is :mod:`robolearn.rl.robot`).

The actor runs the deployment loop on the robot with the residual's correction and sends every
executed tick here as it happens. This process (on the robot computer or another host, e.g. one with
a GPU) holds the replay, trains the residual with the same :class:`ResidualLearner` as in
simulation (TD3/SAC, critic ensemble, n-step returns, RLPD mixing) and hands the actor new weights.

Ticks are held per episode until the actor ends it: only then are the n-step returns known exactly
(success marked by the operator at the end, a failure mark is terminal, a time limit or a crash
bootstraps from the last state) and a discarded episode teaches nothing. Ticks a teleoperator drove
(interventions) go into the online replay *and* the demonstration side of every batch, next to the
demonstrations the base was trained on.

Protocol: ZeroMQ ROUTER here, DEALER on the actor, the policy server's wire format (a JSON header and
raw arrays, no pickle):

- ``hello`` {protocol, base_sha256, keys, obs_dim, action_dim} -> ``ok`` {actor, algo, explore_noise, explore_std,
  explore_corr, version} or ``error`` (another base, another observation layout);
- ``rows`` {uid, first_tick} + per-tick arrays ``obs/<key>``, ``base``, ``action``, ``reward``,
  ``intervention`` -> ``ack`` {version} (ticks it has already are ignored: a resend is harmless);
- ``end`` {uid, success, terminal, discard} -> ``ack``; ``weights`` {have} -> ``weights`` + the actor's
  tensors when newer, else ``ack``; ``stats`` -> ``stats``; ``save`` -> ``ack`` once saved.

Run directory: ``recipe.yaml`` (base path and hash), ``state.pt`` + ``replay.npz`` +
``interventions.npz`` (resumable), ``checkpoints/last`` (``robolearn eval --policy RUN`` runs it),
``tb/``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from robolearn.errors import UserError

PROTOCOL = 1
PUBLISH_EVERY = 20  # updates between weight versions


class RobotLearner:
    """Replay, updates and weights for the on-robot actor; ``serve`` puts it on a socket."""

    def __init__(self, policy: str | os.PathLike, out: str | os.PathLike, recipe: str | os.PathLike = "residual_td3",
                 overrides: Sequence[str] = ()) -> None:
        from torch.utils.tensorboard import SummaryWriter

        from robolearn.eval.runner import resolve_checkpoint
        from robolearn.policies.checkpoint import load_policy, read_checkpoint_meta
        from robolearn.rl.replay import ReplayBuffer, demo_transitions, policy_obs_dim
        from robolearn.rl.residual import base_hash, lowdim_keys
        from robolearn.rl.residual_td3 import ResidualLearner, load_finetune_recipe

        self.cfg = cfg = load_finetune_recipe(recipe, overrides)
        self.base_ckpt = resolve_checkpoint(policy)
        self.base = load_policy(self.base_ckpt).eval()
        self.keys = lowdim_keys(self.base)
        self.obs_dim, self.adim = policy_obs_dim(self.base, self.keys), self.base.action_dim
        self.base_sha256 = base_hash(self.base_ckpt)
        self.out = Path(out)
        info = {"base": str(Path(self.base_ckpt).resolve()), "base_sha256": self.base_sha256, "rig": "robot",
                "recipe": asdict(cfg)}
        if (self.out / "state.pt").is_file():
            prev = yaml.safe_load((self.out / "recipe.yaml").read_text())
            if prev.get("base_sha256") != self.base_sha256:
                raise UserError(f"{self.out} fine-tunes another base; choose a new --out")
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "recipe.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(info)), sort_keys=False))

        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.learner = ResidualLearner(cfg, self.obs_dim, self.adim)
        self.online = ReplayBuffer(cfg.buffer, self.obs_dim, self.adim)
        self.interventions = ReplayBuffer(cfg.buffer, self.obs_dim, self.adim)
        self.store_demos = None
        store = cfg.demos.store
        if store == "auto":
            store = (read_checkpoint_meta(self.base_ckpt).get("extra") or {}).get("data", "")
        if cfg.demos.ratio > 0 and store and Path(store).exists():
            self.store_demos = demo_transitions(self.base, self.keys, store, cfg.n_step, cfg.gamma,
                                                self.learner.scale.numpy(), cfg.demos.episodes)
        self.st: dict[str, Any] = {"env_steps": 0, "updates": 0, "episodes": 0, "successes": 0, "interventions": 0,
                                   "discarded": 0, "version": 0, "ended": [], "logs": {}}
        if (self.out / "state.pt").is_file():
            s = torch.load(self.out / "state.pt", map_location="cpu", weights_only=False)
            self.learner.load_state_dict(s["learner"])
            self.st.update(s["progress"])
            self.rng.bit_generator.state = s["np_rng"]
            for name, buf in (("replay", self.online), ("interventions", self.interventions)):
                if (self.out / f"{name}.npz").is_file():
                    buf.load(self.out / f"{name}.npz")
        self.open: dict[str, dict[str, list[np.ndarray]]] = {}  # uid -> this episode's ticks so far
        self.writer = SummaryWriter(str(self.out / "tb"))

    # ------------------------------------------------------------------ the actor's messages
    def hello(self, h: dict[str, Any]) -> dict[str, Any]:
        if h.get("protocol") != PROTOCOL:
            return {"type": "error", "message": f"the learner speaks protocol {PROTOCOL}, the actor "
                                                f"{h.get('protocol')}: run the same robolearn version on both hosts"}
        if h.get("base_sha256") != self.base_sha256:
            return {"type": "error", "message": f"the learner fine-tunes base {self.base_ckpt} (SHA-256 "
                                                f"{self.base_sha256[:12]}), the actor runs another "
                                                f"({str(h.get('base_sha256'))[:12]}): start both with the same --policy"}
        if list(h.get("keys", [])) != self.keys or h.get("action_dim") != self.adim:
            return {"type": "error", "message": f"the learner's residual reads {self.keys} with {self.adim}-d actions, "
                                                f"the actor sends {h.get('keys')} with {h.get('action_dim')}-d"}
        return {"type": "ok", "actor": asdict(self.learner.actor.cfg), "algo": self.cfg.algo,
                "explore_noise": self.cfg.explore_noise, "explore_std": self.learner.explore_std.tolist(),
                "explore_corr": self.cfg.explore_corr, "version": self.st["version"], "protocol": PROTOCOL}

    def add_rows(self, uid: str, first_tick: int, arrays: dict[str, np.ndarray]) -> None:
        if uid in self.st["ended"]:
            return
        ep = self.open.setdefault(uid, {})
        have = len(ep.get("reward", []))
        n = len(arrays["reward"])
        skip = max(0, have - first_tick)  # ticks already here (a resend after a reconnect or a recovery)
        if first_tick > have:
            raise UserError(f"episode {uid}: ticks {have}..{first_tick - 1} never arrived")
        for k, v in arrays.items():
            ep.setdefault(k, []).extend(np.asarray(v)[skip:n])

    def end(self, uid: str, success: bool, terminal: bool, discard: bool) -> None:
        """The episode is over: its n-step transitions into replay (none when discarded)."""
        from robolearn.rl.replay import NStepCollector
        from robolearn.rl.residual import normalize_action, obs_features

        ep = self.open.pop(uid, None)
        if uid in self.st["ended"]:
            return
        self.st["ended"] = (self.st["ended"] + [uid])[-10000:]
        if discard or not ep or not ep.get("reward"):
            self.st["discarded"] += int(bool(discard))
            return
        n = len(ep["reward"])
        rows = [{k: ep[f"obs/{k}"][t] for k in self.keys} for t in range(n)]
        with torch.no_grad():
            f = obs_features(self.base, self.keys, rows).numpy()
            bn = normalize_action(self.base, np.stack(ep["base"])).numpy()
            an = normalize_action(self.base, np.stack(ep["action"])).numpy()
        scale = self.learner.scale.numpy()
        res = np.clip(an - bn, -scale, scale)  # what was executed beyond the base (a teleoperator: clipped)
        reward = np.asarray(ep["reward"], np.float32).copy()
        if success and not reward.any():
            reward[-1] = 1.0  # marked by the operator
        hit = np.flatnonzero(reward > 0)
        if len(hit):  # the episode ends at its first success, as in simulation
            n = int(hit[0]) + 1
            terminal = True
        interv = np.asarray(ep["intervention"], bool)
        out: list[dict[str, np.ndarray]] = []
        col = NStepCollector(1, self.cfg.n_step, self.cfg.gamma, out.append)
        zero_f, zero_b = np.zeros(self.obs_dim, np.float32), np.zeros(self.adim, np.float32)
        for t in range(n):
            last = t == n - 1
            if last:  # a terminal state bootstraps nothing; a cut episode from its last state
                nf, nb = (zero_f, zero_b) if terminal else (f[t], bn[t])
            else:
                nf, nb = f[t + 1], bn[t + 1]
            col.add(0, f[t], bn[t], res[t], float(reward[t]), nf, nb, terminal=last and terminal, end=last)
        for t, tr in enumerate(out):  # emitted in tick order
            self.online.add(tr)
            if interv[t]:
                self.interventions.add(tr)
        self.st["env_steps"] += n
        self.st["episodes"] += 1
        self.st["successes"] += int(bool(success or len(hit)))
        self.st["interventions"] += int(interv[:n].sum())
        es = self.st["env_steps"]
        self.writer.add_scalar("robot/success", float(bool(success or len(hit))), es)
        self.writer.add_scalar("robot/intervention_share", float(interv[:n].mean()), es)
        self.writer.add_scalar("robot/residual_abs", float(np.abs(res[:n][~interv[:n]]).mean()) if (~interv[:n]).any()
                               else 0.0, es)

    # ------------------------------------------------------------------ training
    def due(self) -> bool:
        """Updates are owed: ``utd`` per env step received, once ``learning_starts`` transitions are in."""
        cfg = self.cfg
        return len(self.online) >= cfg.learning_starts and self.st["updates"] < cfg.utd * self.st["env_steps"]

    def _demos(self) -> Any:
        """The demonstration side of a batch: the base's demonstrations and the interventions."""
        from robolearn.rl.replay import ReplayBuffer

        parts = [b for b in (self.store_demos, self.interventions) if b is not None and len(b)]
        if len(parts) < 2:
            return parts[0] if parts else None
        if getattr(self, "_demo_cache", (None, -1))[1] != len(self.interventions):
            both = ReplayBuffer(sum(len(p) for p in parts), self.obs_dim, self.adim)
            for p in parts:
                for k, v in p.data.items():
                    both.data[k][both.size: both.size + len(p)] = v[: len(p)]
                both.size += len(p)
            self._demo_cache = (both, len(self.interventions))
        return self._demo_cache[0]

    def update_once(self) -> None:
        from robolearn.rl.replay import sample_mixed

        cfg, st = self.cfg, self.st
        st["updates"] += 1
        train_actor = st["env_steps"] >= cfg.critic_warmup and st["updates"] % cfg.policy_delay == 0
        batch = sample_mixed(self.online, self._demos(), cfg.batch_size, cfg.demos.ratio, self.rng)
        st["logs"] = self.learner.update(batch, train_actor)
        if st["updates"] % PUBLISH_EVERY == 0:
            st["version"] += 1
        if st["updates"] % cfg.log_every == 0:
            for k, v in st["logs"].items():
                self.writer.add_scalar(f"train/{k}", v, st["env_steps"])

    def weights(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy() for k, v in self.learner.actor.state_dict().items()}

    def stats(self) -> dict[str, Any]:
        keys = ("env_steps", "updates", "episodes", "successes", "interventions", "discarded", "version")
        return {k: self.st[k] for k in keys} | {"replay": len(self.online), "intervention_replay": len(self.interventions),
                                                "demo_replay": len(self.store_demos) if self.store_demos else 0,
                                                "open_episodes": len(self.open)}

    def save(self) -> None:
        from robolearn.rl.residual import ResidualPolicy

        ResidualPolicy(self.base, self.learner.deployed, str(self.base_ckpt), self.keys).save(
            self.out / "checkpoints" / "last", extra={"env_steps": self.st["env_steps"], "algo": self.cfg.algo,
                                                      "rig": "robot"})
        self.online.save(self.out / "replay.npz")
        self.interventions.save(self.out / "interventions.npz")
        tmp = self.out / "state.tmp"
        torch.save({"learner": self.learner.state_dict(), "progress": self.st, "np_rng": self.rng.bit_generator.state},
                   tmp)
        os.replace(tmp, self.out / "state.pt")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


# ---------------------------------------------------------------------- the socket


def serve_learner(learner: RobotLearner, endpoint: str, ready: Callable[[], None] | None = None,
                  stop: Any = None, log: Callable[[str], None] | None = None) -> None:
    """Answer the actor on ``endpoint`` and train between messages, until SIGTERM/SIGINT or ``stop`` (an
    Event) is set; the state is saved at every episode's end and on the way out."""
    from robolearn.deploy.inference import InferenceError, import_zmq, pack, unpack

    zmq = import_zmq()
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as e:
        raise UserError(f"learner: cannot listen on {endpoint}: {e}") from None

    def on_term(*_: Any) -> None:
        raise KeyboardInterrupt

    main = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGTERM, on_term) if main else None  # SIGTERM saves, as Ctrl-C does
    if ready is not None:
        ready()
    try:
        while stop is None or not stop.is_set():
            busy = learner.due()
            if not sock.poll(0 if busy else 100):
                if busy:
                    learner.update_once()
                continue
            frames = sock.recv_multipart()
            ident, body = frames[0], frames[1:]
            arrays: dict[str, np.ndarray] = {}
            try:
                header, arrays = unpack(body)
                kind = header.get("type")
                if kind == "hello":
                    reply, out = learner.hello(header), {}
                elif kind == "rows":
                    learner.add_rows(str(header["uid"]), int(header["first_tick"]), arrays)
                    reply, out = {"type": "ack", "version": learner.st["version"]}, {}
                elif kind == "end":
                    learner.end(str(header["uid"]), bool(header["success"]), bool(header["terminal"]),
                                bool(header["discard"]))
                    learner.save()
                    reply, out = {"type": "ack", "version": learner.st["version"]}, {}
                elif kind == "weights":
                    if int(header.get("have", -1)) < learner.st["version"]:
                        reply, out = {"type": "weights", "version": learner.st["version"]}, learner.weights()
                    else:
                        reply, out = {"type": "ack", "version": learner.st["version"]}, {}
                elif kind == "stats":
                    reply, out = {"type": "stats", **learner.stats()}, {}
                elif kind == "save":
                    learner.save()
                    reply, out = {"type": "ack", "version": learner.st["version"]}, {}
                else:
                    reply, out = {"type": "error", "message": f"unknown request {kind!r}"}, {}
            except (InferenceError, UserError, KeyError, ValueError) as e:
                reply, out = {"type": "error", "message": str(e)}, {}
            sock.send_multipart([ident, *pack(reply, out)])
    except KeyboardInterrupt:
        log("robolearn learner: stopping; state saved")
    finally:
        learner.save()
        learner.close()
        sock.close(0)
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def run_learner(policy: str, out: str, endpoint: str, recipe: str = "residual_td3",
                overrides: Sequence[str] = ()) -> None:
    """``robolearn learner``: build the learner, print the line the actor waits for, serve."""
    learner = RobotLearner(policy, out, recipe, overrides)
    t0 = time.time()

    def ready() -> None:
        print(f"robolearn learner: listening on {endpoint} ({learner.stats()['replay']} transitions in replay, "
              f"ready in {time.time() - t0:.1f} s)", flush=True)

    serve_learner(learner, endpoint, ready=ready)
