"""The CLIP (VLM-RM) backend with a tiny randomly initialised CLIP built and saved by the test."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
from gvl_judge import moving_block_episode, write_block_store  # noqa: E402

from robolearn.cli.main import main  # noqa: E402
from robolearn.rewards import load_reward  # noqa: E402
from robolearn.rewards.clip import ClipProgressModel, save_tiny_clip  # noqa: E402

TASK, BASE = "lift the red block", "a robot arm"


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny", image_size=32)


def _embed(model: ClipProgressModel, frames: np.ndarray) -> np.ndarray:
    """Image embeddings straight from the transformers model, unit norm."""
    px = model.processor.image_processor(images=list(frames), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        f = model.model.get_image_features(pixel_values=px)
    f = f if isinstance(f, torch.Tensor) else f.pooler_output
    return torch.nn.functional.normalize(f.float(), dim=-1).numpy()


def test_vlm_rm_reward_and_baseline_projection(tiny_clip):
    ep = moving_block_episode(12, seed=1)
    m0 = load_reward(f"clip:{tiny_clip}")
    assert isinstance(m0, ClipProgressModel) and m0.markov
    x = _embed(m0, ep["frames"])
    g, b = m0._text(TASK).numpy(), m0._text(BASE).numpy()
    m0.alpha = 0.0  # no projection: R = 1 - |x - g|^2 / 2 = cos(x, g)
    np.testing.assert_allclose(m0.rewards(ep["frames"], TASK), x @ g, atol=1e-5)
    m0.alpha = 1.0  # full projection onto the line through baseline and goal
    d = (g - b) / np.linalg.norm(g - b)
    proj = b + ((x - b) @ d)[:, None] * d
    np.testing.assert_allclose(m0.rewards(ep["frames"], TASK), 1 - 0.5 * ((proj - g) ** 2).sum(1), atol=1e-5)
    s = m0.score(ep["frames"], TASK)
    assert s.progress.shape == (12,) and np.all((s.progress >= 0) & (s.progress <= 1)) and np.isnan(s.success)
    with pytest.raises(ValueError, match="embed identically"):
        m0.rewards(ep["frames"], BASE)


def test_reward_score_with_clip_backend(tiny_clip, tmp_path):
    store = tmp_path / "blocks.zarr"
    write_block_store(store, 3, 2, length=12)
    assert main(["reward", "score", "--reward", f"clip:{tiny_clip}", "--data", str(store), "--out",
                 str(tmp_path / "s"), "--plots", "1"]) == 0
    s = json.loads((tmp_path / "s" / "scores.json").read_text())
    assert s["model"]["backend"] == "clip" and s["model"]["model"] == "CLIPModel" and s["model"]["alpha"] == 0.5
    assert s["n_success"] == 3 and s["n_failure"] == 2 and s["auroc_from"] == "final_progress"
    assert -1 <= s["voc"] <= 1 and s["voc_reversed"] == pytest.approx(-s["voc"]) and s["ms_per_frame"] > 0
    # the per-frame scores are the model's own: the same frames score the same in any clip
    m = load_reward(f"clip:{tiny_clip}")
    ep = moving_block_episode(12, seed=0)
    full = m.score(ep["frames"], TASK).progress
    np.testing.assert_allclose(m.score(ep["frames"][5:9], TASK).progress, full[5:9], atol=1e-6)
    assert (tmp_path / "s" / "curves.png").exists()


def test_missing_model_is_a_clear_error(tmp_path, capsys):
    store = tmp_path / "b.zarr"
    write_block_store(store, 1, 0)
    assert main(["reward", "score", "--reward", f"clip:{tmp_path / 'none'}", "--data", str(store),
                 "--out", str(tmp_path / "s")]) == 2
    assert "no CLIP/SigLIP model" in capsys.readouterr().err
