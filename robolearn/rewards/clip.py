"""Embedding reward after VLM-RM ("Vision-Language Models are Zero-Shot Reward Models for RL").

A CLIP or SigLIP model, loaded with ``transformers`` from a local directory (nothing is fetched),
embeds each frame (x), the goal text (g, the task) and a baseline text (b, the scene without the
goal, e.g. "a robot arm"). Baseline projection moves x towards the line through b and g by
``alpha``, so only the direction that tells goal from baseline counts::

    x' = alpha * (b + P (x - b)) + (1 - alpha) * x,    P = d d^T / |d|^2,   d = g - b
    R  = 1 - |x' - g|^2 / 2            (all embeddings unit-norm, so R in [-1, 1])

Progress is R mapped affinely to [0, 1]; the scale differs between models, rank figures (VOC,
AUROC) do not depend on it. Frames are scored independently (``markov``); there is no success head.

Needs the optional extra ``robolearn[clip]`` (transformers).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robolearn.errors import MissingFileError, UserError
from robolearn.rewards.base import ProgressModel, ProgressScore, check_frames

DEFAULT_BASELINE = "a robot arm"


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise UserError("the clip backend needs transformers: pip install 'robolearn[clip]'") from None
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def _features(out: Any) -> torch.Tensor:
    # transformers returns a tensor, or (newer releases) an output object with the pooled projection.
    if isinstance(out, torch.Tensor):
        return out
    for name in ("image_embeds", "text_embeds", "pooler_output"):
        v = getattr(out, name, None)
        if isinstance(v, torch.Tensor):
            return v
    raise TypeError(f"unexpected feature output {type(out).__name__}")


class ClipProgressModel(ProgressModel):
    name = "clip"
    markov = True

    def __init__(self, model: Any, processor: Any, path: str, alpha: float = 0.5,
                 baseline: str = DEFAULT_BASELINE, batch_size: int = 64) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise UserError(f"clip alpha must be in [0, 1], got {alpha}")
        self.model = model.eval()
        self.processor = processor
        self.path = path
        self.alpha = float(alpha)
        self.baseline = baseline
        self.batch_size = batch_size
        self._text_cache: dict[str, torch.Tensor] = {}

    @classmethod
    def load(cls, path: str | Path, **kw: Any) -> ClipProgressModel:
        p = Path(path)
        if not (p / "config.json").exists():
            raise MissingFileError(f"no CLIP/SigLIP model at {p} (expected a transformers directory with "
                                    "config.json); save one with save_pretrained or point clip: at it")
        tf = _transformers()
        try:
            model = tf.AutoModel.from_pretrained(str(p), local_files_only=True)
            processor = tf.AutoProcessor.from_pretrained(str(p), local_files_only=True)
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"cannot load a CLIP/SigLIP model from {p}: {' '.join(str(e).split())[:300]}") from None
        if not hasattr(model, "get_image_features") or not hasattr(model, "get_text_features"):
            raise UserError(f"{p} holds a {type(model).__name__}, not a CLIP-style model with image and text towers")
        return cls(model, processor, str(p), **kw)

    @torch.no_grad()
    def _text(self, text: str) -> torch.Tensor:
        if text not in self._text_cache:
            tok = getattr(self.processor, "tokenizer", self.processor)
            kwargs: dict[str, Any] = {"padding": "max_length", "truncation": True} if "siglip" in \
                type(self.model).__name__.lower() else {"padding": True}
            enc = tok([text], return_tensors="pt", **kwargs)
            f = _features(self.model.get_text_features(**{k: v for k, v in enc.items()
                                                           if k in ("input_ids", "attention_mask")}))
            self._text_cache[text] = torch.nn.functional.normalize(f[0].float(), dim=-1)
        return self._text_cache[text]

    @torch.no_grad()
    def image_embeddings(self, frames: np.ndarray) -> torch.Tensor:
        ip = getattr(self.processor, "image_processor", self.processor)
        out = []
        for a in range(0, len(frames), self.batch_size):
            px = ip(images=list(frames[a:a + self.batch_size]), return_tensors="pt")["pixel_values"]
            out.append(_features(self.model.get_image_features(pixel_values=px)).float())
        return torch.nn.functional.normalize(torch.cat(out), dim=-1)

    def rewards(self, frames: np.ndarray, task: str) -> np.ndarray:
        """VLM-RM's reward R per frame, in [-1, 1]."""
        x = self.image_embeddings(check_frames(frames))
        g, b = self._text(task), self._text(self.baseline)
        d = g - b
        if float(d.norm()) < 1e-8:
            raise UserError(f"clip: the goal text {task!r} and the baseline {self.baseline!r} embed identically")
        d = d / d.norm()
        proj = b + ((x - b) @ d)[:, None] * d[None]
        xp = self.alpha * proj + (1 - self.alpha) * x
        return (1.0 - 0.5 * ((xp - g) ** 2).sum(-1)).numpy()

    def score(self, frames: np.ndarray, task: str, proprio: Mapping[str, np.ndarray] | None = None) -> ProgressScore:
        r = self.rewards(frames, task)
        return ProgressScore(progress=np.clip((r + 1.0) / 2.0, 0, 1).astype(np.float32), success=float("nan"),
                             info={"reward": r})

    def provenance(self) -> dict[str, Any]:
        return {"backend": self.name, "path": self.path, "model": type(self.model).__name__, "alpha": self.alpha,
                "baseline": self.baseline}


def save_tiny_clip(path: str | Path, image_size: int = 32, seed: int = 0) -> Path:
    """A tiny randomly initialised CLIP with a byte-level vocabulary, saved where ``load`` finds it:
    for tests and as the floor of the benchmark figures when no real model is at hand."""
    tf = _transformers()
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    tok = tf.CLIPTokenizer(vocab=vocab, merges=[])  # no merges: every byte is a token
    torch.manual_seed(seed)
    cfg = tf.CLIPConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 77,
                     "bos_token_id": vocab["<|startoftext|>"], "eos_token_id": vocab["<|endoftext|>"],
                     "pad_token_id": vocab["<|endoftext|>"]},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": image_size, "patch_size": max(4, image_size // 8)},
        projection_dim=16,
    )
    tf.CLIPModel(cfg).save_pretrained(str(path))
    ip = tf.CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    tf.CLIPProcessor(image_processor=ip, tokenizer=tok).save_pretrained(str(path))
    return path


def _byte_chars() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for bytes: printable Latin-1 bytes stand for
    themselves, the others are shifted past 255."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return [out[b] for b in range(256)]
