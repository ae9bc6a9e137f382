"""On-robot residual RL, the actor: ``robolearn finetune --rig hardware/<rig>.yaml`` (the learner is
:mod:`robolearn.rl.learner`).

The robot runs the deployment loop (:mod:`robolearn.deploy`: asynchronous base inference, latency
compensation, operator keys, safety stops) with a :class:`ResidualShaper` between the schedule and
the arm. Every tick it either adds the residual's bounded correction to the base's action (with
exploration noise) or, when the teleoperator intervenes, executes the operator's action instead,
flagged. The rig's safety limits then clip whatever comes out, as for any policy.

Nothing collected is lost:

- every executed tick is appended to a journal file (``journal/<uid>.ticks``) before the next tick
  starts and sent to the learner at once;
- a finished episode is committed to the run's store (``rollouts.zarr``: ``source: policy``, columns
  ``reward``, ``intervention``, ``residual``) and its journal then removed;
- at start-up, journals left by a crash are committed to the store (``notes.recovered``) and re-sent
  to the learner, which ignores ticks it already has.

Episode boundaries, success marks and resets come from the operator (enter, y/n, r, space = e-stop)
on a real rig, and from the rig's own success check on the sim twin. The learner runs in a process of
its own on this machine, or anywhere with ``--learner tcp://HOST:PORT`` (``robolearn learner``); if it
goes away, the arm stops with one line.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robolearn.errors import UserError
from robolearn.features import CONTROL_STREAM, Feature

# ---------------------------------------------------------------------- the journal


class Journal:
    """An append-only file of one episode's executed ticks: a JSON header line, then one float64
    record per tick (every control value, both clocks, base and executed action, reward, intervention).
    A crash mid-write leaves at most a partial last record, which ``read`` drops."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path, self.header = path, header
        self.fields: list[tuple[str, tuple[int, ...]]] = [(k, tuple(v["shape"])) for k, v in header["fields"].items()]
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.write(self.fd, (json.dumps(header) + "\n").encode())
        self.ticks = 0

    def append(self, row: dict[str, Any]) -> None:
        rec = np.concatenate([np.asarray(row[k], np.float64).reshape(-1) for k, _ in self.fields])
        os.write(self.fd, rec.tobytes())  # in the kernel's hands now: a crash of this process loses nothing
        self.ticks += 1

    def close(self) -> None:
        if self.fd >= 0:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1

    @staticmethod
    def read(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        raw = path.read_bytes()
        nl = raw.index(b"\n")
        header = json.loads(raw[:nl])
        fields = [(k, tuple(v["shape"])) for k, v in header["fields"].items()]
        width = sum(int(np.prod(s, dtype=np.int64)) for _, s in fields)
        body = raw[nl + 1:]
        n = len(body) // (8 * width)
        recs = np.frombuffer(body[: n * 8 * width], np.float64).reshape(n, width)
        out, i = {}, 0
        for k, s in fields:
            w = int(np.prod(s, dtype=np.int64))
            out[k] = recs[:, i: i + w].reshape(n, *s)
            i += w
        return header, out


# ---------------------------------------------------------------------- the learner, seen from the robot


class LearnerGone(RuntimeError):
    pass


class LearnerClient:
    """The actor's side of the learner protocol: sends never block; replies are read by ``poll``; no reply
    ``timeout_s`` after a request means the learner went away (:class:`LearnerGone`)."""

    def __init__(self, endpoint: str, hello: dict[str, Any], timeout_s: float = 5.0,
                 connect_timeout_s: float = 30.0) -> None:
        from robolearn.deploy.inference import import_zmq, pack, unpack

        zmq = import_zmq()
        self._pack, self._unpack = pack, unpack
        self.endpoint, self.timeout_s = endpoint, float(timeout_s)
        self._sock = zmq.Context.instance().socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(endpoint)
        self._sent: deque[float] = deque()  # send times of requests not answered yet
        self.version = -1
        self.new_weights: dict[str, np.ndarray] | None = None
        self.last_stats: dict[str, Any] = {}
        self._sock.send_multipart(pack({"type": "hello", **hello}))
        if not self._sock.poll(int(connect_timeout_s * 1000)):
            self.close()
            raise UserError(f"learner {endpoint} did not answer in {connect_timeout_s:g} s: start it with "
                            f"`robolearn learner --policy RUN --out RUN2 --port P` (is the address right?)")
        header, _ = unpack(self._sock.recv_multipart())
        if header.get("type") != "ok":
            self.close()
            raise UserError(f"learner {endpoint} refused this actor: {header.get('message')}")
        self.info = header

    def _send(self, header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> None:
        self._sock.send_multipart(self._pack(header, arrays))
        self._sent.append(time.monotonic())

    def send_rows(self, uid: str, first_tick: int, arrays: dict[str, np.ndarray]) -> None:
        self._send({"type": "rows", "uid": uid, "first_tick": first_tick}, arrays)

    def send_end(self, uid: str, success: bool, terminal: bool, discard: bool) -> None:
        self._send({"type": "end", "uid": uid, "success": success, "terminal": terminal, "discard": discard})

    def ask_weights(self) -> None:
        self._send({"type": "weights", "have": self.version})

    def ask_stats(self) -> None:
        self._send({"type": "stats"})

    def poll(self, timeout: float = 0.0) -> None:
        """Read every reply that is in; raise :class:`LearnerGone` when one is overdue."""
        while self._sent and self._sock.poll(int(timeout * 1000)):
            header, arrays = self._unpack(self._sock.recv_multipart())
            self._sent.popleft()
            kind = header.get("type")
            if kind == "error":
                raise LearnerGone(f"learner {self.endpoint}: {header.get('message')}")
            if kind == "weights":
                self.new_weights = {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}
                self.version = int(header["version"])
            elif kind == "stats":
                self.last_stats = {k: v for k, v in header.items() if k != "type"}
            timeout = 0.0
        if self._sent and time.monotonic() - self._sent[0] > self.timeout_s:
            raise LearnerGone(f"learner {self.endpoint} gave no answer for {time.monotonic() - self._sent[0]:.1f} s "
                              f"(timeout {self.timeout_s:g} s): it went away or hangs")

    def drain(self, timeout_s: float | None = None) -> None:
        """Wait for every reply (between episodes)."""
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        while self._sent:
            self.poll(timeout=0.05)
            if self._sent and time.monotonic() > deadline:
                raise LearnerGone(f"learner {self.endpoint} gave no answer for {self.timeout_s:g} s: it went away "
                                  f"or hangs")

    def close(self) -> None:
        self._sock.close(0)


# ---------------------------------------------------------------------- the shaper in the deployment loop


class ResidualShaper:
    """Base + residual, or the teleoperator, every tick of :class:`~robolearn.deploy.loop.DeployLoop`;
    every executed tick journaled and sent to the learner."""

    def __init__(self, base: Any, keys: list[str], client: LearnerClient, journal_dir: Path, teleop: Any = None,
                 explore: bool = True, seed: int = 0, sync_every: int = 10) -> None:
        from robolearn.rl.residual import ActorConfig, ResidualActor
        from robolearn.rl.residual_td3 import ExploreNoise

        self.base, self.keys, self.client, self.journal_dir = base, keys, client, Path(journal_dir)
        self.teleop, self.explore, self.sync_every = teleop, explore, sync_every
        self.actor = ResidualActor(ActorConfig(**client.info["actor"])).eval()  # zero until weights arrive
        self.scale = self.actor.bound  # (action_dim,)
        self.noise = float(client.info.get("explore_noise", 0.0))
        # The exploration noise's std in normalised action units, per action dimension (or one for all).
        self.noise_std = torch.as_tensor(client.info.get("explore_std", self.noise * float(self.scale.max())),
                                         dtype=torch.float32)
        self.sac = client.info.get("algo") == "sac"
        self.gen = torch.Generator().manual_seed(seed)
        corr = float(client.info.get("explore_corr", 0.0))
        self.explorer = (ExploreNoise(1, self.actor.cfg.action_dim, self.noise_std, corr, seed=seed + 1)
                         if corr > 0 and not self.sac else None)
        self.versions_used: list[int] = []
        self.version = -1  # of the weights in self.actor; -1: the zero-initialised actor
        self.rig: Any = None
        self.journal: Journal | None = None
        self._cur: dict[str, Any] | None = None
        self.log: list[dict[str, Any]] = []  # per executed tick of the current episode (tests, columns)

    # -- lifecycle (deploy calls these)
    def connect(self, rig: Any) -> None:
        self.rig = rig
        self.control = {k: f for k, f in rig.features[CONTROL_STREAM].items()}
        missing = [k for k in self.keys if k not in self.control]
        if missing:
            raise UserError(f"rig {rig.name} does not observe {', '.join(missing)}, which the residual reads")
        if self.teleop is not None:
            self.teleop.connect(rig)

    def disconnect(self) -> None:
        if self.teleop is not None:
            self.teleop.disconnect()
        if self.journal is not None:
            self.journal.close()

    def _apply_weights(self) -> None:
        if self.client.new_weights is not None:
            self.actor.load_state_dict(self.client.new_weights)
            self.client.new_weights = None
            self.version = self.client.version

    def reset(self, seed: int | None) -> None:
        # Between episodes the arm waits anyway: start each one with the learner's newest weights.
        from robolearn.deploy.loop import DeployStop

        try:
            self.client.ask_weights()
            self.client.drain()
        except LearnerGone as e:
            raise DeployStop(f"{e}; arm stopped") from None
        self._apply_weights()
        if self.teleop is not None:
            self.teleop.reset(seed)
        if self.explorer is not None:
            self.explorer.reset(0)
        self.uid = uuid.uuid4().hex
        a = self.base.action_dim
        fields = {k: {"shape": list(f.shape), "dtype": f.dtype, "kind": f.kind} for k, f in self.control.items()}
        fields |= {"t_device": {"shape": []}, "t_host": {"shape": []}, "base": {"shape": [a]},
                   "action": {"shape": [a]}, "reward": {"shape": []}, "intervention": {"shape": []}}
        from robolearn.deploy.run import rollout_streams

        # What the store will hold, so that a recovered episode can be the store's first.
        chunk = self.base.horizon - self.base.n_obs_steps + 1
        streams = {s: {k: {"shape": list(f.shape), "dtype": f.dtype, "kind": f.kind} for k, f in keys.items()}
                   for s, keys in rollout_streams(self.rig, a, chunk).items()}
        self.journal = Journal(self.journal_dir / f"{self.uid}.ticks",
                               {"uid": self.uid, "seed": seed, "fields": fields, "rig": self.rig.spec(),
                                "started": time.time(), "keys": self.keys, "streams": streams,
                                "task": self.rig.task_text})
        self.tick = 0
        self.log = []
        self.versions_used.append(self.version)

    def act(self, step: int, obs: Any, proposed: np.ndarray | None) -> tuple[np.ndarray | None, bool]:
        from robolearn.deploy.loop import DeployStop
        from robolearn.rl.residual import apply_residual, normalize_action, obs_features

        try:
            self.client.poll()
        except LearnerGone as e:
            raise DeployStop(f"{e}; arm stopped") from None
        if step and step % self.sync_every == 0:
            self._apply_weights()
            self.client.ask_weights()
        sample = obs[CONTROL_STREAM]
        self._cur = None
        if self.teleop is not None:
            t_action, intervening = self.teleop.act(obs)
            if intervening:
                if proposed is None:  # no base action to measure the correction against: not a transition
                    return np.asarray(t_action, np.float32), True
                self._cur = {"sample": sample, "base": proposed, "res": None, "intervention": True}
                return np.asarray(t_action, np.float32), True
        if proposed is None:
            return None, False
        values = {k: sample.values[k] for k in self.keys}
        with torch.no_grad():
            f = obs_features(self.base, self.keys, values)
            bn = normalize_action(self.base, proposed[None])
            if self.explore and self.sac:
                res = self.actor.sample(f, bn)[0]
            else:
                res = self.actor(f, bn)
                if self.explore and self.explorer is not None:
                    res = res + self.explorer.sample()
                elif self.explore and self.noise > 0:
                    res = res + torch.randn(res.shape, generator=self.gen) * self.noise_std
            res = res.clamp(-self.scale, self.scale)
        self._cur = {"sample": sample, "base": proposed, "res": res[0].numpy(), "intervention": False}
        return apply_residual(self.base, proposed[None], res)[0], False

    def after(self, step: int, executed: np.ndarray | None, result: Any) -> None:
        cur, self._cur = self._cur, None
        if cur is None or executed is None or self.journal is None:
            self.log.append({"step": step, "transition": False})
            return
        sample = cur["sample"]
        row = {**{k: sample.values[k] for k in self.control}, "t_device": sample.t_device, "t_host": sample.t_host,
               "base": cur["base"], "action": executed, "reward": float(bool(result.success)),
               "intervention": float(cur["intervention"])}
        self.journal.append(row)
        arrays = {f"obs/{k}": np.asarray(sample.values[k], np.float32)[None] for k in self.keys}
        arrays |= {"base": np.asarray(cur["base"], np.float32)[None], "action": np.asarray(executed, np.float32)[None],
                   "reward": np.array([row["reward"]], np.float32),
                   "intervention": np.array([cur["intervention"]], bool)}
        self.client.send_rows(self.uid, self.tick, arrays)
        self.log.append({"step": step, "transition": True, "intervention": cur["intervention"], "res": cur["res"],
                         "base": cur["base"], "action": np.asarray(executed, np.float32), "version": self.version})
        self.tick += 1

    def end(self, dep: Any) -> None:
        """The episode is over (also after a safety stop): tell the learner, keep the journal until stored."""
        ep = dep.episode
        dep.info["rl_uid"] = self.uid
        dep.info["residual_versions"] = sorted({r["version"] for r in self.log if r.get("transition")})
        discard = bool(dep.info.get("discard"))
        success = bool(ep.success)
        # A success or the operator's failure mark ends the task; a time limit or a stop cuts it (bootstrap).
        terminal = success or dep.info.get("marked") is False
        if self.journal is not None:
            self.journal.close()
        self.client.send_end(self.uid, success, terminal, discard)
        try:
            self.client.drain()
        except LearnerGone:
            pass  # the journal keeps the episode; the next start re-sends it
        if discard and self.journal is not None:
            self.journal.path.unlink(missing_ok=True)
        self.journal = None

    def columns(self, dep: Any) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
        n = dep.episode.steps
        res = np.zeros(n, np.float32)
        for r in self.log:
            if r.get("res") is not None and r["step"] < n:
                res[r["step"]] = float(np.abs(r["res"]).max())
        return {"residual": (res, {"source": "residual", "unit": "max |correction|, normalised action units",
                                   "scale": self.actor.cfg.scale})}

    def recorded(self, dep: Any, index: int) -> None:
        (self.journal_dir / f"{dep.info['rl_uid']}.ticks").unlink(missing_ok=True)


# ---------------------------------------------------------------------- crash recovery


def recover_journals(journal_dir: Path, store_path: Path, client: LearnerClient, policy: str) -> list[int]:
    """Commit the episodes a crash left in ``journal_dir`` to the store and re-send them to the learner;
    returns their store indices."""
    from robolearn.data.schema import EpisodeInfo
    from robolearn.data.store import DemoStore

    paths = sorted(Path(journal_dir).glob("*.ticks")) if Path(journal_dir).is_dir() else []
    if not paths:
        return []
    done: list[int] = []
    with DemoStore.open(store_path, mode="a") as store:
        stored = {(store.episode_info(i).notes or {}).get("rl_uid") for i in range(store.n_episodes)}
        for p in paths:
            header, rows = Journal.read(p)
            uid, n = header["uid"], len(rows["reward"])
            keys = header["keys"]
            if n:
                arrays = {f"obs/{k}": rows[k].astype(np.float32) for k in keys}
                arrays |= {"base": rows["base"].astype(np.float32), "action": rows["action"].astype(np.float32),
                           "reward": rows["reward"].astype(np.float32), "intervention": rows["intervention"] > 0.5}
                client.send_rows(uid, 0, arrays)
            success = bool(n and rows["reward"].max() > 0)
            client.send_end(uid, success, success, False)
            client.drain()
            if uid not in stored and n:
                for stream, keys in header["streams"].items():
                    store.declare_stream(stream, {k: Feature(tuple(v["shape"]), v["dtype"], v["kind"])
                                                  for k, v in keys.items()})
                ctrl = {k: Feature(tuple(v["shape"]), v["dtype"], v["kind"]) for k, v in header["fields"].items()
                        if "kind" in v}
                with store.begin_episode() as w:
                    w.extend(CONTROL_STREAM, rows["t_device"], rows["t_host"], action=rows["action"].astype(np.float32),
                             **{k: rows[k].astype(ctrl[k].dtype) for k in ctrl})
                    w.set_column("reward", rows["reward"].astype(np.float32), provenance={"source": "journal"})
                    w.set_column("intervention", rows["intervention"].astype(np.float32),
                                 provenance={"source": "teleop"})
                    done.append(w.commit(EpisodeInfo(task=header.get("task", ""), success=success, source="policy", rig=header["rig"],
                                                     seed=header.get("seed"),
                                                     notes={"rl_uid": uid, "recovered": True, "policy": policy,
                                                            "ticks": n})))
            p.unlink()
    return done


# ---------------------------------------------------------------------- a learner on this machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_learner(policy: str, out: Path, recipe: str, overrides: Sequence[str],
                  timeout_s: float = 300.0) -> tuple[subprocess.Popen, str]:
    """``robolearn learner`` in a process of its own on loopback; returns it and its address once ready."""
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "learner.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "robolearn", "learner", "--policy", str(policy), "--out", str(out),
                             "--bind", endpoint, "--recipe", str(recipe), *overrides],
                            stdout=subprocess.PIPE, stderr=log, env={**os.environ, "OMP_NUM_THREADS": "1"})
    log.close()
    deadline = time.monotonic() + timeout_s
    line = b""
    while b"listening on" not in line:
        line = proc.stdout.readline() if proc.stdout else b""
        if (not line and proc.poll() is not None) or time.monotonic() > deadline:
            proc.kill()
            tail = (out / "learner.log").read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise UserError(f"the learner did not start: {tail[0]} (log: {out / 'learner.log'})")
    return proc, endpoint


def stop_learner(proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    """SIGTERM: the learner saves its state and exits."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------- the command


def finetune_robot(rig: str, policy: str, out: str | os.PathLike, episodes: int, learner: str | None = None,
                   teleop: Any = None, recipe: str = "residual_td3", overrides: Sequence[str] = (),
                   cfg: Any = None, seed: int | None = None, rig_overrides: list[str] | None = None,
                   view: str | None = None, operator: bool | None = None, explore: bool = True,
                   timeout_s: float = 5.0, progress: Callable[[Any], None] | None = None) -> dict[str, Any]:
    """``episodes`` of on-robot residual RL on ``rig`` (a rig file, or ``sim:TASK`` to try it out), the
    base ``policy`` frozen; the learner at ``learner`` (``tcp://HOST:PORT``) or started here."""
    from robolearn.deploy.loop import DeployConfig
    from robolearn.deploy.run import deploy
    from robolearn.eval.runner import resolve_checkpoint
    from robolearn.policies.checkpoint import load_policy
    from robolearn.rl.replay import policy_obs_dim
    from robolearn.rl.residual import base_hash, lowdim_keys
    from robolearn.rl.residual_td3 import load_finetune_recipe

    from .learner import PROTOCOL

    load_finetune_recipe(recipe, overrides)  # a bad recipe fails here, before anything starts
    if episodes < 1:
        raise UserError(f"--episodes must be at least 1, got {episodes}")
    out = Path(out)
    base_ckpt = resolve_checkpoint(policy)
    base = load_policy(base_ckpt).eval()
    keys = lowdim_keys(base)
    if isinstance(teleop, str):
        from robolearn.teleop import make_teleop

        teleop = make_teleop(teleop)
    proc = None
    client = None
    try:
        if learner is None:
            proc, learner = start_learner(str(base_ckpt), out, recipe, overrides)
        client = LearnerClient(learner, {"protocol": PROTOCOL, "base_sha256": base_hash(base_ckpt), "keys": keys,
                                         "obs_dim": policy_obs_dim(base, keys), "action_dim": base.action_dim},
                               timeout_s=timeout_s)
        store = out / "rollouts.zarr"
        recovered = recover_journals(out / "journal", store, client, str(base_ckpt))
        shaper = ResidualShaper(base, keys, client, out / "journal", teleop=teleop, explore=explore)
        summary = deploy(rig, str(base_ckpt), cfg or DeployConfig(), episodes=episodes, seed=seed, record=str(store),
                         overrides=rig_overrides, view=view, operator=operator, shaper=shaper, progress=progress,
                         timeout_s=timeout_s)
        try:
            client.ask_stats()
            client.drain()
            stats = client.last_stats
        except LearnerGone as e:  # after the last episode: everything is stored; say so, do not fail
            stats = {"error": str(e)}
        return {"episodes": summary.episodes, "successes": summary.successes, "steps": summary.steps,
                "store": str(store), "store_episodes": summary.store_episodes, "recovered": recovered,
                "learner": learner, "learner_stats": stats, "residual_versions": shaper.versions_used,
                "per_episode": summary.per_episode}
    finally:
        if client is not None:
            client.close()
        if proc is not None:
            stop_learner(proc)
