"""Write one parquet shard of the prepared-dataset schema and describe it for the manifest.

The file is encoded in memory first so its sha256 comes from the very bytes
uploaded, with no second read (shards are capped at ~64 MiB of pixels).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from wgan.data import fs as datafs
from wgan.data.images import pixel_moments, unpack_images
from wgan.data.manifest import SCHEMA


@dataclass(frozen=True)
class ShardSummary:
    """What the manifest needs from a written shard: its entry and the pixel moments for mean/std."""

    index: int
    path: str  # relative to the dataset directory
    rows: int
    sha256: str
    pixel_sum: list[int]  # per channel, of uint8 values
    pixel_square_sum: list[int]


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def encode_shard(table: pa.Table) -> pa.Buffer:
    """The parquet file of a table of the prepared-dataset schema, in memory: what `write_shard` writes."""
    buffer = pa.BufferOutputStream()
    pq.write_table(table.select(SCHEMA.names).cast(SCHEMA), buffer, compression="zstd", use_dictionary=["split"],
                   write_statistics=["label", "split"])
    return buffer.getvalue()


def write_shard(filesystem: pafs.FileSystem, directory: str, index: int, table: pa.Table, size: int, channels: int) -> ShardSummary:
    """Write the ``image``/``label``/``split`` columns of ``table`` as ``<directory>/part-<index>.parquet`` (zstd)."""
    table = table.select(SCHEMA.names).cast(SCHEMA)
    data = encode_shard(table)
    name = shard_name(index)
    with filesystem.open_output_stream(datafs.join(directory, name)) as out:
        out.write(data)
    pixel_sum, pixel_square_sum = pixel_moments(unpack_images(table["image"], size, channels))
    return ShardSummary(index, name, table.num_rows, hashlib.sha256(data).hexdigest(), pixel_sum, pixel_square_sum)
