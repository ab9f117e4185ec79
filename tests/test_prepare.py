"""`wganctl prepare` end to end: real files in each format, real torchvision/PIL, real local Ray Data, real parquet."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

import pipelines.prepare as prepare_module
from pipelines.cli import app
from pipelines.prepare import prepare
from tests import data_formats
from tests.cli_output import assert_one_line_error
from wgan.data.images import unpack_images
from pipelines.stage_options import PrepareOptions

FASHION_MNIST_SYSTEM_COPY = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def offline_with_empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No network (the machine is offline anyway) and an empty download cache."""
    monkeypatch.setenv("WGANCTL_OFFLINE", "1")
    monkeypatch.setenv("WGANCTL_CACHE", str(tmp_path / "cache"))


def read_rows(out: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """All rows of a prepared dataset in manifest order, read with plain pyarrow."""
    manifest = json.loads((out / "manifest.json").read_text())
    tables = [pq.read_table(out / shard["path"]) for shard in manifest["shards"]]
    images = np.concatenate([unpack_images(t["image"], manifest["size"], manifest["channels"]) for t in tables])
    labels = np.concatenate([t["label"].to_numpy() for t in tables])
    splits = [s for t in tables for s in t["split"].to_pylist()]
    return images, labels, splits


def pil_resized(pixels: np.ndarray, size: int, mode: str | None = None) -> np.ndarray:
    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    if mode:
        image = image.convert(mode)
    resized = np.asarray(image.resize((size, size), Image.Resampling.BICUBIC))
    return resized.reshape(size, size, -1)


def cli(*args: str):
    return CliRunner().invoke(app, ["prepare", *args])



def test_mnist_idx_gz_is_resized_like_pil_with_labels_and_checksums(tmp_path: Path, ray_session) -> None:
    source = data_formats.write_mnist(tmp_path / "src", train=30, test=12)
    out = tmp_path / "out"
    result = prepare("mnist", options=PrepareOptions(size=32, source_dir=str(tmp_path / "src"), rows_per_shard=16), out=str(out), progress=False)

    manifest = result.manifest
    assert result.out == str(out) and not result.up_to_date
    assert (manifest["count"], manifest["size"], manifest["channels"], manifest["splits"]) == (42, 32, 1, ["train", "test"])
    assert manifest["class_names"][0] == "0 - zero" and manifest["skipped"] == {"count": 0, "files": []}
    assert [s["rows"] for s in manifest["shards"]] == [16, 14, 12]  # shards never span splits
    for shard in manifest["shards"]:
        assert hashlib.sha256((out / shard["path"]).read_bytes()).hexdigest() == shard["sha256"]
        assert pq.ParquetFile(out / shard["path"]).metadata.row_group(0).column(0).compression == "ZSTD"

    images, labels, splits = read_rows(out)
    inputs = np.concatenate([source["train"].images, source["test"].images])
    assert np.array_equal(images, np.stack([pil_resized(x, 32) for x in inputs]))
    assert np.array_equal(labels, np.concatenate([source["train"].labels, source["test"].labels]))
    assert splits == ["train"] * 30 + ["test"] * 12
    pixels = images / 255.0
    assert manifest["mean"] == pytest.approx([pixels.mean()], abs=1e-6)
    assert manifest["std"] == pytest.approx([pixels.std()], abs=1e-6)
    assert manifest["params"]["source_dir"] == str(tmp_path / "src") and manifest["wganctl_version"]


def test_fashion_mnist_uncompressed_gray_to_rgb_without_resize(tmp_path: Path, ray_session) -> None:
    source = data_formats.write_mnist(tmp_path / "src", train=20, test=5, gz=False)
    out = tmp_path / "out"
    prepare("fashion-mnist", options=PrepareOptions(size=28, channels=3, splits=["test"], source_dir=str(tmp_path / "src")), out=str(out), progress=False)
    images, labels, splits = read_rows(out)
    assert np.array_equal(images, np.repeat(source["test"].images, 3, axis=-1))
    assert np.array_equal(labels, source["test"].labels) and set(splits) == {"test"}


@pytest.mark.parametrize("archive", [False, True], ids=["batches-folder", "tar.gz"])
def test_cifar10_pickles_downscaled_and_converted_to_gray(tmp_path: Path, ray_session, archive: bool) -> None:
    source = data_formats.write_cifar10(tmp_path / "src", per_batch=6, test=10, archive=archive)
    out = tmp_path / "out"
    result = prepare("cifar10", options=PrepareOptions(size=16, channels=1, source_dir=str(tmp_path / "src")), out=str(out), progress=False)
    assert result.manifest["count"] == 40 and result.manifest["class_names"] == data_formats.CIFAR_CLASSES
    images, labels, _ = read_rows(out)
    inputs = np.concatenate([source["train"].images, source["test"].images])
    assert np.array_equal(images, np.stack([pil_resized(x, 16, mode="L") for x in inputs]))
    assert np.array_equal(labels, np.concatenate([source["train"].labels, source["test"].labels]))


def test_stl10_binary_defaults_to_train_and_unlabeled(tmp_path: Path, ray_session) -> None:
    source = data_formats.write_stl10(tmp_path / "src", train=8, test=5, unlabeled=12)
    out = tmp_path / "out"
    result = prepare("stl10", options=PrepareOptions(size=64, source_dir=str(tmp_path / "src")), out=str(out), progress=False)
    manifest = result.manifest
    assert manifest["splits"] == ["train", "unlabeled"] and manifest["count"] == 20
    assert manifest["class_names"] == data_formats.STL_CLASSES and manifest["channels"] == 3
    images, labels, splits = read_rows(out)
    inputs = np.concatenate([source["train"].images, source["unlabeled"].images])
    assert np.array_equal(images, np.stack([pil_resized(x, 64) for x in inputs]))
    assert np.array_equal(labels, np.concatenate([source["train"].labels, np.full(12, -1)]))
    assert splits == ["train"] * 8 + ["unlabeled"] * 12


def test_image_folder_labels_skips_corrupt_and_ignores_other_files(tmp_path: Path, ray_session) -> None:
    folder = data_formats.write_image_folder(tmp_path / "pets")
    out = tmp_path / "out"
    result = cli("imagefolder", str(folder.root), "--size", "32", "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    assert "skipped 1 unreadable files" in result.output

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["class_names"] == ["cats", "dogs"]
    assert manifest["count"] == len(folder.images) + 1  # the PNGs and the JPEG; not the .txt, not the corrupt PNG
    assert manifest["skipped"] == {"count": 1, "files": [str(folder.corrupt)]}
    images, labels, _ = read_rows(out)
    assert sorted(labels.tolist()) == [0] * 5 + [1] * 5
    constant = images[(images == images[:, :1, :1, :]).all(axis=(1, 2, 3))]
    assert len(constant) == 1 and constant[0, 0, 0].tolist() == [200, 100, 50]
    expected = {pil_resized(pixels, 32).tobytes() for pixels in folder.images.values()}
    assert expected <= {image.tobytes() for image in images}


def test_strict_fails_on_corrupt_image_and_leaves_nothing_behind(tmp_path: Path, ray_session) -> None:
    folder = data_formats.write_image_folder(tmp_path / "pets")
    out = tmp_path / "out"
    assert_one_line_error(cli("imagefolder", str(folder.root), "--out", str(out), "--strict", "--quiet"), str(folder.corrupt), "--strict")
    assert list(tmp_path.iterdir()) == [tmp_path / "pets"]  # no <out>, no <out>.tmp-*


def test_rerun_is_a_no_op_other_params_need_force(tmp_path: Path, ray_session) -> None:
    data_formats.write_mnist(tmp_path / "src", train=10, test=4)
    out = tmp_path / "out"
    args = ("mnist", "--source-dir", str(tmp_path / "src"), "--out", str(out), "--quiet")
    assert cli(*args).exit_code == 0
    stamp = (out / "manifest.json").stat().st_mtime_ns

    again = cli(*args)
    assert again.exit_code == 0 and "up to date" in again.output
    assert (out / "manifest.json").stat().st_mtime_ns == stamp

    assert_one_line_error(cli(*args, "--size", "16"), "--force", "size 32 -> 16")
    assert (out / "manifest.json").stat().st_mtime_ns == stamp

    forced = cli(*args, "--size", "16", "--force")
    assert forced.exit_code == 0, forced.output
    assert json.loads((out / "manifest.json").read_text())["size"] == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "out", "src"]


def test_failed_final_move_keeps_the_previous_dataset_and_no_tmp(tmp_path: Path, ray_session, monkeypatch) -> None:
    data_formats.write_mnist(tmp_path / "src", train=10, test=4)
    out = tmp_path / "out"
    first = prepare("mnist", options=PrepareOptions(source_dir=str(tmp_path / "src")), out=str(out), progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_move = prepare_module._move_dir

    def move_failing_for_the_new_build(filesystem, source, destination, **options):
        if ".tmp-" in source:
            raise OSError("disk full")
        real_move(filesystem, source, destination, **options)

    monkeypatch.setattr(prepare_module, "_move_dir", move_failing_for_the_new_build)
    with pytest.raises(OSError, match="disk full"):
        prepare("mnist", options=PrepareOptions(size=16, source_dir=str(tmp_path / "src")), out=str(out), force=True, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "out", "src"]

    fresh = tmp_path / "fresh"
    with pytest.raises(OSError, match="disk full"):
        prepare("mnist", options=PrepareOptions(source_dir=str(tmp_path / "src")), out=str(fresh), progress=False)
    assert not fresh.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["cache", "out", "src"]
    assert first.manifest["count"] == 14


def test_stale_tmp_dir_is_removed_by_the_next_run(tmp_path: Path, ray_session) -> None:
    data_formats.write_mnist(tmp_path / "src", train=6, test=2)
    stale = tmp_path / "out.tmp-deadbeef"
    stale.mkdir()
    (stale / "part-00000.parquet").write_bytes(b"half")
    prepare("mnist", options=PrepareOptions(source_dir=str(tmp_path / "src")), out=str(tmp_path / "out"), progress=False)
    assert not stale.exists() and (tmp_path / "out" / "manifest.json").exists()


def test_limit_and_seed_choose_a_deterministic_subset(tmp_path: Path, ray_session) -> None:
    data_formats.write_mnist(tmp_path / "src", train=50, test=10)

    def build(name: str, seed: int) -> tuple[list[str], np.ndarray]:
        result = prepare("mnist", options=PrepareOptions(limit=17, seed=seed, source_dir=str(tmp_path / "src")), out=str(tmp_path / name), progress=False)
        assert result.manifest["count"] == 17
        return [s["sha256"] for s in result.manifest["shards"]], read_rows(tmp_path / name)[0]

    first, again, other = build("a", 3), build("b", 3), build("c", 4)
    assert first[0] == again[0] and np.array_equal(first[1], again[1])
    assert not np.array_equal(first[1], other[1])


@pytest.mark.skipif(not FASHION_MNIST_SYSTEM_COPY.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_offline_default_finds_the_debian_copy(tmp_path: Path, ray_session) -> None:
    result = prepare("fashion-mnist", options=PrepareOptions(limit=200), out=str(tmp_path / "out"), progress=False)
    manifest = result.manifest
    assert manifest["source"] == str(FASHION_MNIST_SYSTEM_COPY) and manifest["count"] == 200
    assert manifest["class_names"][0] == "T-shirt/top" and set(read_rows(tmp_path / "out")[1]) <= set(range(10))


# --- errors: one line, exit code 2 -----------------------------------------------------------------------------


def test_unknown_dataset(tmp_path: Path) -> None:
    assert_one_line_error(cli("imagenet", "--out", str(tmp_path / "o")), "unknown dataset 'imagenet'", "fashion-mnist")


@pytest.mark.parametrize(
    "args, fragment",
    [(["--size", "0"], "--size"), (["--channels", "2"], "--channels"), (["--split", "unlabeled"], "no split 'unlabeled'"),
     (["--limit", "0"], "--limit")],
)
def test_bad_arguments(tmp_path: Path, args: list[str], fragment: str) -> None:
    assert_one_line_error(cli("mnist", "--source-dir", str(tmp_path), *args), fragment)


def test_empty_image_folder(tmp_path: Path) -> None:
    (tmp_path / "empty" / "cats").mkdir(parents=True)
    (tmp_path / "empty" / "cats" / "readme.txt").write_text("no images here")
    assert_one_line_error(cli("imagefolder", str(tmp_path / "empty"), "--out", str(tmp_path / "o")), "holds no images")


def test_missing_file(tmp_path: Path) -> None:
    data_formats.write_mnist(tmp_path / "src", train=4, test=2)
    (tmp_path / "src" / "t10k-labels-idx1-ubyte.gz").unlink()
    assert_one_line_error(cli("mnist", "--source-dir", str(tmp_path / "src")), "t10k-labels-idx1-ubyte not found", "--source-dir")


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("dataset, damaged", [
    ("mnist", "train-images-idx3-ubyte.gz"),
    ("mnist", "t10k-labels-idx1-ubyte"),
    ("cifar10", "cifar-10-batches-py/data_batch_3"),
    ("stl10", "stl10_binary/unlabeled_X.bin"),
])
def test_truncated_file_is_named(tmp_path: Path, dataset: str, damaged: str) -> None:
    src = tmp_path / "src"
    if dataset == "mnist":
        data_formats.write_mnist(src, train=6, test=3, gz=damaged.endswith(".gz"))
    elif dataset == "cifar10":
        data_formats.write_cifar10(src, per_batch=2, test=2)
    else:
        data_formats.write_stl10(src, train=2, test=2, unlabeled=3)
    truncate(src / damaged)
    assert_one_line_error(cli(dataset, "--source-dir", str(src), "--out", str(tmp_path / "o")), str(src / damaged), "truncated or corrupt")
    assert not (tmp_path / "o").exists()


def test_mnist_with_fewer_labels_than_images(tmp_path: Path) -> None:
    data_formats.write_mnist(tmp_path / "src", train=6, test=3, gz=False)
    labels = tmp_path / "src" / "train-labels-idx1-ubyte"
    labels.write_bytes(data_formats.idx_bytes(np.zeros(5, dtype=np.uint8)))
    assert_one_line_error(cli("mnist", "--source-dir", str(tmp_path / "src")), "6 images but 5 labels", str(labels))


@pytest.mark.parametrize("dataset", ["mnist", "cifar10", "stl10", "fashion-mnist"])
def test_offline_without_local_copy_fails_at_once(tmp_path: Path, monkeypatch, dataset: str) -> None:
    monkeypatch.setenv("WGANCTL_SYSTEM_DATASETS", str(tmp_path / "no-debian-packages"))
    result = cli(dataset, "--out", str(tmp_path / "o"))
    assert_one_line_error(result, "no network", "--source-dir")
    if dataset == "fashion-mnist":
        assert "apt-get install dataset-fashion-mnist" in result.output


def test_gzip_of_the_debian_layout_is_read_directly(tmp_path: Path, ray_session, monkeypatch) -> None:
    """A system copy laid out like the Debian package is found without --source-dir."""
    source = data_formats.write_mnist(tmp_path / "datasets" / "fashion-mnist", train=5, test=3)
    monkeypatch.setenv("WGANCTL_SYSTEM_DATASETS", str(tmp_path / "datasets"))
    result = prepare("fashion-mnist", options=PrepareOptions(size=28), out=str(tmp_path / "out"), progress=False)
    assert result.manifest["source"] == str(tmp_path / "datasets" / "fashion-mnist")
    assert np.array_equal(read_rows(tmp_path / "out")[0][:5], source["train"].images)
    assert gzip.decompress((tmp_path / "datasets" / "fashion-mnist" / "train-images-idx3-ubyte.gz").read_bytes())[:4] == b"\x00\x00\x08\x03"
    assert os.listdir(tmp_path / "cache") == []  # staging was cleaned up
