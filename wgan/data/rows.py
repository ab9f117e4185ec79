"""Reading a prepared dataset's rows by position: labels, images, one split (architecture.md, section 1).

Plain pyarrow reads of the shards the manifest lists, on any filesystem `wgan.data.fs`
resolves; the stages share them (evaluate's memorisation picture, the augment experiment,
the classifier's splits).
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from wgan.data import fs as datafs
from wgan.data.images import unpack_images
from wgan.data.manifest import shard_paths
from wgan.errors import UserError


def dataset_labels(data_dir: str, manifest: dict) -> np.ndarray:
    """The label of every dataset row, in row order (the reference features' order)."""
    labels = []
    for shard in shard_paths(data_dir, manifest):
        filesystem, path = datafs.resolve(shard)
        with filesystem.open_input_file(path) as handle:
            labels.append(pq.read_table(handle, columns=["label"]).column(0).to_numpy())
    return np.concatenate(labels)


def read_rows(data_dir: str, manifest: dict, rows: np.ndarray) -> np.ndarray:
    """(len(rows), H, W, C) uint8 images of the dataset's global row numbers (row order of section 1)."""
    starts = np.cumsum([0] + [shard["rows"] for shard in manifest["shards"]])
    out = np.empty((len(rows), manifest["size"], manifest["size"], manifest["channels"]), dtype=np.uint8)
    paths = shard_paths(data_dir, manifest)
    for shard in np.unique(np.searchsorted(starts, rows, side="right") - 1):
        wanted = np.flatnonzero((rows >= starts[shard]) & (rows < starts[shard + 1]))
        filesystem, path = datafs.resolve(paths[shard])
        with filesystem.open_input_file(path) as handle:
            column = pq.read_table(handle, columns=["image"]).column(0).take(rows[wanted] - starts[shard])
        out[wanted] = unpack_images(column, manifest["size"], manifest["channels"])
    return out


def split_manifest(data_dir: str, manifest: dict, split: str) -> dict:
    """The manifest restricted to the shards of one split: shards never span two splits (architecture.md, section 1)."""
    if split not in manifest["splits"]:
        raise UserError(f"{data_dir} has no {split!r} split (it has {', '.join(manifest['splits'])}): "
                        f"prepare it with --split {split}, or choose one of those")
    kept = []
    for shard, path in zip(manifest["shards"], shard_paths(data_dir, manifest)):
        filesystem, inner = datafs.resolve(path)
        with filesystem.open_input_file(inner) as handle:
            if pq.ParquetFile(handle).read_row_group(0, columns=["split"]).column(0)[0].as_py() == split:
                kept.append(shard)
    return {**manifest, "shards": kept, "splits": [split], "count": sum(shard["rows"] for shard in kept)}
