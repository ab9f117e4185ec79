"""Batches of a dataset held whole in memory, on the host or on the GPU: a new permutation every epoch.

For data that fits (Fashion-MNIST is 47 MB of pixels, CIFAR-10 154 MB) this is the
fast path: no reader and no decode per batch, one gather of uint8 rows per batch,
and on a GPU the pixels never cross the PCIe bus again. Larger data streams from its
shards (``wgan.data.reader.ShardReader``, Ray Data in the train stage).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from wgan.data.reader import nhwc_to_float


def shuffled_batches(pixels: torch.Tensor, labels: torch.Tensor, batch: int,
                     seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless ``(images float32 NCHW in [-1, 1], labels)`` batches of ``batch`` rows of uint8 NHWC ``pixels``.

    Each epoch visits every row once, in the order of ``torch.randperm`` seeded by
    (seed, epoch), so a run is reproducible; the last partial batch of an epoch is
    dropped, as the streaming path (Ray Data's ``drop_last``) does. Batches live on
    ``pixels``' device.
    """
    count = pixels.shape[0]
    if count < batch:
        raise ValueError(f"{count} images hold fewer than one batch of {batch}: prepare more data or lower --batch")
    epoch = 0
    while True:
        order = torch.randperm(count, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        order = order.to(pixels.device)
        for start in range(0, count - batch + 1, batch):
            index = order[start:start + batch]
            yield nhwc_to_float(pixels[index]), labels[index]
        epoch += 1
