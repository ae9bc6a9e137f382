"""A loopback OpenAI-compatible chat server that judges task progress from the pixels it receives.

Frames show a red block rising over a grey floor (``moving_block_episode``); the judge decodes each
PNG it is sent, finds the block and answers in free text how high it is, as a VLM would answer for
"lift the block". Scripted misbehaviour per request (garbage, a partial answer, a late answer, a
dropped connection, HTTP 429/503) exercises the client's re-asks, retries and timeouts for real.
Used by the tests and by benchmarks/bench_rewards.py; it binds 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import cv2
import numpy as np

SIZE, BLOCK = 32, 6
LOW, HIGH = 24, 4  # top row of the block at progress 0 and 1


def render_block(progress: float, rng: np.random.Generator | None = None, size: int = SIZE) -> np.ndarray:
    """A frame with the block at ``progress`` (0: on the floor, 1: lifted), a little sensor noise."""
    img = np.full((size, size, 3), 110, np.uint8)
    img[LOW + BLOCK:] = (60, 60, 70)  # floor
    top = int(round(LOW + (HIGH - LOW) * float(np.clip(progress, 0, 1))))
    left = size // 2 - BLOCK // 2
    img[top: top + BLOCK, left: left + BLOCK] = (220, 30, 30)
    if rng is not None:
        img = np.clip(img.astype(np.int16) + rng.integers(-6, 7, img.shape), 0, 255).astype(np.uint8)
    return img


def moving_block_episode(length: int, seed: int = 0, success: bool = True) -> dict[str, Any]:
    """Frames of a lift: the block rises monotonically (a failure stalls half way)."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, length)
    prog = np.clip(t + rng.normal(0, 0.01, length), 0, 1)
    prog = np.maximum.accumulate(prog) if success else np.minimum(prog, 0.5)
    return {"frames": np.stack([render_block(p, rng) for p in prog]), "progress": prog}


def judge_frame(img: np.ndarray) -> float:
    """Progress from pixels: the red block's height."""
    red = (img[..., 0] > 150) & (img[..., 1] < 90) & (img[..., 2] < 90)
    rows = np.flatnonzero(red.any(axis=1))
    if not len(rows):
        return 0.0
    return float(np.clip((LOW - rows[0]) / (LOW - HIGH), 0, 1))


def _decode(url: str) -> np.ndarray:
    data = base64.b64decode(url.split(",", 1)[1])
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return bgr[..., ::-1]


class LoopbackJudge:
    """``with LoopbackJudge() as srv: ... srv.url``. ``script`` lists what the next requests get:
    "ok", "garbage", "partial", "late", "drop", "429", "503"; then every request is answered."""

    def __init__(self, latency: float = 0.0, late_seconds: float = 3.0, api_key: str | None = None) -> None:
        self.latency = latency
        self.late_seconds = late_seconds
        self.api_key = api_key
        self.script: deque[str] = deque()
        self.requests = 0
        self.answered = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.starts: list[float] = []
        self.auth_headers: list[str] = []
        self.images_per_request: list[int] = []
        self.sequences: list[list[float]] = []  # judged progress of the frames in the order received
        self._lock = threading.Lock()
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                judge._handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> LoopbackJudge:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.requests += 1
            self.starts.append(time.monotonic())
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            action = self.script.popleft() if self.script else "ok"
            self.auth_headers.append(h.headers.get("Authorization", ""))
        released = False

        def send(*args: Any) -> None:
            # The client may send its next request as soon as it reads this response, so this one
            # stops counting as in flight before its response is written (not after).
            nonlocal released
            with self._lock:
                self.in_flight -= 1
            released = True
            self._send(h, *args)

        try:
            body = json.loads(h.rfile.read(int(h.headers.get("Content-Length", 0))))
            if h.path != "/v1/chat/completions":
                return send(404, {"error": {"message": f"no route {h.path}"}})
            if self.api_key and h.headers.get("Authorization") != f"Bearer {self.api_key}":
                return send(401, {"error": {"message": "invalid api key"}})
            if self.latency:
                time.sleep(self.latency)
            if action == "drop":
                h.connection.shutdown(socket.SHUT_RDWR)
                h.close_connection = True
                return
            if action in ("429", "503"):
                return send(int(action), {"error": {"message": "slow down"}}, {"Retry-After": "0.05"})
            if action == "late":
                time.sleep(self.late_seconds)
            user = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
            images = [_decode(p["image_url"]["url"]) for p in user if p.get("type") == "image_url"]
            with self._lock:
                self.images_per_request.append(len(images))
                self.sequences.append([judge_frame(f) for f in images[1:]])
            text = self._answer(images[1:], action)
            send(200, {"id": "judge", "object": "chat.completion", "model": body.get("model"),
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": text}}]})
            with self._lock:
                self.answered += 1
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            if not released:
                with self._lock:
                    self.in_flight -= 1

    @staticmethod
    def _answer(frames: list[np.ndarray], action: str) -> str:
        if action == "garbage":
            return "I am sorry, I cannot see any robot here. Perhaps try again?"
        lines = ["Here is my assessment of each frame."]
        for i, f in enumerate(frames, 1):
            if action == "partial" and i % 3 == 0:
                continue
            pct = round(100 * judge_frame(f))
            where = "resting on the floor" if pct < 10 else "in the air" if pct > 90 else "partway up"
            style = i % 3
            if style == 0:
                lines.append(f"**Frame {i}:** The red block is {where}. Completion: {pct}%")
            elif style == 1:
                lines.append(f"Frame {i}: the gripper holds the block {where}, about 3 cm wide. Task completion "
                             f"percentage: {pct}%")
            else:
                lines.append(f"Frame {i} - block {where}; I'd say {pct} percent done.")
        return "\n".join(lines)

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, obj: dict, headers: dict | None = None) -> None:
        data = json.dumps(obj).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)


def write_block_store(path: Any, n_success: int, n_failure: int, length: int = 30, seed: int = 0) -> list[dict]:
    """A store (real writer) of moving-block episodes: camera ``agentview`` and a little proprio."""
    from robolearn.data.schema import EpisodeInfo
    from robolearn.data.store import DemoStore

    eps = []
    with DemoStore.open(path, mode="a") as store:
        for i in range(n_success + n_failure):
            ok = i < n_success
            ep = moving_block_episode(length + (i % 3) * 4, seed=seed + i, success=ok)
            n = len(ep["frames"])
            t = np.arange(n) / 20.0
            with store.begin_episode() as w:
                w.extend("control", t, t, action=np.zeros((n, 7), np.float32),
                         robot0_eef_pos=np.stack([np.zeros(n), np.zeros(n), ep["progress"]], 1).astype(np.float32))
                w.extend("agentview", t, t, agentview_image=ep["frames"])
                w.commit(EpisodeInfo(task="lift the red block", success=ok, fps=20.0, seed=seed + i))
            eps.append(ep)
    return eps
