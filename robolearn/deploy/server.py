"""``robolearn serve``: a policy server for a robot computer without a GPU.

One process holds the policy (on its GPU, or CPU) and answers over ZeroMQ (ROUTER socket; clients
are DEALERs, :class:`~robolearn.deploy.inference.RemoteInference`). The handshake comes first:

1. ``hello`` -> the server's protocol version and the policy's description (type, window sizes,
   action size, every observation key with kind/shape/dtype);
2. ``check`` with the rig's features -> ``ok``, or ``error`` naming the first key the rig lacks or
   gives in another shape; the client refuses a mismatched policy before the arm moves.

Then ``infer`` requests (observation tensors + the client's noise) get ``chunk`` replies with the
compute time, so the client can tell transport from inference in its latency accounting.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from robolearn.deploy.inference import PROTOCOL, InferenceError, PolicyRunner, pack, request_from, unpack


def check_features(info: dict[str, Any], features: dict[str, dict[str, Any]]) -> str | None:
    """Why a rig with ``features`` cannot run the policy described by ``info`` (None: it can)."""
    for key, want in info["obs"].items():
        got = features.get(key)
        if got is None:
            return f"the policy reads {key!r}, which the rig does not observe (it observes {', '.join(sorted(features))})"
        if got["kind"] != want["kind"] or list(got["shape"]) != list(want["shape"]):
            return (f"the policy reads {key!r} as {want['kind']} {want['shape']}, the rig gives {got['kind']} "
                    f"{got['shape']}: the policy was trained on another observation layout")
    return None


def endpoint_of(port: int | None, bind: str | None = None) -> str:
    if bind:
        return bind
    if port is None:
        from robolearn.errors import UserError

        raise UserError("robolearn serve needs --port P (listens on every interface) or --bind ADDRESS "
                        "(e.g. tcp://127.0.0.1:5555)")
    return f"tcp://*:{port}"


def serve(runner: PolicyRunner, endpoint: str, ready: Any = None, max_requests: int | None = None,
          log: Any = None, stop: Any = None) -> int:
    """Answer requests on ``endpoint`` until interrupted, ``stop`` (a threading.Event) is set, or
    ``max_requests`` inference requests; returns the inference requests served.

    ``ready`` (a callable) is called once the socket is bound (for tests and the local process mode)."""
    from robolearn.deploy.inference import import_zmq

    zmq = import_zmq()
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as e:
        from robolearn.errors import UserError

        raise UserError(f"policy server: cannot listen on {endpoint}: {e}") from None
    if ready is not None:
        ready()
    served = 0
    try:
        while max_requests is None or served < max_requests:
            if stop is not None:
                if stop.is_set():
                    break
                if not sock.poll(100):
                    continue
            frames = sock.recv_multipart()
            ident, body = frames[0], frames[1:]
            try:
                header, arrays = unpack(body)
                kind = header.get("type")
                if kind == "hello":
                    reply = pack({"type": "hello", "protocol": PROTOCOL, "policy": runner.info})
                elif kind == "check":
                    why = check_features(runner.info, header.get("features", {}))
                    reply = pack({"type": "ok"} if why is None else {"type": "error", "message": why})
                elif kind == "infer":
                    t0 = time.perf_counter()
                    rep = runner.infer(request_from(header, arrays))
                    served += 1
                    reply = pack({"type": "chunk", "id": rep.id, "compute_ms": rep.compute_ms,
                                  "server_ms": (time.perf_counter() - t0) * 1e3}, {"chunk": rep.chunk})
                else:
                    reply = pack({"type": "error", "message": f"unknown request {kind!r}"})
            except (InferenceError, KeyError, ValueError, RuntimeError) as e:
                reply = pack({"type": "error", "message": f"{type(e).__name__}: {' '.join(str(e).split())}"})
                if log is not None:
                    print(f"robolearn serve: {type(e).__name__}: {e}", file=log, flush=True)
            sock.send_multipart([ident, *reply])
    except KeyboardInterrupt:
        pass
    finally:
        sock.close(0)
    return served


def serve_policy(policy_path: str, endpoint: str, device: str = "cpu", threads: int | None = None,
                 ready: Any = None, max_requests: int | None = None) -> int:
    """Load a run's policy and :func:`serve` it (what ``robolearn serve`` calls)."""
    import torch

    from robolearn.eval.runner import resolve_checkpoint, resolve_device
    from robolearn.policies.checkpoint import load_policy

    if threads:
        torch.set_num_threads(threads)
    ckpt = resolve_checkpoint(policy_path)
    policy = load_policy(ckpt, device=resolve_device(device))
    policy.eval()
    runner = PolicyRunner(policy, str(ckpt))
    print(f"robolearn serve: {policy.policy_type} policy from {ckpt} on {endpoint} (protocol {PROTOCOL})",
          file=sys.stderr, flush=True)
    return serve(runner, endpoint, ready=ready, max_requests=max_requests, log=sys.stderr)


def _serve_child(policy_path: str, endpoint: str, threads: int | None, conn: Any) -> None:
    """Entry point of a local server process (``deploy --inference process``)."""
    from robolearn.hardware.arms.controller import die_with_parent

    die_with_parent()
    try:
        serve_policy(policy_path, endpoint, threads=threads, ready=lambda: conn.send("ready"))
    except BaseException as e:  # noqa: BLE001 - one line to the parent
        conn.send(f"error: {type(e).__name__}: {e}")


def start_local_server(policy_path: str, threads: int | None = None) -> tuple[Any, str]:
    """A policy server in a child process on an ipc:// socket: inference in another process, so the
    control loop never shares the interpreter lock with it. Returns (process, endpoint)."""
    import multiprocessing as mp
    import os
    import tempfile

    endpoint = f"ipc://{tempfile.gettempdir()}/robolearn-policy-{os.getpid()}-{time.monotonic_ns()}"
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve_child, args=(policy_path, endpoint, threads, child), daemon=True,
                       name="robolearn-policy-server")
    proc.start()
    child.close()
    if not parent.poll(120.0):
        proc.kill()
        raise InferenceError("the local policy server did not start in 120 s")
    msg = parent.recv()
    if msg != "ready":
        proc.join(5.0)
        raise InferenceError(f"the local policy server failed: {msg}")
    return proc, endpoint
