"""Policy inference off the control loop: in a thread of this process, or on a policy server.

Both backends take the same :class:`Request` (the policy's input tensors, the initial noise drawn by
the loop from the episode's generator, an optional inpainting constraint) and return the same
:class:`Reply`; ``submit`` never blocks and ``poll`` returns a finished reply or None, so the control
loop only ever checks. :class:`PolicyRunner` is what computes a reply, in the thread or in
``robolearn serve``.

The wire format (``robolearn serve``, ZeroMQ DEALER/ROUTER): a JSON header frame naming each array
(dtype, shape) followed by one raw frame per array; no pickle, so a server never unpickles what a
network sends it.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PROTOCOL = 1


class InferenceError(RuntimeError):
    """Inference failed or its server went away; the message is one line, the arm must stop."""


@dataclass
class Request:
    id: int
    obs: dict[str, np.ndarray]  # key -> (n_obs_steps, *tensor_shape), what the training loader yields
    noise: np.ndarray  # (horizon, A) float32
    seed: int = 0  # for samplers that draw noise at every step (DDPM)
    known: np.ndarray | None = None  # (horizon, A) raw actions to inpaint, where weights > 0
    weights: np.ndarray | None = None  # (horizon,)
    t_submit: float = 0.0  # filled by the backend (time.perf_counter)


@dataclass
class Reply:
    id: int
    chunk: np.ndarray  # (horizon - n_obs_steps + 1, A): the actions from the latest observation's on, raw
    compute_ms: float  # the policy call itself
    round_trip_ms: float = 0.0  # submit -> reply in hand (includes transport and queueing)
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- the wire format


def pack(header: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None) -> list[bytes]:
    arrays = dict(arrays or {})
    names = [[k, str(np.asarray(v).dtype), list(np.asarray(v).shape)] for k, v in arrays.items()]
    frames = [json.dumps({**header, "arrays": names}).encode()]
    frames += [np.ascontiguousarray(v).tobytes() for v in arrays.values()]
    return frames


def unpack(frames: list[bytes]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    try:
        header = json.loads(frames[0])
        names = header.pop("arrays")
        if len(names) != len(frames) - 1:
            raise ValueError(f"{len(names)} arrays named, {len(frames) - 1} sent")
        arrays = {k: np.frombuffer(buf, dtype=np.dtype(dt)).reshape(shape)
                  for (k, dt, shape), buf in zip(names, frames[1:], strict=True)}
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise InferenceError(f"malformed message: {e}") from None
    return header, arrays


def request_arrays(req: Request) -> dict[str, np.ndarray]:
    out = {f"obs/{k}": v for k, v in req.obs.items()}
    out["noise"] = req.noise
    if req.known is not None and req.weights is not None:
        out["known"], out["weights"] = req.known, req.weights
    return out


def request_from(header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Request:
    obs = {k[4:]: v for k, v in arrays.items() if k.startswith("obs/")}
    return Request(id=int(header["id"]), obs=obs, noise=arrays["noise"], seed=int(header.get("seed", 0)),
                   known=arrays.get("known"), weights=arrays.get("weights"))


# ---------------------------------------------------------------- computing a reply


def describe_policy(policy: Any, source: str = "") -> dict[str, Any]:
    """What a client checks before it drives a robot with this policy (the handshake)."""
    return {
        "protocol": PROTOCOL,
        "robolearn": _version(),
        "source": source,
        "type": policy.policy_type,
        "n_obs_steps": policy.n_obs_steps,
        "horizon": policy.horizon,
        "n_action_steps": policy.n_action_steps,
        "action_dim": policy.action_dim,
        "num_inference_steps": getattr(policy.config, "num_inference_steps", None),
        "prefix_actions": int(getattr(policy, "prefix_actions", 0)),
        "obs": {k: {"kind": f.kind, "shape": list(f.shape), "dtype": f.dtype}
                for k, f in policy.shape_meta.obs.items() if k in policy.obs_keys},
    }


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("robolearn")
    except Exception:  # noqa: BLE001 - a source tree without metadata
        return "0"


class PolicyRunner:
    """One policy behind :meth:`infer` (thread backend and server alike)."""

    def __init__(self, policy: Any, source: str = "") -> None:
        self.policy = policy
        self.info = describe_policy(policy, source)

    def infer(self, req: Request) -> Reply:
        import torch

        from robolearn.deploy.inpaint import predict_inpainted

        p = self.policy
        t0 = time.perf_counter()
        obs = {k: torch.from_numpy(np.array(v))[None] for k, v in req.obs.items()}
        noise = torch.from_numpy(np.array(req.noise, np.float32))[None]
        gen = torch.Generator().manual_seed(int(req.seed))
        if req.known is not None and req.weights is not None and float(np.max(req.weights)) > 0:
            chunk = predict_inpainted(p, obs, noise, torch.from_numpy(np.array(req.known, np.float32))[None],
                                      torch.from_numpy(np.array(req.weights, np.float32)), gen)
        else:
            chunk = p.predict_action(obs, noise=noise, generator=gen)
        # The whole chunk from the action for the latest observation on: the loop executes it as a
        # timeline, and under latency the actions past the executable window are the ones still on time.
        actions = chunk[0, p.n_obs_steps - 1:].to("cpu", torch.float32).numpy()
        return Reply(req.id, actions, (time.perf_counter() - t0) * 1e3)


# ---------------------------------------------------------------- backends


class LocalInference:
    """The policy in a background thread of this process. torch releases the GIL inside its kernels,
    so the control loop keeps running while a chunk is computed."""

    kind = "thread"

    def __init__(self, policy: Any, source: str = "", threads: int | None = None) -> None:
        self.runner = PolicyRunner(policy, source)
        self.info = self.runner.info
        self._in: queue.Queue[Request | None] = queue.Queue()
        self._out: queue.Queue[Reply | BaseException] = queue.Queue()
        self._threads = threads
        # The control loop waits for the interpreter lock at most one switch interval while this thread
        # runs Python between torch kernels: 1 ms instead of the default 5 ms.
        import sys

        self._switch = sys.getswitchinterval()
        sys.setswitchinterval(min(self._switch, 0.001))
        self._thread = threading.Thread(target=self._run, name="robolearn-inference", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        if self._threads:
            import torch

            torch.set_num_threads(self._threads)
        while True:
            req = self._in.get()
            if req is None:
                return
            try:
                reply = self.runner.infer(req)
                reply.round_trip_ms = (time.perf_counter() - req.t_submit) * 1e3
                self._out.put(reply)
            except BaseException as e:  # noqa: BLE001 - handed to the control loop, which stops the arm
                self._out.put(e)

    def submit(self, req: Request) -> None:
        req.t_submit = time.perf_counter()
        self._in.put(req)

    def poll(self, timeout: float = 0.0) -> Reply | None:
        try:
            item = self._out.get(timeout=timeout) if timeout > 0 else self._out.get_nowait()
        except queue.Empty:
            return None
        if isinstance(item, BaseException):
            raise InferenceError(f"policy inference failed: {type(item).__name__}: {item}") from item
        return item

    def close(self) -> None:
        import sys

        self._in.put(None)
        self._thread.join(5.0)
        sys.setswitchinterval(self._switch)


class RemoteInference:
    """A policy server (``robolearn serve``) over ZeroMQ. ``submit`` queues the request on the socket
    and returns; ``poll`` picks up the reply; no reply ``timeout_s`` after a request means the server
    is gone (or hung), an :class:`InferenceError`."""

    kind = "server"

    def __init__(self, endpoint: str, timeout_s: float = 2.0, connect_timeout_s: float = 10.0) -> None:
        zmq = import_zmq()

        self.endpoint, self.timeout_s = endpoint, float(timeout_s)
        self._ctx = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(endpoint)
        self._pending: dict[int, float] = {}
        self._sock.send_multipart(pack({"type": "hello", "protocol": PROTOCOL}))
        if not self._sock.poll(int(connect_timeout_s * 1000)):
            self.close()
            raise InferenceError(f"policy server {endpoint} did not answer in {connect_timeout_s:g} s: start it "
                                 f"with `robolearn serve --policy RUN --port P` (is the address right?)")
        header, _ = unpack(self._sock.recv_multipart())
        if header.get("type") == "error":
            self.close()
            raise InferenceError(f"policy server {endpoint}: {header.get('message')}")
        if header.get("protocol") != PROTOCOL:
            self.close()
            raise InferenceError(f"policy server {endpoint} speaks protocol {header.get('protocol')}, this client "
                                 f"{PROTOCOL}: run the same robolearn version on both hosts")
        self.info = header["policy"]

    def check_features(self, features: Mapping[str, Any]) -> None:
        """Second half of the handshake: the server checks the rig's features against its policy."""
        feats = {k: {"kind": f.kind, "shape": list(f.shape), "dtype": f.dtype} for k, f in features.items()}
        self._sock.send_multipart(pack({"type": "check", "features": feats}))
        if not self._sock.poll(int(self.timeout_s * 1000)):
            raise InferenceError(f"policy server {self.endpoint} did not answer the handshake in {self.timeout_s:g} s")
        header, _ = unpack(self._sock.recv_multipart())
        if header.get("type") != "ok":
            raise InferenceError(f"policy server {self.endpoint} refused this rig: {header.get('message')}")

    def submit(self, req: Request) -> None:
        req.t_submit = time.perf_counter()
        self._pending[req.id] = req.t_submit
        self._sock.send_multipart(pack({"type": "infer", "id": req.id, "seed": req.seed}, request_arrays(req)))

    def poll(self, timeout: float = 0.0) -> Reply | None:
        if self._sock.poll(int(timeout * 1000)):
            header, arrays = unpack(self._sock.recv_multipart())
            if header.get("type") == "error":
                raise InferenceError(f"policy server {self.endpoint}: {header.get('message')}")
            t_sub = self._pending.pop(int(header["id"]), None)
            rt = (time.perf_counter() - t_sub) * 1e3 if t_sub is not None else 0.0
            return Reply(int(header["id"]), arrays["chunk"].copy(), float(header["compute_ms"]), rt)
        if self._pending:
            age = time.perf_counter() - min(self._pending.values())
            if age > self.timeout_s:
                raise InferenceError(f"policy server {self.endpoint} gave no answer for {age:.1f} s "
                                     f"(timeout {self.timeout_s:g} s): it went away or hangs")
        return None

    def close(self) -> None:
        self._sock.close(0)


def import_zmq() -> Any:
    """pyzmq, or a one-line install hint."""
    try:
        import zmq
    except ImportError:
        from robolearn.errors import UserError

        raise UserError("the policy server needs pyzmq: pip install 'robolearn[deploy]'") from None
    return zmq


def policy_features_from_info(info: Mapping[str, Any]) -> Any:
    """A stand-in with ``obs_keys`` / ``shape_meta.obs`` built from a server's description, so the
    rollout's own :func:`~robolearn.rollout.policy_features` checks a remote policy against the rig."""
    from types import SimpleNamespace

    from robolearn.features import Feature

    obs = {k: Feature(tuple(v["shape"]), v["dtype"], v["kind"]) for k, v in info["obs"].items()}
    return SimpleNamespace(obs_keys=list(obs), shape_meta=SimpleNamespace(obs=obs), n_obs_steps=info["n_obs_steps"],
                           horizon=info["horizon"], n_action_steps=info["n_action_steps"],
                           action_dim=info["action_dim"], prefix_actions=int(info.get("prefix_actions", 0)))
