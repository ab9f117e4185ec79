"""The named datasets (fashion-mnist, mnist, cifar10, stl10): find their original files, load them with torchvision.

Where the files come from, first match wins: ``--source-dir``; the cache
(``$WGANCTL_CACHE``, default ``~/.cache/wganctl``); for Fashion-MNIST the Debian
package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``); a
torchvision download into the cache when the network answers within 3 s
(``WGANCTL_OFFLINE=1`` forces offline). The files are staged (linked, or
decompressed / extracted with torchvision's ``extract_archive``) into the layout
torchvision expects and read by torchvision's own classes. Those classes check the
md5 of the official files; user copies and test files differ, so presence is
checked instead and damaged files surface as parse errors, reported as one
UserError line naming the file.
"""

from __future__ import annotations

import os
import pickle
import socket
import tarfile
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError
from urllib.parse import urlparse

import numpy as np
from torchvision.datasets import CIFAR10, MNIST, STL10, FashionMNIST
from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor
from torchvision.datasets.utils import extract_archive

from wgan.data.parts import ArrayPart, LoadedSource
from wgan.errors import UserError, first_line

CONNECT_TIMEOUT_S = 3.0
# What torchvision's parsers raise on truncated or foreign files (asserts and reshapes in MNIST/STL-10, pickle in CIFAR).
PARSE_ERRORS = (AssertionError, KeyError, IndexError, RuntimeError, TypeError, ValueError, EOFError, OSError, pickle.UnpicklingError)
_EXTRACT_ERRORS = (EOFError, OSError, tarfile.TarError, zlib.error)


class _CIFAR10Present(CIFAR10):
    """CIFAR10 checking that its files exist rather than that they are byte-identical to the official ones."""

    train_list = [[name, None] for name, _ in CIFAR10.train_list]
    test_list = [[name, None] for name, _ in CIFAR10.test_list]
    meta = {**CIFAR10.meta, "md5": None}


class _STL10Present(STL10):
    """STL10 checking that its files exist rather than that they are byte-identical to the official ones."""

    train_list = [[name, None] for name, _ in STL10.train_list]
    test_list = [[name, None] for name, _ in STL10.test_list]


Loaded = tuple[np.ndarray, np.ndarray, list[str]]  # (N, H, W, C) uint8 images, int64 labels, class names


def _load_mnist_like(dataset_class: type[MNIST]) -> Callable[[str, str], Loaded]:
    def load(root: str, split: str) -> Loaded:
        dataset = dataset_class(root, train=split == "train", download=False)
        return dataset.data.numpy()[..., None], dataset.targets.numpy().astype(np.int64), list(dataset.classes)

    return load


def _load_cifar10(root: str, split: str) -> Loaded:
    dataset = _CIFAR10Present(root, train=split == "train", download=False)
    return dataset.data, np.asarray(dataset.targets, dtype=np.int64), list(dataset.classes)


def _load_stl10(root: str, split: str) -> Loaded:
    dataset = _STL10Present(root, split=split, download=False)
    return dataset.data.transpose(0, 2, 3, 1), dataset.labels.astype(np.int64), list(dataset.classes)


def _probe_idx(path: Path) -> None:
    read_sn3_pascalvincent_tensor(str(path))


def _probe_pickle(path: Path) -> None:
    with open(path, "rb") as handle:
        pickle.load(handle, encoding="latin1")


def _probe_stl10(path: Path) -> None:
    if path.name.endswith("_X.bin"):
        np.fromfile(path, dtype=np.uint8).reshape(-1, 3, 96, 96)


@dataclass(frozen=True)
class NamedDataset:
    """How to find, fetch and read one torchvision dataset."""

    name: str
    load: Callable[[str, str], Loaded]  # (torchvision root, split) -> images, labels, class names
    split_files: dict[str, tuple[str, ...]]  # the files torchvision reads for each split
    default_splits: tuple[str, ...]
    channels: int
    folder: str  # where torchvision looks for the files under its root
    archive: str | None  # the official archive holding the folder
    url: str  # where torchvision downloads from (reachability check)
    download: Callable[[str], object]  # fetch into a torchvision root
    probe: Callable[[Path], None]  # parse one file as torchvision does, to name a damaged one
    apt_package: str | None = None  # Debian package with a system-wide copy

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.split_files)

    @property
    def files(self) -> tuple[str, ...]:
        """Every file torchvision insists on, whichever splits are read."""
        return tuple(dict.fromkeys(name for names in self.split_files.values() for name in names))


def _mnist_files(prefix: str) -> tuple[str, str]:
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


_MNIST_SPLITS = {"train": _mnist_files("train"), "test": _mnist_files("t10k")}
_CIFAR_META = CIFAR10.meta["filename"]

DATASETS: dict[str, NamedDataset] = {
    dataset.name: dataset
    for dataset in (
        NamedDataset(
            "fashion-mnist", _load_mnist_like(FashionMNIST), _MNIST_SPLITS, ("train", "test"), 1, "FashionMNIST/raw", None,
            FashionMNIST.mirrors[0], lambda root: FashionMNIST(root, download=True), _probe_idx, "dataset-fashion-mnist",
        ),
        NamedDataset(
            "mnist", _load_mnist_like(MNIST), _MNIST_SPLITS, ("train", "test"), 1, "MNIST/raw", None,
            MNIST.mirrors[0], lambda root: MNIST(root, download=True), _probe_idx,
        ),
        NamedDataset(
            "cifar10", _load_cifar10,
            {
                "train": tuple(name for name, _ in CIFAR10.train_list) + (_CIFAR_META,),
                "test": tuple(name for name, _ in CIFAR10.test_list) + (_CIFAR_META,),
            },
            ("train", "test"), 3, CIFAR10.base_folder, CIFAR10.filename,
            CIFAR10.url, lambda root: _CIFAR10Present(root, download=True), _probe_pickle,
        ),
        NamedDataset(
            "stl10", _load_stl10,
            {
                "train": ("train_X.bin", "train_y.bin", STL10.class_names_file),
                "test": ("test_X.bin", "test_y.bin"),
                "unlabeled": ("unlabeled_X.bin",),
            },
            ("train", "unlabeled"), 3, STL10.base_folder, STL10.filename,
            STL10.url, lambda root: _STL10Present(root, download=True), _probe_stl10,
        ),
    )
}


def cache_dir(name: str) -> Path:
    """The torchvision root that downloads go to: $WGANCTL_CACHE/<name>, default ~/.cache/wganctl/<name>."""
    base = os.environ.get("WGANCTL_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "wganctl")
    return Path(base).expanduser() / name


def system_copy(dataset: NamedDataset) -> Path | None:
    """Where a Debian dataset package installs the files ($WGANCTL_SYSTEM_DATASETS, default /usr/share/datasets)."""
    if dataset.apt_package is None:
        return None
    return Path(os.environ.get("WGANCTL_SYSTEM_DATASETS", "/usr/share/datasets")) / dataset.apt_package.removeprefix("dataset-")


def network_available(url: str) -> bool:
    """Whether the download host accepts a TCP connection within CONNECT_TIMEOUT_S (False if WGANCTL_OFFLINE is set)."""
    if os.environ.get("WGANCTL_OFFLINE", "") not in ("", "0"):
        return False
    parts = urlparse(url)
    try:
        socket.create_connection((parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)), CONNECT_TIMEOUT_S).close()
    except OSError:
        return False
    return True


def load_dataset(name: str, splits: list[str], source_dir: str | None) -> LoadedSource:
    """The requested splits of a named dataset as in-memory arrays, from the first place that has its files."""
    dataset = DATASETS[name]
    origin = Path(source_dir).expanduser().absolute() if source_dir else _find_or_download(dataset)
    cache_dir(name).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="stage-", dir=cache_dir(name).parent) as staging:
        root, originals = _stage(dataset, origin, Path(staging))
        parts, class_names = [], []
        for split in splits:
            images, labels, class_names = _load_split(dataset, root, originals, split)
            # C order: Ray's object store then hands the array to every worker without a copy
            parts.append(ArrayPart(split, np.ascontiguousarray(images), labels))
    return LoadedSource(parts, class_names, str(origin))


def _find_or_download(dataset: NamedDataset) -> Path:
    for candidate in (cache_dir(dataset.name), system_copy(dataset)):
        if candidate is not None and _has_copy(dataset, candidate):
            return candidate
    if not network_available(dataset.url):
        apt = f", or `apt-get install {dataset.apt_package}`" if dataset.apt_package else ""
        raise UserError(
            f"{dataset.name}: no local copy and no network to download it; pass --source-dir DIR with the original files{apt}"
        )
    try:
        dataset.download(str(cache_dir(dataset.name)))
    except (URLError, RuntimeError, OSError) as err:
        raise UserError(f"{dataset.name}: download failed ({first_line(err, named=True)}); pass --source-dir DIR with the original files") from None
    return cache_dir(dataset.name)


def _has_copy(dataset: NamedDataset, directory: Path) -> bool:
    return directory.is_dir() and (not _locate(dataset, directory)[1] or _archive(dataset, directory) is not None)


def _locate(dataset: NamedDataset, directory: Path) -> tuple[dict[str, Path], list[str]]:
    """The dataset's files (plain or .gz) in ``directory`` or in its torchvision sub-folder, and the names missing."""
    found: dict[str, Path] = {}
    for name in dataset.files:
        candidates = [d / f for d in (directory, directory / dataset.folder) for f in (name, f"{name}.gz")]
        found_path = next((path for path in candidates if path.is_file()), None)
        if found_path is not None:
            found[name] = found_path
    return found, [name for name in dataset.files if name not in found]


def _archive(dataset: NamedDataset, directory: Path) -> Path | None:
    path = directory / dataset.archive if dataset.archive else None
    return path if path is not None and path.is_file() else None


def _stage(dataset: NamedDataset, origin: Path, staging: Path) -> tuple[str, dict[str, Path]]:
    """A torchvision root in ``staging`` with links to (or decompressed copies of) the files, and each file's original."""
    if not origin.is_dir():
        raise UserError(f"{dataset.name}: source directory {origin} does not exist; pass --source-dir DIR with the original files")
    found, missing = _locate(dataset, origin)
    originals = dict(found)
    archive = _archive(dataset, origin)
    if missing and archive is not None:
        _extract(archive, staging / "archive")
        found, missing = _locate(dataset, staging / "archive")
        originals = {name: archive for name in found}
    if missing:
        alternative = f" or {dataset.archive}" if dataset.archive else ""
        raise UserError(f"{dataset.name}: {missing[0]} not found in {origin}; --source-dir must hold the original files{alternative}")
    target = staging / "root" / dataset.folder
    target.mkdir(parents=True)
    for name, path in found.items():
        if path.name == f"{name}.gz":
            _extract(path, target)
        else:
            (target / name).symlink_to(path.resolve())
    return str(staging / "root"), originals


def _extract(path: Path, destination: Path) -> None:
    destination.mkdir(parents=True, exist_ok=True)
    try:
        extract_archive(str(path), str(destination))
    except _EXTRACT_ERRORS as err:
        raise UserError(f"{path} is truncated or corrupt ({first_line(err, named=True)}); replace it with the original file") from None


def _load_split(dataset: NamedDataset, root: str, originals: dict[str, Path], split: str) -> Loaded:
    try:
        images, labels, class_names = dataset.load(root, split)
    except PARSE_ERRORS as err:
        culprit = _first_damaged(dataset, Path(root) / dataset.folder, originals, split)
        raise UserError(f"{dataset.name}: {culprit} is truncated or corrupt ({first_line(err, named=True)}); replace it with the original file") from None
    if len(images) != len(labels):
        files = ", ".join(str(originals[name]) for name in dataset.split_files[split])
        raise UserError(
            f"{dataset.name}: the {split} split has {len(images)} images but {len(labels)} labels ({files}); replace them with the original files"
        )
    return images, labels, class_names


def _first_damaged(dataset: NamedDataset, folder: Path, originals: dict[str, Path], split: str) -> str:
    """The original path of the first file of ``split`` that torchvision's parser rejects (all of them if none alone)."""
    for name in dataset.split_files[split]:
        try:
            dataset.probe(folder / name)
        except PARSE_ERRORS:
            return str(originals[name])
    return " / ".join(str(originals[name]) for name in dataset.split_files[split])
