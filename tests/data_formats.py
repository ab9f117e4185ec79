"""Tiny datasets written in the real on-disk formats, so tests read them through the real torchvision/PIL code.

* MNIST / Fashion-MNIST: IDX files (big-endian header, magic 2051 images / 2049 labels), optionally gzipped.
* CIFAR-10: ``cifar-10-batches-py`` pickles written like the original Python 2 ones (keys come back as
  b'data' / b'labels' under ``encoding='bytes'``, as 'data' under torchvision's ``encoding='latin1'``),
  ``data`` uint8 N x 3072 channel-planar, plus ``batches.meta`` with ``label_names``.
* STL-10: ``stl10_binary`` with ``*_X.bin`` uint8 N x 3 x 96 x 96, each channel stored column-major,
  ``*_y.bin`` labels 1..10, ``unlabeled_X.bin`` and ``class_names.txt``.
* An image folder: PNG and JPEG files in class subfolders, a corrupt PNG and a non-image file.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
STL_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


@dataclass
class Split:
    images: np.ndarray  # (N, H, W, C) uint8, as a reader should see them
    labels: np.ndarray  # int64, 0-based (-1 unlabelled)


def random_images(rng: np.random.Generator, count: int, size: int, channels: int) -> np.ndarray:
    """Smooth random images (a resize of them is a meaningful check) with a full 0..255 range."""
    coarse = rng.integers(0, 256, size=(count, size // 4 + 1, size // 4 + 1, channels), dtype=np.uint8)
    smooth = [np.asarray(Image.fromarray(c.squeeze(-1) if channels == 1 else c).resize((size, size), Image.Resampling.BILINEAR)) for c in coarse]
    return np.stack(smooth).reshape(count, size, size, channels)


# --- MNIST / Fashion-MNIST ---------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array: magic 0x0000 08 <ndim> (2051 for images, 2049 for labels), big-endian dims."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_mnist(directory: Path, train: int, test: int, seed: int = 0, gz: bool = True) -> dict[str, Split]:
    """The four IDX files of MNIST / Fashion-MNIST in ``directory``."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split, prefix, count in (("train", "train", train), ("test", "t10k", test)):
        images = random_images(rng, count, 28, 1)
        labels = rng.integers(0, 10, size=count).astype(np.uint8)
        for kind, array in (("images-idx3", images[..., 0]), ("labels-idx1", labels)):
            data = idx_bytes(array)
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                (directory / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (directory / name).write_bytes(data)
        splits[split] = Split(images, labels.astype(np.int64))
    return splits


# --- CIFAR-10 --------------------------------------------------------------------------------------------


class _Python2Pickler(pickle._Pickler):
    """Writes ``bytes`` as Python 2 ``str`` opcodes, as the original CIFAR-10 pickles hold them."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def python2_pickle(obj: object) -> bytes:
    out = io.BytesIO()
    _Python2Pickler(out, protocol=2).dump(obj)
    return out.getvalue()


def write_cifar10(directory: Path, per_batch: int, test: int, seed: int = 0, archive: bool = False) -> dict[str, Split]:
    """``cifar-10-batches-py/`` in ``directory`` (or ``cifar-10-python.tar.gz`` holding it, with ``archive``)."""
    rng = np.random.default_rng(seed)
    batches = directory / "cifar-10-batches-py"
    batches.mkdir(parents=True, exist_ok=True)
    parts: dict[str, list[Split]] = {"train": [], "test": []}
    names = [(f"data_batch_{i}", "train", per_batch) for i in range(1, 6)] + [("test_batch", "test", test)]
    for name, split, count in names:
        images = random_images(rng, count, 32, 3)
        labels = rng.integers(0, 10, size=count)
        planar = images.transpose(0, 3, 1, 2).reshape(count, 3072)
        entry = {b"batch_label": name.encode(), b"labels": [int(x) for x in labels], b"data": planar,
                 b"filenames": [f"{name}_{i}.png".encode() for i in range(count)]}
        (batches / name).write_bytes(python2_pickle(entry))
        parts[split].append(Split(images, labels.astype(np.int64)))
    meta = {b"label_names": [c.encode() for c in CIFAR_CLASSES], b"num_cases_per_batch": per_batch, b"num_vis": 3072}
    (batches / "batches.meta").write_bytes(python2_pickle(meta))
    if archive:
        with tarfile.open(directory / "cifar-10-python.tar.gz", "w:gz") as tar:
            tar.add(batches, arcname="cifar-10-batches-py")
        for path in batches.iterdir():
            path.unlink()
        batches.rmdir()
    return {split: Split(np.concatenate([s.images for s in ss]), np.concatenate([s.labels for s in ss])) for split, ss in parts.items()}


# --- STL-10 --------------------------------------------------------------------------------------------------


def stl10_bytes(images: np.ndarray) -> bytes:
    """(N, 96, 96, 3) HWC -> the STL-10 layout: per image 3 channels, each 96 x 96 column-major."""
    return np.ascontiguousarray(images.transpose(0, 3, 2, 1)).tobytes()


def write_stl10(directory: Path, train: int, test: int, unlabeled: int, seed: int = 0) -> dict[str, Split]:
    """``stl10_binary/`` in ``directory``."""
    rng = np.random.default_rng(seed)
    folder = directory / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split, count in (("train", train), ("test", test), ("unlabeled", unlabeled)):
        images = random_images(rng, count, 96, 3)
        (folder / f"{split}_X.bin").write_bytes(stl10_bytes(images))
        if split == "unlabeled":
            labels = np.full(count, -1, dtype=np.int64)
        else:
            labels = rng.integers(0, 10, size=count).astype(np.int64)
            (folder / f"{split}_y.bin").write_bytes((labels + 1).astype(np.uint8).tobytes())
        splits[split] = Split(images, labels)
    (folder / "class_names.txt").write_text("\n".join(STL_CLASSES) + "\n")
    return splits


# --- image folder ------------------------------------------------------------------------------------------


@dataclass
class ImageFolderFiles:
    root: Path
    images: dict[str, np.ndarray]  # relative path of each readable PNG -> RGB pixels
    corrupt: Path
    ignored: Path


def write_image_folder(directory: Path, per_class: int = 4, size: int = 40, seed: int = 0) -> ImageFolderFiles:
    """Class subfolders ``cats``/``dogs`` of PNGs (one of constant colour), a JPEG, a corrupt PNG and notes.txt."""
    rng = np.random.default_rng(seed)
    images: dict[str, np.ndarray] = {}
    for name in ("dogs", "cats"):
        (directory / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = random_images(rng, 1, size, 3)[0]
            Image.fromarray(pixels).save(directory / name / f"{i:03d}.png")
            images[f"{name}/{i:03d}.png"] = pixels
    constant = np.zeros((size, size, 3), dtype=np.uint8) + np.array([200, 100, 50], dtype=np.uint8)
    Image.fromarray(constant).save(directory / "cats" / "constant.png")
    images["cats/constant.png"] = constant
    Image.fromarray(random_images(rng, 1, size, 3)[0]).save(directory / "dogs" / "photo.jpg", quality=90)
    corrupt = directory / "dogs" / "broken.png"
    png = io.BytesIO()
    Image.fromarray(random_images(rng, 1, size, 3)[0]).save(png, format="PNG")
    corrupt.write_bytes(png.getvalue()[: len(png.getvalue()) // 2])  # truncated mid-stream
    ignored = directory / "cats" / "notes.txt"
    ignored.write_text("not an image\n")
    return ImageFolderFiles(directory, images, corrupt, ignored)
