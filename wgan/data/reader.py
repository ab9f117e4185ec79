"""Read a prepared dataset in plain PyTorch: decode raw image bytes to tensors, stream shuffled batches.

``ShardReader`` needs no Ray: it serves single-process training, tests and
benchmarks. Distributed training reads the same shards with
``ray.data.read_parquet(shard_paths(...))`` and decodes with ``decode_images``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

from wgan.data import fs as datafs
from wgan.data.images import BinaryValues, unpack_images
from wgan.data.manifest import load_manifest, shard_paths

READ_ROWS = 1024  # rows per parquet record batch


def decode_images(values: BinaryValues, size: int, channels: int) -> torch.Tensor:
    """Float32 NCHW tensor in [-1, 1] (``x / 127.5 - 1``) from raw image values (pyarrow binary array or bytes)."""
    return pixels_to_tensor(unpack_images(values, size, channels))


def pixels_to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """(N, H, W, C) uint8 -> contiguous float32 (N, C, H, W) in [-1, 1]."""
    writable = pixels if pixels.flags.writeable else pixels.copy()  # torch wants writable memory
    return nhwc_to_float(torch.from_numpy(writable))


def nhwc_to_float(nhwc: torch.Tensor) -> torch.Tensor:
    """(N, H, W, C) uint8 tensor, on any device -> contiguous float32 (N, C, H, W) in [-1, 1]."""
    return nhwc.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format).div_(127.5).sub_(1.0)


class ShardReader(IterableDataset):
    """Batches ``(images float32 NCHW in [-1, 1], labels int64)`` of a prepared dataset.

    With ``shuffle``, shard order is permuted and rows are shuffled within a buffer of
    ``shuffle_buffer`` rows, from ``numpy.random.default_rng((seed, epoch))``: the same
    seed and epoch give the same batches. Call ``set_epoch`` to reshuffle. Under a
    DataLoader with workers, each worker reads its own subset of shards (use
    ``batch_size=None`` in the DataLoader: batches are already formed).
    """

    def __init__(
        self,
        data_dir: str,
        batch_size: int = 64,
        *,
        shuffle: bool = True,
        seed: int = 0,
        shuffle_buffer: int = 8192,
        drop_last: bool = False,
        verify: bool = True,
        manifest: dict[str, Any] | None = None,
    ) -> None:
        self.manifest = manifest if manifest is not None else load_manifest(data_dir, verify=verify)
        self.paths = shard_paths(data_dir, self.manifest)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.shuffle_buffer = max(shuffle_buffer, batch_size) if shuffle else batch_size
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rng = np.random.default_rng((self.seed, self.epoch))
        order = rng.permutation(len(self.paths)) if self.shuffle else np.arange(len(self.paths))
        worker = get_worker_info()
        if worker is not None:
            order = order[worker.id :: worker.num_workers]
        pixels: list[np.ndarray] = []
        labels: list[np.ndarray] = []
        buffered = 0
        for pixel_block, label_block in self._read(order):
            pixels.append(pixel_block)
            labels.append(label_block)
            buffered += len(label_block)
            if buffered >= self.shuffle_buffer:
                pixels, labels, buffered = yield from self._emit(pixels, labels, rng, final=False)
        yield from self._emit(pixels, labels, rng, final=True)

    def _read(self, order: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        size, channels = self.manifest["size"], self.manifest["channels"]
        for index in order:
            filesystem, path = datafs.resolve(self.paths[index])
            with filesystem.open_input_file(path) as handle:
                for batch in pq.ParquetFile(handle).iter_batches(batch_size=READ_ROWS, columns=["image", "label"]):
                    yield unpack_images(batch.column(0), size, channels), batch.column(1).to_numpy()

    def _emit(self, pixels: list[np.ndarray], labels: list[np.ndarray], rng: np.random.Generator, final: bool):
        """Yield whole batches from the buffer (all rows if ``final``); return what is left over."""
        if not labels:
            return [], [], 0
        all_pixels, all_labels = np.concatenate(pixels), np.concatenate(labels)
        if self.shuffle:
            permutation = rng.permutation(len(all_labels))
            all_pixels, all_labels = all_pixels[permutation], all_labels[permutation]
        whole = len(all_labels) // self.batch_size * self.batch_size
        end = len(all_labels) if final and not self.drop_last else whole
        for start in range(0, end, self.batch_size):
            stop = min(start + self.batch_size, end)
            yield pixels_to_tensor(all_pixels[start:stop]), torch.from_numpy(all_labels[start:stop])
        if final:
            return [], [], 0
        return [all_pixels[whole:]], [all_labels[whole:]], len(all_labels) - whole
