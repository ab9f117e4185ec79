"""The reading side of a prepared dataset: manifest checks, decoding, the plain-PyTorch reader, Ray Data paths."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipelines.prepare import prepare
from tests import data_formats
from wgan.data import FORMAT_VERSION, ShardReader, decode_images, load_manifest, manifest_sha256, shard_paths
from wgan.errors import UserError
from pipelines.stage_options import PrepareOptions

TRAIN, TEST = 45, 20


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, ray_session) -> Path:
    """A real prepared dataset: MNIST-format files -> prepare (28 -> 32 px, 3 channels), several shards."""
    root = tmp_path_factory.mktemp("reader")
    data_formats.write_mnist(root / "src", train=TRAIN, test=TEST)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WGANCTL_OFFLINE", "1")
        env.setenv("WGANCTL_CACHE", str(root / "cache"))
        prepare("mnist", options=PrepareOptions(size=32, channels=3, source_dir=str(root / "src"), rows_per_shard=16), out=str(root / "data"), progress=False)
    return root / "data"


@pytest.fixture
def copy_of(dataset: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(dataset, tmp_path / "copy"))


def all_rows(dataset: Path) -> tuple[pa.Table, dict]:
    manifest = load_manifest(str(dataset))
    return pa.concat_tables(pq.read_table(path) for path in shard_paths(str(dataset), manifest)), manifest


def test_decode_images_gives_nchw_float_in_minus_one_one(dataset: Path) -> None:
    table, manifest = all_rows(dataset)
    images = decode_images(table["image"], manifest["size"], manifest["channels"])
    assert images.shape == (TRAIN + TEST, 3, 32, 32) and images.dtype == torch.float32 and images.is_contiguous()
    assert images.min() >= -1.0 and images.max() <= 1.0 and images.min() < -0.9 and images.max() > 0.9
    raw = np.frombuffer(table["image"][0].as_py(), dtype=np.uint8).reshape(32, 32, 3)
    assert torch.equal(images[0], torch.from_numpy(raw.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1))
    for same in (table["image"].combine_chunks(), table["image"].to_pylist(), table["image"].to_numpy(zero_copy_only=False)):
        assert torch.equal(decode_images(same, 32, 3), images)
    assert torch.equal(decode_images(table["image"].combine_chunks().slice(7, 5), 32, 3), images[7:12])
    with pytest.raises(ValueError, match="bytes each"):
        decode_images(table["image"], 28, 3)


def test_reader_yields_every_row_once_as_batches(dataset: Path) -> None:
    table, _ = all_rows(dataset)
    batches = list(ShardReader(str(dataset), batch_size=8, seed=1))
    images = torch.cat([x for x, _ in batches])
    labels = torch.cat([y for _, y in batches])
    assert [len(y) for _, y in batches] == [8] * 8 + [1]
    assert all(x.shape[1:] == (3, 32, 32) and x.dtype == torch.float32 for x, _ in batches) and labels.dtype == torch.int64
    assert sorted(labels.tolist()) == sorted(table["label"].to_pylist())
    expected = decode_images(table["image"], 32, 3)
    assert sorted(map(bytes, expected.numpy())) == sorted(map(bytes, images.numpy()))


def test_reader_shuffle_is_deterministic_per_seed_and_epoch(dataset: Path) -> None:
    def labels(reader: ShardReader) -> list[int]:
        return [v for _, y in reader for v in y.tolist()]

    ordered = labels(ShardReader(str(dataset), batch_size=10, shuffle=False))
    assert ordered == all_rows(dataset)[0]["label"].to_pylist()
    reader = ShardReader(str(dataset), batch_size=10, seed=5, shuffle_buffer=32)
    first = labels(reader)
    assert first == labels(ShardReader(str(dataset), batch_size=10, seed=5, shuffle_buffer=32)) and first != ordered
    reader.set_epoch(1)
    assert labels(reader) != first
    assert len(list(ShardReader(str(dataset), batch_size=10, drop_last=True))) == (TRAIN + TEST) // 10


def test_reader_splits_shards_across_dataloader_workers(dataset: Path) -> None:
    loader = torch.utils.data.DataLoader(ShardReader(str(dataset), batch_size=16, seed=2), batch_size=None, num_workers=2)
    assert sum(len(y) for _, y in loader) == TRAIN + TEST


def test_manifest_and_paths(dataset: Path) -> None:
    manifest = load_manifest(str(dataset))
    assert manifest["format_version"] == FORMAT_VERSION and manifest["count"] == TRAIN + TEST
    assert manifest_sha256(str(dataset)) == hashlib.sha256((dataset / "manifest.json").read_bytes()).hexdigest()
    paths = shard_paths(str(dataset), manifest)
    assert paths == [str(dataset / s["path"]) for s in manifest["shards"]] and all(Path(p).is_file() for p in paths)
    assert shard_paths("s3://bucket/data", manifest)[0] == "s3://bucket/data/part-00000.parquet"


def test_ray_data_reads_the_shard_paths(dataset: Path, ray_session) -> None:
    import ray

    manifest = load_manifest(str(dataset))
    rows = ray.data.read_parquet(shard_paths(str(dataset), manifest)).take_batch(100, batch_format="pyarrow")
    assert decode_images(rows["image"], manifest["size"], manifest["channels"]).shape == (TRAIN + TEST, 3, 32, 32)


def test_tampered_shard_is_refused(copy_of: Path) -> None:
    shard = copy_of / "part-00001.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"part-00001.parquet does not match its sha256 .*--force") as err:
        ShardReader(str(copy_of))
    assert "\n" not in str(err.value)
    load_manifest(str(copy_of), verify=False)  # the manifest itself is fine


def test_missing_shard_is_refused(copy_of: Path) -> None:
    (copy_of / "part-00002.parquet").unlink()
    with pytest.raises(UserError, match="part-00002.parquet listed in manifest.json is missing"):
        load_manifest(str(copy_of))


def test_other_format_version_is_refused(copy_of: Path) -> None:
    manifest = json.loads((copy_of / "manifest.json").read_text())
    manifest["format_version"] = 2
    (copy_of / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="format_version 2 is not supported"):
        load_manifest(str(copy_of), verify=False)


def test_directory_without_manifest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a prepared dataset"):
        load_manifest(str(tmp_path))


def test_in_memory_batches_visit_every_row_once_per_epoch_in_a_new_order() -> None:
    from wgan.data.in_memory import shuffled_batches

    count, batch = 10, 3  # 3 batches an epoch, the 10th row left over each epoch
    pixels = torch.arange(count, dtype=torch.uint8).view(count, 1, 1, 1).expand(count, 2, 2, 1).contiguous()
    labels = torch.arange(count) + 100
    stream = shuffled_batches(pixels, labels, batch, seed=3)
    epochs = []
    for _ in range(3):
        rows = []
        for _ in range(count // batch):
            images, batch_labels = next(stream)
            assert images.shape == (batch, 1, 2, 2) and images.dtype == torch.float32
            ids = torch.round((images[:, 0, 0, 0] + 1) * 127.5).long()
            assert torch.equal(ids + 100, batch_labels)  # labels travel with their images
            rows += ids.tolist()
        assert len(set(rows)) == len(rows) == count - count % batch
        epochs.append(rows)
    assert epochs[0] != epochs[1] != epochs[2]  # reshuffled every epoch
    again = shuffled_batches(pixels, labels, batch, seed=3)
    assert torch.equal(next(again)[1], torch.tensor(epochs[0][:batch]) + 100)  # same seed, same order
    other_seed = next(shuffled_batches(pixels, labels, batch, seed=4))[1]
    assert not torch.equal(other_seed, torch.tensor(epochs[0][:batch]) + 100)  # another seed, another order
    with pytest.raises(ValueError, match="fewer than one batch"):
        next(shuffled_batches(pixels, labels, count + 1, seed=0))
    images, _ = next(shuffled_batches(torch.full((4, 2, 2, 1), 255, dtype=torch.uint8), labels[:4], 4, seed=0))
    assert torch.all(images == 1.0)


def test_rows_by_position_across_shards_in_the_order_asked(dataset: Path) -> None:
    """`wgan.data.rows`: labels in row order, and images of global row numbers in the order given,
    repeats and shard boundaries (16 rows a shard) included, as evaluate's nearest neighbours ask."""
    from wgan.data.images import unpack_images
    from wgan.data.rows import dataset_labels, read_rows

    table, manifest = all_rows(dataset)
    assert len(manifest["shards"]) > 2
    assert np.array_equal(dataset_labels(str(dataset), manifest), table["label"].to_numpy())
    rows = np.array([TRAIN + TEST - 1, 3, 3, 16, 15, 0, 33])
    every = unpack_images(table["image"], 32, 3)
    assert np.array_equal(read_rows(str(dataset), manifest, rows), every[rows])
