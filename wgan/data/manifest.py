"""The prepared dataset's manifest (docs/architecture.md, section 1): load, verify, write, fingerprint.

A dataset is only trusted through its manifest: every shard's sha256 and row count
are checked before training reads it, so a half-copied or edited directory is
refused with one line instead of training on the wrong data.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from wgan.data import fs as datafs
from wgan.errors import UserError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
ENCODING = "raw"
SCHEMA = pa.schema([("image", pa.binary()), ("label", pa.int64()), ("split", pa.string())])
REQUIRED_KEYS = (
    "format_version", "dataset", "splits", "count", "size", "channels", "encoding",
    "class_names", "mean", "std", "shards", "skipped", "params", "created_at", "wganctl_version",
)
_HASH_CHUNK = 4 << 20
_REBUILD_HINT = "rebuild it with `wganctl prepare ... --force`"


def load_manifest(data_dir: str, verify: bool = True) -> dict[str, Any]:
    """The manifest of ``data_dir`` as a dict; with ``verify``, each shard's sha256, rows and schema are checked."""
    fs, root = datafs.resolve(data_dir)
    manifest = _parse(_read_manifest_bytes(fs, root, data_dir), data_dir)
    if verify:
        for shard in manifest["shards"]:
            verify_shard(fs, datafs.join(root, shard["path"]), shard, data_dir)
    return manifest


def manifest_sha256(data_dir: str) -> str:
    """The dataset's identity: sha256 of the manifest.json bytes (it lists every shard's sha256)."""
    fs, root = datafs.resolve(data_dir)
    return hashlib.sha256(_read_manifest_bytes(fs, root, data_dir)).hexdigest()


def shard_paths(data_dir: str, manifest: dict[str, Any]) -> list[str]:
    """Absolute paths or URIs of the shards, in manifest order, e.g. for ``ray.data.read_parquet``."""
    base = datafs.absolute(data_dir)
    return [datafs.join(base, shard["path"]) for shard in manifest["shards"]]


def write_manifest(fs: pafs.FileSystem, directory: str, manifest: dict[str, Any]) -> None:
    """Write manifest.json; callers write it last, since its presence is what makes a directory a dataset."""
    with fs.open_output_stream(datafs.join(directory, MANIFEST_NAME)) as out:
        out.write(json.dumps(manifest, indent=2).encode() + b"\n")


def file_sha256(fs: pafs.FileSystem, path: str) -> str:
    """sha256 of a file, streamed so large shards need no memory."""
    digest = hashlib.sha256()
    with fs.open_input_stream(path) as stream:
        while chunk := stream.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_shard(fs: pafs.FileSystem, path: str, entry: dict[str, Any], data_dir: str) -> None:
    """Raise UserError unless the shard exists with the manifest's sha256, row count and schema."""
    name = entry["path"]
    if not datafs.exists(fs, path):
        raise UserError(f"{data_dir}: shard {name} listed in {MANIFEST_NAME} is missing; {_REBUILD_HINT}")
    if file_sha256(fs, path) != entry["sha256"]:
        raise UserError(f"{data_dir}: shard {name} does not match its sha256 in {MANIFEST_NAME} (changed or damaged); {_REBUILD_HINT}")
    with fs.open_input_file(path) as handle:
        metadata = pq.ParquetFile(handle).metadata
    if metadata.num_rows != entry["rows"]:
        raise UserError(f"{data_dir}: shard {name} has {metadata.num_rows} rows, {MANIFEST_NAME} says {entry['rows']}; {_REBUILD_HINT}")
    if not metadata.schema.to_arrow_schema().equals(SCHEMA):
        raise UserError(f"{data_dir}: shard {name} does not have the image/label/split schema of format {FORMAT_VERSION}; {_REBUILD_HINT}")


def _read_manifest_bytes(fs: pafs.FileSystem, root: str, data_dir: str) -> bytes:
    path = datafs.join(root, MANIFEST_NAME)
    if not datafs.exists(fs, path):
        raise UserError(f"{data_dir} is not a prepared dataset (no {MANIFEST_NAME}); create it with `wganctl prepare`")
    with fs.open_input_stream(path) as stream:
        return stream.read()


def _parse(raw: bytes, data_dir: str) -> dict[str, Any]:
    try:
        manifest = json.loads(raw)
    except ValueError as err:
        raise UserError(f"{data_dir}/{MANIFEST_NAME} is not valid JSON ({err}); {_REBUILD_HINT}") from None
    if not isinstance(manifest, dict):
        raise UserError(f"{data_dir}/{MANIFEST_NAME} is not a JSON object; {_REBUILD_HINT}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise UserError(
            f"{data_dir}: dataset format_version {version!r} is not supported (this wganctl reads {FORMAT_VERSION}); {_REBUILD_HINT}"
        )
    missing = [key for key in REQUIRED_KEYS if key not in manifest]
    if missing:
        raise UserError(f"{data_dir}/{MANIFEST_NAME} lacks {', '.join(missing)}; {_REBUILD_HINT}")
    if manifest["encoding"] != ENCODING:
        raise UserError(f"{data_dir}: image encoding {manifest['encoding']!r} is not supported (expected {ENCODING!r}); {_REBUILD_HINT}")
    return manifest
