"""The `prepare` stage: read an image dataset, fit it to size/channels, write parquet shards + manifest.json on Ray Data.

The driver validates everything and loads or lists the source before Ray
starts, picks the rows and cuts them into shards; Ray Data encodes the shards in
parallel (the progress counts shards written) and a datasink writes each shard and
reports its checksum and pixel moments. The build goes to ``<out>.tmp-<random>``
and is moved to ``<out>`` only when complete, manifest last
(docs/architecture.md, section 1).

On a cluster, named datasets travel from the driver through Ray's object
store; an image folder and ``<out>`` must be visible to every node (an object
store URI such as s3://..., or a shared filesystem).
"""

from __future__ import annotations

import dataclasses
import datetime
import posixpath
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import ray
from ray.data import DataContext
from ray.data.block import Block, BlockAccessor
from ray.data.datasource import Datasink, WriteResult

import wgan
from pipelines.cluster.connect import init_ray, through_ray_client
from pipelines.cluster.progress import QueueFeed, StageProgress
from wgan.data import fs as datafs
from wgan.data.imagefolder import load_image_folder
from wgan.data.images import pack_images
from wgan.data.manifest import ENCODING, FORMAT_VERSION, MANIFEST_NAME, load_manifest, write_manifest
from wgan.data.parts import LoadedSource, Part, ShardPlan, plan_shards, rows_per_shard_for, select_rows
from wgan.data.shards import ShardSummary, encode_shard, write_shard
from wgan.errors import OutOfSpace, UserError, no_space
from pipelines.stage_options import PrepareOptions

IMAGEFOLDER = "imagefolder"
_TMP_MARK = ".tmp-"
_OLD_MARK = ".old-"


@dataclass(frozen=True)
class PrepareResult:
    out: str  # absolute path or URI of the dataset
    manifest: dict[str, Any]
    up_to_date: bool = False  # an identical dataset was already there; nothing was done


@through_ray_client
def prepare(
    dataset: str,
    path: str | None = None,
    *,
    options: PrepareOptions | None = None,
    out: str | None = None,
    force: bool = False,
    progress: bool = True,
    address: str | None = None,
) -> PrepareResult:
    """Prepare ``dataset`` (fashion-mnist, mnist, cifar10, stl10, or imagefolder with ``path``) into ``out``.

    ``options`` (`PrepareOptions`): the size, channels, splits and subset, as the manifest
    records them. Same options as an existing dataset at ``out``: nothing is done. Other
    options: UserError unless ``force``. Corrupt images in a folder are skipped and listed
    in the manifest, or fail the run with ``options.strict``. ``address``: a Ray
    cluster to encode on (default RAY_ADDRESS, else a local Ray); ``out`` must then be
    storage every node sees (a shared filesystem or a pyarrow URI such as s3://).
    """
    from wgan.data.sources import load_dataset  # here, not at the top: Ray workers import this module and need no torchvision

    options = (options or PrepareOptions()).validate()
    params = _validated_params(dataset, path, options)
    size, limit, seed = options.size, options.limit, options.seed
    out = datafs.absolute(out or default_out(dataset, path, size))
    problem = datafs.cannot_write(out)
    if problem:
        raise UserError(f"--out {out}: {problem}: give a directory the dataset can be written to")
    filesystem, out_path = datafs.resolve(out)
    _remove_leftovers(filesystem, out_path)
    existing = _up_to_date_manifest(filesystem, out_path, out, params, force)
    if existing is not None:
        return PrepareResult(out, existing, up_to_date=True)

    source = load_image_folder(params["path"]) if dataset == IMAGEFOLDER else load_dataset(dataset, params["splits"], options.source_dir)
    parts = select_rows(source.parts, limit, seed)
    row_bytes = size * size * params["channels"]
    plans = plan_shards(parts, options.rows_per_shard or rows_per_shard_for(sum(len(p) for p in parts), row_bytes))

    needed = _check_space(out, parts, size, params["channels"])

    init_ray(address)  # joins ``address`` or RAY_ADDRESS's cluster, else starts a local Ray; no-op if Ray is up
    tmp = f"{out_path}{_TMP_MARK}{secrets.token_hex(4)}"
    try:
        try:
            shards, unreadable = _encode_and_write(filesystem, tmp, parts, plans, size, params["channels"], progress)
        except Exception as err:
            if no_space(err) is None:
                raise
            raise OutOfSpace(f"--out {out}: no space left on device while writing the shards (about "
                             f"{_megabytes(needed)} needed): free space there or give another --out; "
                             f"nothing was kept") from err
        if options.strict and unreadable:
            bad_path, reason = unreadable[0]
            raise UserError(f"{bad_path}: unreadable image ({reason}); fix or remove it, or drop --strict to skip unreadable images")
        if not shards:
            raise UserError(f"no readable images in {source.origin}; {len(unreadable)} files could not be decoded")
        manifest = _manifest(params, source, shards, unreadable)
        write_manifest(filesystem, tmp, manifest)
        _publish(filesystem, tmp, out_path)
    finally:
        if datafs.exists(filesystem, tmp):
            filesystem.delete_dir(tmp)
    return PrepareResult(out, manifest)


# The share of a dataset encoded to estimate its size, and the margin over the estimate that is
# refused up front: shards of other rows compress a little differently.
_SPACE_SAMPLE_ROWS = 256
_SPACE_MARGIN = 1.1


def _check_space(out: str, parts: list[Part], size: int, channels: int) -> int | None:
    """Refuse, before anything is written, a dataset that ``out``'s filesystem has no room for; returns
    the bytes it needs, about: its first rows encoded as its shards will be (zstd parquet), scaled to
    every row. None where that is not knowable (an empty source; free space is unknown on object stores)."""
    part = next((p for p in parts if len(p)), None)
    if part is None:
        return None
    rows = part.encode(0, min(len(part), _SPACE_SAMPLE_ROWS), size, channels)
    if not len(rows.labels):
        return None
    sample = pa.table({"image": pack_images(rows.images), "label": rows.labels,
                       "split": pa.array([part.split] * len(rows.labels), type=pa.string())})
    needed = int(len(encode_shard(sample)) / len(rows.labels) * sum(len(p) for p in parts) * _SPACE_MARGIN)
    free = datafs.free_bytes(out)
    if free is not None and free < needed:
        raise OutOfSpace(f"--out {out}: the dataset needs about {_megabytes(needed)} and its filesystem has "
                         f"{_megabytes(free)} free: free space there or give another --out")
    return needed


def _megabytes(n: int | None) -> str:
    if n is None:
        return "an unknown amount"
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.0f} kB"


def default_out(dataset: str, path: str | None, size: int) -> str:
    """data/<dataset>-<size>px, or data/<folder name>-<size>px for an image folder."""
    name = posixpath.basename(path.rstrip("/")) if dataset == IMAGEFOLDER and path else dataset
    return f"data/{name}-{size}px"


def _validated_params(dataset: str, path: str | None, options: PrepareOptions) -> dict[str, Any]:
    """The parameters, checked and resolved (channels, splits, absolute paths), as recorded in manifest['params']."""
    from wgan.data.sources import DATASETS

    if dataset not in (*DATASETS, IMAGEFOLDER):
        raise UserError(f"unknown dataset {dataset!r}; choose one of: {', '.join((*DATASETS, IMAGEFOLDER))}")
    if dataset == IMAGEFOLDER:
        if not path:
            raise UserError("imagefolder needs the folder: wganctl prepare imagefolder PATH")
        known_splits, default_splits, own_channels = ("train",), ("train",), 3
    else:
        if path:
            raise UserError(f"{dataset} takes no PATH; to read a local copy of its files use --source-dir DIR")
        named = DATASETS[dataset]
        known_splits, default_splits, own_channels = named.splits, named.default_splits, named.channels
    source_dir, splits = options.source_dir, options.splits
    if dataset == IMAGEFOLDER and source_dir:
        raise UserError("--source-dir is for the named datasets; give the image folder as PATH")
    unknown = [split for split in splits or () if split not in known_splits]
    if unknown:
        raise UserError(f"{dataset} has no split {unknown[0]!r}; choose from: {', '.join(known_splits)}")
    return {
        "dataset": dataset,
        "path": datafs.absolute(path) if path else None,
        "size": options.size,
        "channels": options.channels or own_channels,
        "splits": [split for split in known_splits if split in (splits or default_splits)],
        "limit": options.limit,
        "seed": options.seed,
        "source_dir": datafs.absolute(source_dir) if source_dir else None,
        "strict": options.strict,
        "rows_per_shard": options.rows_per_shard,
    }


def _remove_leftovers(filesystem: pafs.FileSystem, out_path: str) -> None:
    """Delete build and swap directories of ``out`` left behind by runs that were killed."""
    parent, name = posixpath.split(out_path)
    if filesystem.get_file_info(parent).type != pafs.FileType.Directory:
        return
    for entry in filesystem.get_file_info(pafs.FileSelector(parent)):
        base = entry.base_name
        if entry.type == pafs.FileType.Directory and base.startswith((name + _TMP_MARK, name + _OLD_MARK)):
            filesystem.delete_dir(entry.path)


def _up_to_date_manifest(
    filesystem: pafs.FileSystem, out_path: str, out: str, params: dict[str, Any], force: bool
) -> dict[str, Any] | None:
    """The manifest at ``out`` if it was prepared with ``params`` and is intact; None if ``out`` is to be (re)built."""
    if force or not datafs.exists(filesystem, out_path):
        return None
    if not datafs.exists(filesystem, datafs.join(out_path, MANIFEST_NAME)):
        raise UserError(f"{out} exists and is not a prepared dataset; use --force to replace it or --out DIR to write elsewhere")
    manifest = load_manifest(out, verify=False)
    if manifest["params"] != params:
        changed = ", ".join(
            f"{key} {manifest['params'].get(key)!r} -> {value!r}" for key, value in params.items() if manifest["params"].get(key) != value
        )
        raise UserError(f"{out} was prepared with other parameters ({changed}); use --force to rebuild it or --out DIR to keep both")
    return load_manifest(out, verify=True)


def _encode_and_write(
    filesystem: pafs.FileSystem,
    directory: str,
    parts: list[Part],
    plans: list[ShardPlan],
    size: int,
    channels: int,
    progress: bool,
) -> tuple[list[ShardSummary], list[tuple[str, str]]]:
    """Run the Ray Data pipeline plans -> encoded rows -> shard files; the written shards (in order) and unreadable files.

    With ``progress``, the write tasks count the shards they write (`pipelines.cluster.progress`)."""
    context = DataContext.get_current().copy()
    context.execution_options.preserve_order = True
    # One fused operator: reserving part of the CPUs for "other operators" only idles them (half the CPUs on 2 cores).
    context.op_resource_reservation_enabled = False
    feed = QueueFeed(StageProgress("prepare", len(plans), "shards", enabled=progress))
    sink = _ShardSink(filesystem, directory, size, channels, feed.queue)
    with DataContext.current(context), feed:
        part_refs = [ray.put(part) for part in parts]
        (
            ray.data.from_items([dataclasses.asdict(plan) for plan in plans], override_num_blocks=len(plans))
            .map_batches(_encode_rows, batch_size=1, fn_kwargs={"parts": part_refs, "size": size, "channels": channels})
            .write_datasink(sink)
        )
    return sink.shards, sink.unreadable


def _encode_rows(batch: dict[str, np.ndarray], parts: list[ray.ObjectRef], size: int, channels: int) -> pa.Table:
    """One shard's rows as a table; unreadable files become rows with a null image and their path and reason."""
    plan = ShardPlan(**{key: int(values[0]) for key, values in batch.items()})
    part: Part = ray.get(parts[plan.part])
    rows = part.encode(plan.start, plan.stop, size, channels)
    bad = len(rows.unreadable)
    return pa.table(
        {
            "image": pa.concat_arrays([pack_images(rows.images), pa.nulls(bad, pa.binary())]),
            "label": np.concatenate([rows.labels, np.full(bad, -1, dtype=np.int64)]),
            "split": pa.array([part.split] * (len(rows.labels) + bad), type=pa.string()),
            "shard": np.full(len(rows.labels) + bad, plan.shard, dtype=np.int64),
            "unreadable_path": pa.array([None] * len(rows.labels) + [path for path, _ in rows.unreadable], type=pa.string()),
            "unreadable_reason": pa.array([None] * len(rows.labels) + [why for _, why in rows.unreadable], type=pa.string()),
        }
    )


class _ShardSink(Datasink[list[tuple[ShardSummary | None, list[tuple[str, str]]]]]):
    """Writes the rows of each shard number to part-<shard>.parquet; collects summaries and unreadable files on the driver."""

    def __init__(self, filesystem: pafs.FileSystem, directory: str, size: int, channels: int, progress=None) -> None:
        self.filesystem, self.directory, self.size, self.channels = filesystem, directory, size, channels
        self.progress = progress  # a Ray queue that each written shard is counted in, or None
        self.shards: list[ShardSummary] = []
        self.unreadable: list[tuple[str, str]] = []

    def on_write_start(self, schema: pa.Schema | None = None) -> None:
        self.filesystem.create_dir(self.directory, recursive=True)

    def write(self, blocks: Iterable[Block], ctx: Any) -> list[tuple[ShardSummary | None, list[tuple[str, str]]]]:
        table = pa.concat_tables([BlockAccessor.for_block(block).to_arrow() for block in blocks])
        results = []
        for shard in np.unique(table["shard"].to_numpy()):
            rows = table.filter(pc.equal(table["shard"], shard))
            readable = rows.filter(pc.is_null(rows["unreadable_path"]))
            unreadable = rows.filter(pc.is_valid(rows["unreadable_path"]))
            summary = (
                write_shard(self.filesystem, self.directory, int(shard), readable, self.size, self.channels)
                if readable.num_rows
                else None
            )
            results.append((summary, list(zip(unreadable["unreadable_path"].to_pylist(), unreadable["unreadable_reason"].to_pylist()))))
            if self.progress is not None:
                self.progress.put({"advance": 1})
        return results

    def on_write_complete(self, write_result: WriteResult) -> None:
        results = [result for task_results in write_result.write_returns for result in task_results]
        self.shards = sorted((summary for summary, _ in results if summary is not None), key=lambda summary: summary.index)
        if len({summary.index for summary in self.shards}) != len(self.shards):
            raise RuntimeError("a shard was split across write tasks; its file would be incomplete")
        self.unreadable = sorted(item for _, items in results for item in items)


def _manifest(
    params: dict[str, Any], source: LoadedSource, shards: list[ShardSummary], unreadable: list[tuple[str, str]]
) -> dict[str, Any]:
    count = sum(shard.rows for shard in shards)
    values = count * params["size"] ** 2 * 255.0
    sums = np.sum([shard.pixel_sum for shard in shards], axis=0, dtype=np.float64)
    squares = np.sum([shard.pixel_square_sum for shard in shards], axis=0, dtype=np.float64)
    mean = sums / values
    std = np.sqrt(np.maximum(squares / (values * 255.0) - mean**2, 0.0))
    return {
        "format_version": FORMAT_VERSION,
        "dataset": params["dataset"],
        "splits": params["splits"],
        "count": count,
        "size": params["size"],
        "channels": params["channels"],
        "encoding": ENCODING,
        "class_names": source.class_names,
        "mean": [round(float(m), 6) for m in mean],
        "std": [round(float(s), 6) for s in std],
        "shards": [{"path": shard.path, "rows": shard.rows, "sha256": shard.sha256} for shard in shards],
        "skipped": {"count": len(unreadable), "files": [path for path, _ in unreadable]},
        "params": params,
        "source": source.origin,
        "created_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "wganctl_version": wgan.__version__,
    }


def _publish(filesystem: pafs.FileSystem, tmp: str, out_path: str) -> None:
    """Put the finished build at ``out_path``; a dataset already there is set aside and deleted only once the new one is in."""
    previous = None
    if datafs.exists(filesystem, out_path):
        previous = f"{out_path}{_OLD_MARK}{secrets.token_hex(4)}"
        _move_dir(filesystem, out_path, previous, manifest_first=True)
    try:
        _move_dir(filesystem, tmp, out_path)
    except BaseException:
        if previous is not None:
            _move_dir(filesystem, previous, out_path)
        raise
    if previous is not None:
        filesystem.delete_dir(previous)


def _move_dir(filesystem: pafs.FileSystem, source: str, destination: str, manifest_first: bool = False) -> None:
    """Rename a dataset directory: atomic on a local disk. Object stores cannot rename a
    directory, so its files are moved one by one, the manifest last: ``destination`` is a
    dataset only once every shard is there. Moving a dataset out of the way
    (``manifest_first``), its manifest goes first, so that its old place stops being a
    dataset before any shard leaves it."""
    if isinstance(filesystem, pafs.LocalFileSystem):
        filesystem.move(source, destination)
        return
    files = [e.path for e in filesystem.get_file_info(pafs.FileSelector(source, recursive=True)) if e.type == pafs.FileType.File]
    filesystem.create_dir(destination, recursive=True)
    for path in sorted(files, key=lambda p: (posixpath.basename(p) == MANIFEST_NAME) != manifest_first):
        filesystem.move(path, datafs.join(destination, posixpath.relpath(path, source)))
    filesystem.delete_dir(source)
