"""Image codecs for the demonstration store, as Zarr v3 array-to-bytes codecs.

One chunk holds one frame, so a codec sees a single (1, H, W, C) image:
- ``robolearn.qoi`` (default for RGB): lossless, ~3x smaller than raw on rendered and
  teleop frames, and encodes/decodes in tens of microseconds, so recording at camera rate and
  random-access training reads both stay cheap. Bit-exact round trips make crash tests and
  re-render checks exact.
- ``robolearn.jpeg``: lossy, ~15x smaller, for high-resolution real cameras where sensor
  noise makes lossless codecs compress poorly.
Depth (uint16) uses Zarr's own Blosc/zstd with bit-shuffle, which needs no custom codec.

The codecs are registered with Zarr at import time and through the ``zarr.codecs`` entry point,
so any Zarr reader with robolearn installed can open the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import imagecodecs
import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.array_spec import ArraySpec
from zarr.core.buffer import Buffer, NDBuffer
from zarr.registry import register_codec


def _as_image(chunk: np.ndarray) -> np.ndarray:
    # Chunks are (1, H, W, C); codecs work on (H, W, C).
    if chunk.ndim != 4 or chunk.shape[0] != 1 or chunk.shape[-1] not in (1, 3, 4):
        raise ValueError(f"image codecs need chunks of shape (1, H, W, C), got {chunk.shape}")
    return chunk[0]


@dataclass(frozen=True)
class QoiCodec(ArrayBytesCodec):
    """Lossless QOI image codec for uint8 frames with 3 or 4 channels."""

    is_fixed_size = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QoiCodec:
        return cls()

    def to_dict(self) -> dict[str, Any]:
        return {"name": "robolearn.qoi"}

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        img = imagecodecs.qoi_decode(chunk_bytes.as_numpy_array().tobytes())
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(img.reshape(chunk_spec.shape))

    def _encode_sync(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        img = np.ascontiguousarray(_as_image(chunk_array.as_numpy_array()))
        return chunk_spec.prototype.buffer.from_bytes(imagecodecs.qoi_encode(img))

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        return self._decode_sync(chunk_bytes, chunk_spec)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        return self._encode_sync(chunk_array, chunk_spec)

    def compute_encoded_size(self, input_byte_length: int, _chunk_spec: ArraySpec) -> int:
        raise NotImplementedError  # variable-size codec


@dataclass(frozen=True)
class JpegCodec(ArrayBytesCodec):
    """Lossy JPEG codec (OpenCV) for uint8 frames with 1 or 3 channels."""

    is_fixed_size = False
    quality: int = 90

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JpegCodec:
        return cls(**(data.get("configuration") or {}))

    def to_dict(self) -> dict[str, Any]:
        return {"name": "robolearn.jpeg", "configuration": {"quality": self.quality}}

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        img = cv2.imdecode(chunk_bytes.as_numpy_array(), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise ValueError("corrupt JPEG chunk")
        # Frames are stored RGB; OpenCV encodes/decodes BGR, so swap on both sides.
        if img.ndim == 3:
            img = img[..., ::-1]
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(np.ascontiguousarray(img).reshape(chunk_spec.shape))

    def _encode_sync(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        img = _as_image(chunk_array.as_numpy_array())
        img = img[..., ::-1] if img.shape[-1] == 3 else img[..., 0]
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(img), [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise ValueError("JPEG encoding failed")
        return chunk_spec.prototype.buffer.from_bytes(buf.tobytes())

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        return self._decode_sync(chunk_bytes, chunk_spec)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        return self._encode_sync(chunk_array, chunk_spec)

    def compute_encoded_size(self, input_byte_length: int, _chunk_spec: ArraySpec) -> int:
        raise NotImplementedError


register_codec("robolearn.qoi", QoiCodec)
register_codec("robolearn.jpeg", JpegCodec)

IMAGE_CODECS = {"qoi": QoiCodec, "jpeg": JpegCodec}
