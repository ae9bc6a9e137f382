"""GVL: task progress judged by a vision-language model behind any OpenAI-compatible chat endpoint.

After "Vision Language Models are In-Context Value Learners" (Ma et al. 2024): an episode's frames
are subsampled, the first is shown as the 0 % anchor, the others are shuffled (so the model must
judge each frame rather than count) and sent in one request with the task; the per-frame completion
percentages are parsed from the free-text answer and put back in time order. Optional in-context
examples are earlier turns with the true answers.

Works with vLLM, SGLang, Ollama and hosted APIs (``POST {endpoint}/chat/completions``, images as
base64 PNG data URLs). Requests run concurrently up to a limit, are rate-limited, retried with
jittered exponential backoff (honouring ``Retry-After``), time out as a whole (not per socket read),
and are cached on disk by (frame hashes, task, model, prompt). Malformed or partial answers are
re-asked with another shuffle and otherwise marked missing (NaN); they never raise. Only a request
the server refuses outright (401/403/404: wrong key, model or URL) raises :class:`GVLError`, since
no retry can fix it.

The API key is read from the config or ``ROBOLEARN_VLM_API_KEY`` / ``OPENAI_API_KEY``; it is sent
in the Authorization header and nowhere else: not in the cache key, the provenance, reprs or errors.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import random
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from robolearn.errors import UserError
from robolearn.rewards.base import ProgressModel, ProgressScore, check_frames

PROMPT_VERSION = "gvl-1"
SYSTEM_PROMPT = (
    "You are a careful robotics expert. You judge how far a robot has come in completing a task, "
    "from individual camera frames."
)
TASK_PROMPT = (
    "Task: {task}.\nThe image below shows the scene before the robot started; its task completion is 0%."
)
FRAMES_PROMPT = (
    "Below are {n} more frames of the same episode, in random order, labelled Frame 1 to Frame {n}. "
    "Judge each frame on its own. For every frame, write one line: "
    "'Frame <number>: <short description of the scene>. Completion: <percentage>%', "
    "where 0% means the task has not started and 100% means it is fully done."
)
ENV_ENDPOINT, ENV_MODEL, ENV_KEY = "ROBOLEARN_VLM_ENDPOINT", "ROBOLEARN_VLM_MODEL", "ROBOLEARN_VLM_API_KEY"
RETRY_STATUS = (408, 409, 425, 429, 500, 502, 503, 504)
FATAL_STATUS = (401, 403, 404)


def prompt_hash() -> str:
    text = json.dumps([PROMPT_VERSION, SYSTEM_PROMPT, TASK_PROMPT, FRAMES_PROMPT])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class GVLError(UserError):
    """A request the endpoint refuses for good (bad key, unknown model or URL): one-line message."""


@dataclass
class GVLExample:
    """An in-context example episode: frames in time order and their true progress in [0, 1]."""

    frames: np.ndarray
    progress: np.ndarray
    task: str


@dataclass
class GVLConfig:
    endpoint: str = ""
    model: str = ""
    api_key: str | None = field(default=None, repr=False)
    n_frames: int = 16  # frames judged per episode (evenly spaced, the anchor not counted)
    image_size: int | None = None  # resize frames to this square size before sending (None: as recorded)
    concurrency: int = 4
    rate_limit: float = 0.0  # requests started per second at most (0: no limit)
    timeout: float = 120.0  # seconds for a whole request: connect, send, wait, read
    retries: int = 4  # transport errors, timeouts, 429 and 5xx
    reasks: int = 2  # malformed or partial answers
    backoff: float = 1.0  # first retry delay in seconds, doubled each time, jittered
    max_backoff: float = 30.0
    temperature: float = 0.0
    max_tokens: int = 2048
    cache_dir: str | None = None
    seed: int = 0
    examples: Sequence[GVLExample] = ()

    def __post_init__(self) -> None:
        self.endpoint = self.endpoint or os.environ.get(ENV_ENDPOINT, "")
        self.model = self.model or os.environ.get(ENV_MODEL, "")
        if self.api_key is None:
            self.api_key = os.environ.get(ENV_KEY) or os.environ.get("OPENAI_API_KEY") or None
        if not self.endpoint:
            raise UserError(f"no VLM endpoint: pass --endpoint URL or set {ENV_ENDPOINT}")
        if not self.model:
            raise UserError(f"no VLM model name: pass --model NAME or set {ENV_MODEL}")
        u = urlsplit(self.endpoint)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise UserError(f"--endpoint must be an http(s) URL such as http://127.0.0.1:8000/v1, got {safe_url(self.endpoint)!r}")
        if self.n_frames < 2 or self.concurrency < 1 or self.timeout <= 0 or self.retries < 0 or self.reasks < 0:
            raise UserError("GVL: n_frames >= 2, concurrency >= 1, timeout > 0, retries and reasks >= 0")

    @property
    def url(self) -> str:
        base = self.endpoint.rstrip("/")
        return base if base.endswith("/chat/completions") else base + "/chat/completions"


def safe_url(url: str) -> str:
    """The URL without credentials or query string (may carry keys), for logs and provenance."""
    u = urlsplit(url)
    host = u.hostname or ""
    if u.port:
        host += f":{u.port}"
    return f"{u.scheme}://{host}{u.path}"


@dataclass
class GVLResult:
    """One episode's judgement: progress at the judged steps (NaN where missing), in time order."""

    steps: np.ndarray  # (n,) int indices of the judged frames in the episode
    progress: np.ndarray  # (n,) float in [0, 1], NaN where the answer had no usable value
    length: int  # frames in the episode
    cache_hit: bool = False
    requests: int = 0
    error: str | None = None  # why frames are missing, if they are
    raw: str = ""

    @property
    def missing(self) -> int:
        return int(np.isnan(self.progress).sum())

    def dense(self) -> np.ndarray:
        """Progress at every step, linearly interpolated between judged frames (NaN with none)."""
        ok = ~np.isnan(self.progress)
        if not ok.any():
            return np.full(self.length, np.nan, np.float32)
        return np.interp(np.arange(self.length), self.steps[ok], self.progress[ok]).astype(np.float32)


class ClientStats:
    """Counters for progress displays; updated from worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = self.in_flight = self.retries = self.reasks = self.cache_hits = 0
        self.episodes_done = self.episodes_missing = 0

    def add(self, **deltas: int) -> None:
        with self._lock:
            for k, v in deltas.items():
                setattr(self, k, getattr(self, k) + v)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {k: v for k, v in vars(self).items() if not k.startswith("_")}


class RateLimiter:
    """Spaces request starts at least 1/rate seconds apart across threads; ``delay`` pushes all back."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._next = 0.0
        self._cond = threading.Condition()

    def acquire(self) -> None:
        # The next slot counts from when this start really happened: a thread that wakes late under load
        # must not let the next one go right behind it (a reserved schedule bunches up after a stall).
        # Waiting on a condition (not sleeping under the lock) lets ``delay`` push back threads already waiting.
        with self._cond:
            while (wait := self._next - time.monotonic()) > 0:
                self._cond.wait(wait)
            self._next = time.monotonic() + self.interval

    def delay(self, seconds: float) -> None:
        with self._cond:
            self._next = max(self._next, time.monotonic() + seconds)
            self._cond.notify_all()


# ---------------------------------------------------------------------------------------- prompt & parse


def sample_steps(length: int, n: int) -> np.ndarray:
    """``n`` evenly spaced frame indices after the anchor (frame 0), the last frame included."""
    if length < 2:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.linspace(1, length - 1, min(n, length - 1)).round().astype(np.int64))


def frame_hash(frame: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(frame).tobytes() + str(frame.shape).encode()).hexdigest()


def encode_png(frame: np.ndarray, size: int | None = None) -> str:
    import cv2

    img = np.ascontiguousarray(frame[..., ::-1])  # RGB -> BGR for OpenCV
    if size and img.shape[:2] != (size, size):
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise ValueError("could not encode a frame as PNG")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode()


def _image(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def _episode_turn(task: str, anchor: str, frames: list[str]) -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = [{"type": "text", "text": TASK_PROMPT.format(task=task)}, _image(anchor),
                                     {"type": "text", "text": FRAMES_PROMPT.format(n=len(frames))}]
    for i, f in enumerate(frames, 1):
        content += [{"type": "text", "text": f"Frame {i}:"}, _image(f)]
    return content


_LINE = re.compile(r"^[^\w\n]*frame\s*#?\s*(\d+)\s*[:.)\-]", re.IGNORECASE | re.MULTILINE)
_INLINE = re.compile(r"frame\s*#?\s*(\d+)\s*[:)\-]", re.IGNORECASE)
_PCT = re.compile(r"(-?\d+(?:\.\d+)?)\s*(?:%|percent\b)", re.IGNORECASE)
_KEYWORD = re.compile(r"(?:completion|progress|complete|percentage)[^0-9\-\n]{0,40}?(-?\d+(?:\.\d+)?)", re.IGNORECASE)


def parse_answer(text: str, n: int) -> dict[int, float]:
    """Frame number (1-based) -> completion in [0, 1] from a free-text answer. Frames without a
    usable value (none given, out of 0-100, numbered outside 1..n) are absent."""
    text = text.replace("*", "")
    marks = list(_LINE.finditer(text)) or list(_INLINE.finditer(text))
    out: dict[int, float] = {}
    for j, m in enumerate(marks):
        k = int(m.group(1))
        seg = text[m.end(): marks[j + 1].start() if j + 1 < len(marks) else len(text)]
        hit = _KEYWORD.search(seg) or _PCT.search(seg)
        if hit is None or not 1 <= k <= n or k in out:
            continue
        v = float(hit.group(1))
        if 0.0 <= v <= 100.0:
            out[k] = v / 100.0
    return out


def _content_text(resp: Any) -> str:
    """The assistant text of a chat-completions response, '' when it has none."""
    try:
        content = resp["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return ""
    if isinstance(content, list):  # some servers answer with content parts
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


# ---------------------------------------------------------------------------------------- client


class _Retryable(Exception):
    def __init__(self, msg: str, retry_after: float | None = None) -> None:
        super().__init__(msg)
        self.retry_after = retry_after


class GVLClient:
    """Thread-safe GVL client: ``label`` one episode, ``label_many`` / ``label_iter`` concurrently."""

    def __init__(self, cfg: GVLConfig, stats: ClientStats | None = None) -> None:
        self.cfg = cfg
        self.stats = stats or ClientStats()
        self.limiter = RateLimiter(cfg.rate_limit)
        self.cache = Path(cfg.cache_dir) if cfg.cache_dir else None
        self._example_msgs, self._example_hashes = self._build_examples(cfg.examples)

    def __repr__(self) -> str:
        return f"GVLClient({safe_url(self.cfg.url)}, model={self.cfg.model!r})"

    # ------------------------------------------------------------------ public
    def label(self, frames: np.ndarray, task: str) -> GVLResult:
        """Judge one episode (frames in time order). Never raises for bad answers or a flaky
        server: what could not be judged is NaN, with the reason in ``error``."""
        frames = check_frames(frames)
        steps = sample_steps(len(frames), self.cfg.n_frames)
        res = GVLResult(steps=steps, progress=np.full(len(steps), np.nan), length=len(frames))
        if len(steps) == 0:
            res.progress = np.zeros(0)
            return res
        best: dict[int, float] = {}
        for attempt in range(self.cfg.reasks + 1):
            order = self._shuffle(frames, steps, attempt)
            key = self._cache_key(frames[0], frames[steps[order]], task)
            answer = self._cache_get(key)
            if answer is not None:
                res.cache_hit = True
                self.stats.add(cache_hits=1)
            else:
                try:
                    text = self._request(frames[0], frames[steps[order]], task)
                    res.requests += 1
                except _Retryable as e:  # retries exhausted: the episode stays (partly) unjudged
                    res.error = str(e)
                    break
                parsed = parse_answer(text, len(steps))
                answer = {"text": text, "values": {str(k): v for k, v in parsed.items()}}
                if len(parsed) == len(steps):
                    self._cache_put(key, answer)
            res.raw = answer["text"]
            values = {int(k): float(v) for k, v in answer["values"].items()}
            for i, v in values.items():  # frame i (1-based) of the shuffled order is step steps[order[i-1]]
                best.setdefault(int(order[i - 1]), v)
            if len(best) == len(steps):
                res.error = None
                break
            res.error = f"answer judged {len(values)} of {len(steps)} frames"
            if attempt < self.cfg.reasks:
                self.stats.add(reasks=1)
        for j, v in best.items():
            res.progress[j] = v
        self.stats.add(episodes_done=1, episodes_missing=int(res.missing > 0))
        return res

    def label_iter(self, items: Iterable[tuple[np.ndarray, str]],
                   heartbeat: float | None = None) -> Iterator[tuple[int, GVLResult | None]]:
        """(index, result) for each (frames, task) as they finish, ``concurrency`` at a time; items are
        drawn lazily, so a long list of episodes is never all in memory. With ``heartbeat``, also
        (-1, None) every that many seconds while waiting, for live progress displays."""
        it = iter(enumerate(items))
        with ThreadPoolExecutor(self.cfg.concurrency, thread_name_prefix="gvl") as pool:
            pending: dict[Future, int] = {}
            exhausted = False
            while True:
                while not exhausted and len(pending) < 2 * self.cfg.concurrency:
                    try:
                        i, (frames, task) = next(it)
                    except StopIteration:
                        exhausted = True
                        break
                    pending[pool.submit(self.label, frames, task)] = i
                if not pending:
                    return
                done, _ = wait(pending, timeout=heartbeat, return_when=FIRST_COMPLETED)
                if not done:
                    yield -1, None
                for fut in done:
                    i = pending.pop(fut)
                    try:
                        yield i, fut.result()
                    except GVLError:
                        for f in pending:
                            f.cancel()
                        raise

    def label_many(self, items: Sequence[tuple[np.ndarray, str]]) -> list[GVLResult]:
        out: list[GVLResult | None] = [None] * len(items)
        for i, r in self.label_iter(items):
            if r is not None:
                out[i] = r
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------------ request
    def _messages(self, anchor: np.ndarray, frames: np.ndarray, task: str) -> list[dict[str, Any]]:
        size = self.cfg.image_size
        turn = _episode_turn(task, encode_png(anchor, size), [encode_png(f, size) for f in frames])
        return [{"role": "system", "content": SYSTEM_PROMPT}, *self._example_msgs, {"role": "user", "content": turn}]

    def _build_examples(self, examples: Sequence[GVLExample]) -> tuple[list[dict[str, Any]], list[str]]:
        msgs, hashes = [], []
        rng = np.random.default_rng(self.cfg.seed)
        for ex in examples:
            frames = check_frames(ex.frames)
            prog = np.asarray(ex.progress, dtype=np.float64)
            if prog.shape != (len(frames),):
                raise UserError(f"GVL example: {len(frames)} frames but progress of shape {prog.shape}")
            steps = sample_steps(len(frames), self.cfg.n_frames)
            order = rng.permutation(len(steps))
            size = self.cfg.image_size
            turn = _episode_turn(ex.task, encode_png(frames[0], size), [encode_png(frames[s], size) for s in steps[order]])
            answer = "\n".join(f"Frame {i}: Completion: {100 * prog[steps[o]]:.0f}%" for i, o in enumerate(order, 1))
            msgs += [{"role": "user", "content": turn}, {"role": "assistant", "content": answer}]
            hashes.append(hashlib.sha1(json.dumps([frame_hash(frames[s]) for s in steps[order]] + [answer, ex.task])
                                       .encode()).hexdigest())
        return msgs, hashes

    def _shuffle(self, frames: np.ndarray, steps: np.ndarray, attempt: int) -> np.ndarray:
        # Seeded by the content, so the same episode sends the same request (and hits the cache).
        h = int(frame_hash(frames[steps[-1]])[:8], 16)
        return np.random.default_rng([self.cfg.seed, h, attempt]).permutation(len(steps))

    def _request(self, anchor: np.ndarray, frames: np.ndarray, task: str) -> str:
        cfg = self.cfg
        body = json.dumps({
            "model": cfg.model, "messages": self._messages(anchor, frames, task),
            "temperature": cfg.temperature, "max_tokens": cfg.max_tokens,
        }).encode()
        last = "no attempt"
        for attempt in range(cfg.retries + 1):
            if attempt:
                self.stats.add(retries=1)
            self.limiter.acquire()
            self.stats.add(requests=1, in_flight=1)
            try:
                status, headers, data = self._post(body)
            except (OSError, http.client.HTTPException, TimeoutError) as e:
                last = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                wait_s = None
            else:
                if status == 200:
                    try:
                        return _content_text(json.loads(data))
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        return ""  # a malformed body is a malformed answer: re-asked by the caller
                if status in FATAL_STATUS:
                    detail = data[:200].decode(errors="replace").replace(cfg.api_key or "\0", "***")
                    raise GVLError(f"{safe_url(cfg.url)} answered HTTP {status} for model {cfg.model!r}"
                                   f"{': ' + ' '.join(detail.split()) if detail.strip() else ''}; check the "
                                   f"endpoint URL, the model name and the API key ({ENV_KEY})")
                last = f"HTTP {status}"
                wait_s = _retry_after(headers.get("retry-after"))
                if status not in RETRY_STATUS and not 500 <= status < 600:
                    raise _Retryable(f"{safe_url(cfg.url)} answered HTTP {status}")
            finally:
                self.stats.add(in_flight=-1)
            if attempt < cfg.retries:
                delay = min(cfg.max_backoff, cfg.backoff * 2**attempt) * random.uniform(0.5, 1.0)
                if wait_s is not None:
                    delay = max(delay, min(wait_s, cfg.max_backoff))
                    self.limiter.delay(delay)  # the server asked everyone to slow down
                time.sleep(delay)
        raise _Retryable(f"{safe_url(cfg.url)}: gave up after {cfg.retries + 1} attempts ({last})")

    def _post(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        """One POST with a deadline on the whole exchange (a slow trickle cannot outlive it)."""
        u = urlsplit(self.cfg.url)
        deadline = time.monotonic() + self.cfg.timeout
        if u.scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                u.hostname, u.port, timeout=self.cfg.timeout, context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=self.cfg.timeout)
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.cfg.api_key:
            headers["Authorization"] = f"Bearer {self.cfg.api_key}"
        try:
            conn.request("POST", u.path + (f"?{u.query}" if u.query else ""), body=body, headers=headers)
            sock = conn.sock
            _remaining(sock, deadline)
            resp = conn.getresponse()
            chunks = []
            while True:
                _remaining(sock, deadline)
                chunk = resp.read(65536)
                if not chunk:
                    break
                chunks.append(chunk)
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, b"".join(chunks)
        except TimeoutError:
            raise TimeoutError(f"no answer within {self.cfg.timeout:g}s") from None
        finally:
            conn.close()

    # ------------------------------------------------------------------ cache
    def _cache_key(self, anchor: np.ndarray, frames: np.ndarray, task: str) -> str:
        key = {"v": PROMPT_VERSION, "prompt": prompt_hash(), "model": self.cfg.model, "task": task,
               "anchor": frame_hash(anchor), "frames": [frame_hash(f) for f in frames],
               "examples": self._example_hashes, "image_size": self.cfg.image_size,
               "temperature": self.cfg.temperature}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()

    def _cache_get(self, key: str) -> dict[str, Any] | None:
        if self.cache is None:
            return None
        p = self.cache / key[:2] / f"{key}.json"
        try:
            d = json.loads(p.read_text())
            return d if isinstance(d, dict) and "values" in d else None
        except (OSError, json.JSONDecodeError):
            return None

    def _cache_put(self, key: str, answer: dict[str, Any]) -> None:
        if self.cache is None:
            return
        p = self.cache / key[:2] / f"{key}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(f".{os.getpid()}.{threading.get_ident()}.partial")
        tmp.write_text(json.dumps(answer))
        os.replace(tmp, p)  # readers see the old file or the whole new one


def _remaining(sock: socket.socket | None, deadline: float) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError()
    if sock is not None:
        try:
            sock.settimeout(left)
        except OSError:  # http.client closed its handle once the response was parsed; the read still works
            pass


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------- the backend


class GVLProgressModel(ProgressModel):
    """GVL as a :class:`ProgressModel`: progress at the judged frames (interpolated in between);
    ``info['judged']`` marks the judged frames. No success head: AUROC uses the final progress."""

    name = "gvl"
    markov = False

    def __init__(self, cfg: GVLConfig) -> None:
        self.client = GVLClient(cfg)

    def score(self, frames: np.ndarray, task: str, proprio: Mapping[str, np.ndarray] | None = None) -> ProgressScore:
        r = self.client.label(frames, task)
        judged = np.zeros(r.length, bool)
        judged[r.steps] = True
        prog = r.dense()
        # VOC on what was judged: unjudged frames hold no judgement of their own.
        sparse = np.full(r.length, np.nan, np.float32)
        sparse[r.steps] = r.progress
        return ProgressScore(progress=sparse, success=float("nan"),
                             info={"dense": prog, "missing": r.missing, "error": r.error, "cache_hit": r.cache_hit})

    def provenance(self) -> dict[str, Any]:
        return gvl_provenance(self.client.cfg)


def gvl_provenance(cfg: GVLConfig) -> dict[str, Any]:
    return {"backend": "gvl", "model": cfg.model, "prompt_hash": prompt_hash(), "prompt_version": PROMPT_VERSION,
            "n_frames": cfg.n_frames, "endpoint": safe_url(cfg.endpoint), "examples": len(cfg.examples),
            "image_size": cfg.image_size}


# ---------------------------------------------------------------------------------------- store labelling


@dataclass
class LabelSummary:
    labelled: int = 0
    skipped: int = 0  # already labelled with the same backend, model and prompt
    partial: int = 0  # labelled with some frames missing
    failed: int = 0  # nothing usable: left unlabelled, a re-run retries them
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


def label_store(data: str | Path, cfg: GVLConfig, episodes: Sequence[int] | None = None, camera: str | None = None,
                column: str = "progress", overwrite: bool = False,
                on_update: Callable[[LabelSummary, ClientStats, int], None] | None = None,
                skip: Sequence[int] = ()) -> LabelSummary:
    """Write GVL progress labels into ``column`` of a store, one episode at a time as answers come
    in (resumable: episodes already labelled with the same backend, model and prompt are skipped).
    ``skip``: episodes not to label (the in-context examples)."""
    from robolearn.data.store import DemoStore
    from robolearn.rewards.metrics import image_key

    store = DemoStore.open(data, mode="a")
    summary = LabelSummary()
    t0 = time.perf_counter()
    try:
        key = image_key(store, camera)
        eps = list(range(store.n_episodes)) if episodes is None else list(episodes)
        for e in eps:
            if not 0 <= e < store.n_episodes:
                raise UserError(f"--episodes: {store.path} has episodes 0-{store.n_episodes - 1}, not {e}")
        eps = [e for e in eps if e not in set(skip)]
        prov = gvl_provenance(cfg)
        todo = []
        for e in eps:
            have = store.read_column(column, e)[1] if column in store.columns else None
            same = have and all(have.get(k) == prov[k] for k in ("backend", "model", "prompt_hash", "n_frames"))
            if same and not overwrite:
                summary.skipped += 1
            else:
                todo.append(e)
        client = GVLClient(cfg)
        if on_update:
            on_update(summary, client.stats, len(todo))
        def gen() -> Iterator[tuple[np.ndarray, str]]:
            for e in todo:
                yield store.read_episode(e, [key])[key], store.episode_info(e).task

        for i, r in client.label_iter(gen(), heartbeat=0.5 if on_update else None):
            if r is None:  # nothing finished yet: refresh the display (requests in flight, retries)
                on_update(summary, client.stats, len(todo))  # type: ignore[misc]
                continue
            e = todo[i]
            if r.missing == len(r.steps) and len(r.steps):
                summary.failed += 1
                summary.errors.append(f"episode {e}: {r.error}")
            else:
                p = {**prov, "judged_steps": r.steps.tolist(), "missing": r.missing, "labelled_at": time.time()}
                if r.error:
                    p["error"] = r.error
                store.set_column(column, e, r.dense(), p)
                summary.labelled += 1
                summary.partial += int(r.missing > 0)
            if on_update:
                on_update(summary, client.stats, len(todo))
    finally:
        summary.seconds = time.perf_counter() - t0
        store.close()
    return summary


def examples_from_store(data: str | Path, episodes: Sequence[int], camera: str | None = None,
                        n_frames: int = 16) -> list[GVLExample]:
    """Successful episodes of a store as in-context examples, their progress the normalised time."""
    from robolearn.data.store import DemoStore
    from robolearn.rewards.metrics import image_key

    store = DemoStore.open(data)
    key = image_key(store, camera)
    out = []
    for e in episodes:
        if not 0 <= e < store.n_episodes:
            raise UserError(f"--examples: {store.path} has episodes 0-{store.n_episodes - 1}, not {e}")
        info = store.episode_info(e)
        if not info.success:
            raise UserError(f"--examples: episode {e} is a failure; examples must be successful episodes")
        frames = store.read_episode(e, [key])[key]
        out.append(GVLExample(frames, np.linspace(0.0, 1.0, len(frames)), info.task))
    return out
