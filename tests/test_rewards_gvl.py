"""The GVL client against a real loopback OpenAI-compatible server that judges progress from pixels."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from gvl_judge import LoopbackJudge, moving_block_episode, write_block_store

from robolearn.cli.main import main
from robolearn.data.store import DemoStore
from robolearn.rewards.gvl import GVLClient, GVLConfig, GVLError, GVLExample, label_store, parse_answer
from robolearn.rewards.metrics import spearman

TASK = "lift the red block"


def cfg(srv: LoopbackJudge, tmp_path=None, **kw) -> GVLConfig:
    kw.setdefault("backoff", 0.01)
    kw.setdefault("timeout", 5.0)
    return GVLConfig(endpoint=srv.url, model="judge-1", n_frames=10, api_key="",
                     cache_dir=str(tmp_path / "cache") if tmp_path else None, **kw)


def test_parse_free_text_answers():
    text = ("Sure! Let me go through them.\n**Frame 2:** block up high. Completion: 90%\n"
            "Frame 1 - on the floor, 2 cm from the gripper; I'd say 5 percent done.\n"
            "frame 3) Task completion percentage: 47.5 %\nFrame 4: no idea\nFrame 5: Completion: 140%\n"
            "Frame 9: Completion: 50%\nFrame 2: Completion: 10%")
    assert parse_answer(text, 5) == {1: 0.05, 2: 0.9, 3: 0.475}
    assert parse_answer("The robot is doing great.", 3) == {}
    assert parse_answer("", 3) == {}


def test_shuffled_request_is_unshuffled_and_cached(tmp_path):
    ep = moving_block_episode(40, seed=1)
    with LoopbackJudge() as srv:
        client = GVLClient(cfg(srv, tmp_path))
        r = client.label(ep["frames"], TASK)
        assert srv.requests == 1 and srv.images_per_request == [11]  # the 0 % anchor + 10 frames
        sent = srv.sequences[0]
        assert spearman(sent, np.arange(len(sent))) < 0.9  # the server saw the frames shuffled
        assert r.missing == 0 and r.error is None and not r.cache_hit
        assert len(r.steps) == 10 and r.steps[-1] == 39 and np.all(np.diff(r.steps) > 0)
        np.testing.assert_allclose(r.progress, ep["progress"][r.steps], atol=0.06)  # back in time order
        dense = r.dense()
        assert dense.shape == (40,) and spearman(dense, np.arange(40)) > 0.95

        again = GVLClient(cfg(srv, tmp_path)).label(ep["frames"], TASK)  # a new client, the disk cache
        assert srv.requests == 1 and again.cache_hit
        np.testing.assert_array_equal(again.progress, r.progress)
        other = GVLConfig(endpoint=srv.url, model="judge-2", n_frames=10, cache_dir=str(tmp_path / "cache"))
        GVLClient(other).label(ep["frames"], TASK)  # another model is another cache entry
        assert srv.requests == 2


def test_retries_dropped_connections_and_server_errors():
    ep = moving_block_episode(20, seed=2)
    with LoopbackJudge() as srv:
        srv.script.extend(["drop", "503", "429"])
        client = GVLClient(cfg(srv, retries=4))
        r = client.label(ep["frames"], TASK)
        assert r.missing == 0 and srv.requests == 4 and client.stats.retries == 3

        srv.script.extend(["drop"] * 3)
        r = GVLClient(cfg(srv, retries=2)).label(ep["frames"], TASK)  # retries exhausted: missing, no raise
        assert r.missing == len(r.steps) and "gave up after 3 attempts" in r.error


def test_garbage_and_partial_answers_are_reasked_then_marked_missing():
    ep = moving_block_episode(30, seed=3)
    with LoopbackJudge() as srv:
        srv.script.extend(["garbage", "partial"])
        client = GVLClient(cfg(srv, reasks=2))
        r = client.label(ep["frames"], TASK)
        assert r.missing == 0 and srv.requests == 3 and client.stats.reasks == 2

        srv.script.extend(["partial"])
        r = GVLClient(cfg(srv, reasks=0)).label(ep["frames"], TASK)
        assert 0 < r.missing < len(r.steps)  # the partial answer is kept, the rest is NaN
        assert np.isnan(r.progress).sum() == r.missing and not np.isnan(r.dense()).any()

        srv.script.extend(["garbage"] * 3)
        r = GVLClient(cfg(srv, reasks=2)).label(ep["frames"], TASK)
        assert r.missing == len(r.steps) and "judged 0 of" in r.error


def test_timeouts_are_clean():
    ep = moving_block_episode(20, seed=4)
    with LoopbackJudge(late_seconds=2.0) as srv:
        srv.script.extend(["late", "late"])
        t0 = time.monotonic()
        r = GVLClient(cfg(srv, timeout=0.3, retries=1)).label(ep["frames"], TASK)
        assert time.monotonic() - t0 < 1.5
        assert r.missing == len(r.steps) and "TimeoutError" in r.error
        srv.script.extend(["late"])
        r = GVLClient(cfg(srv, timeout=0.3, retries=1)).label(ep["frames"], TASK)
        assert r.missing == 0


def test_concurrency_limit_and_rate_limit():
    eps = [moving_block_episode(16, seed=10 + i) for i in range(8)]
    with LoopbackJudge(latency=0.2) as srv:
        client = GVLClient(cfg(srv, concurrency=4))
        results = client.label_many([(e["frames"], TASK) for e in eps])
        assert srv.max_in_flight == 4 and all(r.missing == 0 for r in results)
        for e, r in zip(eps, results, strict=True):  # results in input order
            np.testing.assert_allclose(r.progress, e["progress"][r.steps], atol=0.06)
    with LoopbackJudge() as srv:
        GVLClient(cfg(srv, concurrency=4, rate_limit=10.0)).label_many([(e["frames"], TASK) for e in eps[:5]])
        gaps = np.diff(sorted(srv.starts))
        assert len(gaps) == 4 and gaps.min() > 0.08


def test_in_context_examples_are_sent_as_earlier_turns(tmp_path):
    ex = moving_block_episode(20, seed=7)
    ep = moving_block_episode(20, seed=8)
    with LoopbackJudge() as srv:
        c = cfg(srv, tmp_path, examples=[GVLExample(ex["frames"], np.linspace(0, 1, 20), TASK)])
        r = GVLClient(c).label(ep["frames"], TASK)
        assert r.missing == 0 and srv.requests == 1
        GVLClient(cfg(srv, tmp_path)).label(ep["frames"], TASK)  # without the example: not the same request
        assert srv.requests == 2


def test_api_key_is_sent_but_never_stored(tmp_path, monkeypatch):
    path = tmp_path / "blocks.zarr"
    write_block_store(path, 3, 1)
    secret = "sk-very-secret-123"
    with LoopbackJudge(api_key=secret) as srv:
        with pytest.raises(GVLError, match="HTTP 401") as e:
            GVLClient(GVLConfig(endpoint=srv.url, model="m", api_key="wrong")).label(
                moving_block_episode(10)["frames"], TASK)
        assert "wrong" not in str(e.value)
        monkeypatch.setenv("ROBOLEARN_VLM_API_KEY", secret)
        c = GVLConfig(endpoint=srv.url, model="judge-1", n_frames=8, cache_dir=str(tmp_path / "cache"))
        assert secret not in repr(c)
        s = label_store(path, c)
        assert s.labelled == 4 and s.failed == 0 and srv.auth_headers[-1] == f"Bearer {secret}"
    for f in [*path.rglob("*"), *(tmp_path / "cache").rglob("*")]:
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f


def test_label_store_writes_progress_with_provenance_and_resumes(tmp_path, capsys):
    path = tmp_path / "blocks.zarr"
    eps = write_block_store(path, 4, 2)
    with LoopbackJudge() as srv:
        srv.script.extend(["drop", "drop", "drop"])  # episode 0 fails for good on the first run
        c = GVLConfig(endpoint=srv.url, model="judge-1", n_frames=8, retries=2, backoff=0.01, concurrency=1)
        s = label_store(path, c)
        assert s.failed == 1 and s.labelled == 5 and "episode 0" in s.errors[0]
        store = DemoStore.open(path)
        vals, prov = store.read_column("progress", 3)
        assert prov["backend"] == "gvl" and prov["model"] == "judge-1" and len(prov["prompt_hash"]) == 16
        assert "api_key" not in json.dumps(prov) and prov["missing"] == 0 and len(prov["judged_steps"]) == 8
        assert spearman(vals, eps[3]["progress"]) > 0.95
        assert store.read_column("progress", 0)[1] is None  # left unlabelled, so a re-run retries it

        n = srv.requests
        code = main(["reward", "label", "--data", str(path), "--backend", "gvl", "--endpoint", srv.url,
                     "--model", "judge-1", "--n-frames", "8", "-q", "--cache", str(tmp_path / "cache")])
        assert code == 0 and srv.requests == n + 1  # only episode 0 is asked again
        assert "1 labelled, 5 already labelled" in capsys.readouterr().out
        assert DemoStore.open(path).read_column("progress", 0)[1]["model"] == "judge-1"


def test_reward_score_with_gvl_backend(tmp_path):
    path = tmp_path / "blocks.zarr"
    write_block_store(path, 4, 3)
    with LoopbackJudge() as srv:
        code = main(["reward", "score", "--reward", f"gvl:{srv.url}", "--model", "judge-1", "--data", str(path),
                     "--out", str(tmp_path / "score"), "--n-frames", "8", "--plots", "3", "--cache", "none"])
    assert code == 0
    s = json.loads((tmp_path / "score" / "scores.json").read_text())
    assert s["n_success"] == 4 and s["n_failure"] == 3
    assert s["voc"] > 0.9 and s["voc_reversed"] < -0.9 and s["auroc"] == 1.0 and s["auroc_from"] == "final_progress"
    assert (tmp_path / "score" / "curves.png").exists() and len(list((tmp_path / "score").glob("episode_*.png"))) == 3


def test_bad_endpoint_is_one_line_error(tmp_path, capsys):
    path = tmp_path / "blocks.zarr"
    write_block_store(path, 1, 0)
    code = main(["reward", "label", "--data", str(path), "--backend", "gvl", "--endpoint", "ftp://x", "--model", "m"])
    assert code == 2 and "--endpoint must be an http(s) URL" in capsys.readouterr().err
    with LoopbackJudge() as srv:
        code = main(["reward", "label", "--data", str(path), "--endpoint", srv.url.replace("/v1", "/nope"),
                     "--model", "m", "-q", "--cache", "none"])
    err = capsys.readouterr().err
    assert code == 2 and "HTTP 404" in err and err.count("\n") == 1
