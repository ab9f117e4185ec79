"""Pixels: fit an image to the output size and channels, and the `raw` encoding (uint8 HWC bytes).

Raw bytes (not PNG) make decoding one ``numpy.frombuffer`` per batch; parquet's
zstd keeps them nearly as small as PNG on disk (see benchmarks/bench_data.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import numpy as np
import pyarrow as pa
from PIL import Image, ImageOps

MODES = {1: "L", 3: "RGB"}
RESAMPLING = Image.Resampling.BICUBIC  # PIL scales the filter support when shrinking: antialiased

BinaryValues = Union[pa.Array, pa.ChunkedArray, np.ndarray, Sequence[bytes]]


def fit_image(image: Image.Image, size: int, channels: int) -> np.ndarray:
    """HWC uint8 of ``image`` in ``channels`` (RGB->gray by PIL's 'L' luma, gray->RGB replicated),
    centre-cropped to a square and resized to ``size`` with antialiased bicubic filtering."""
    mode = MODES[channels]
    if image.mode != mode:
        image = image.convert(mode)
    if image.size != (size, size):
        image = ImageOps.fit(image, (size, size), method=RESAMPLING)
    return np.asarray(image).reshape(size, size, channels)


def fit_array(pixels: np.ndarray, size: int, channels: int) -> np.ndarray:
    """``fit_image`` for one HWC uint8 array (C = 1 or 3); returned unchanged when it already fits."""
    if pixels.shape == (size, size, channels):
        return pixels
    return fit_image(Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels), size, channels)


def pack_images(images: np.ndarray) -> pa.BinaryArray:
    """A binary array with one row of raw HWC bytes per image of an (N, H, W, C) uint8 array, without copying per row."""
    count = len(images)
    flat = np.ascontiguousarray(images, dtype=np.uint8).reshape(-1)
    row_bytes = flat.size // count if count else 0
    offsets = np.arange(count + 1, dtype=np.int32) * row_bytes
    return pa.Array.from_buffers(pa.binary(), count, [None, pa.py_buffer(offsets), pa.py_buffer(flat)])


def unpack_images(values: BinaryValues, size: int, channels: int) -> np.ndarray:
    """(N, size, size, channels) uint8 view of raw image values: a pyarrow (Chunked)BinaryArray, or bytes objects."""
    row_bytes = size * size * channels
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        flat = _arrow_bytes(values, row_bytes)
    else:
        if any(len(value) != row_bytes for value in values):
            raise ValueError(_wrong_length(row_bytes))
        flat = np.frombuffer(b"".join(values), dtype=np.uint8)
    return flat.reshape(-1, size, size, channels)


def pixel_moments(images: np.ndarray) -> tuple[list[int], list[int]]:
    """Per channel, the exact integer sum and sum of squares of the uint8 pixels (for the manifest's mean/std)."""
    levels = np.arange(256, dtype=np.int64)
    histograms = [np.bincount(images[..., c].reshape(-1), minlength=256) for c in range(images.shape[-1])]
    return [int(h @ levels) for h in histograms], [int(h @ levels**2) for h in histograms]


def _arrow_bytes(values: pa.Array, row_bytes: int) -> np.ndarray:
    if not (pa.types.is_binary(values.type) or pa.types.is_large_binary(values.type)):
        raise ValueError(f"image values must be binary, not {values.type}")
    if values.null_count:
        raise ValueError("image values contain nulls")
    if len(values) == 0:
        return np.empty(0, dtype=np.uint8)
    _, offsets_buffer, data_buffer = values.buffers()
    offset_type = np.int64 if pa.types.is_large_binary(values.type) else np.int32
    offsets = np.frombuffer(offsets_buffer, dtype=offset_type)[values.offset : values.offset + len(values) + 1]
    if np.any(np.diff(offsets) != row_bytes):
        raise ValueError(_wrong_length(row_bytes))
    return np.frombuffer(data_buffer, dtype=np.uint8, count=int(offsets[-1] - offsets[0]), offset=int(offsets[0]))


def _wrong_length(row_bytes: int) -> str:
    return f"image values must be {row_bytes} bytes each (size * size * channels of the manifest)"
