"""Reading a prepared dataset's rows by position: labels, images, one split (architecture.md, section 1).

pyarrow's own dataset reads (`Dataset.take`) of the shards the manifest lists, on any filesystem
`wgan.data.fs` resolves; the stages share them (evaluate's memorisation picture, the augment experiment,
the classifier's splits).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from wgan.data import fs as datafs
from wgan.data.images import unpack_images
from wgan.data.manifest import shard_paths
from wgan.errors import UserError


def shards_dataset(data_dir: str, manifest: dict) -> ds.Dataset:
    """The shards the manifest lists, in its order, as one pyarrow dataset: its row i is the dataset's row i."""
    paths = shard_paths(data_dir, manifest)
    if not paths:
        raise UserError(f"{data_dir}: the manifest lists no shards: prepare the dataset again")
    filesystem, _ = datafs.resolve(paths[0])
    return ds.dataset([datafs.resolve(path)[1] for path in paths], filesystem=filesystem, format="parquet")


def dataset_labels(data_dir: str, manifest: dict) -> np.ndarray:
    """The label of every dataset row, in row order (the reference features' order)."""
    return shards_dataset(data_dir, manifest).to_table(columns=["label"]).column(0).to_numpy()


def read_rows(data_dir: str, manifest: dict, rows: np.ndarray) -> np.ndarray:
    """(len(rows), H, W, C) uint8 images of the dataset's global row numbers (row order of section 1), in
    the order given (repeats allowed): pyarrow's `Dataset.take`."""
    column = shards_dataset(data_dir, manifest).take(pa.array(np.asarray(rows, dtype=np.int64)),
                                                     columns=["image"]).column(0)
    return unpack_images(column, manifest["size"], manifest["channels"])


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
