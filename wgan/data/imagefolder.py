"""Image folders: list the images of a folder tree (class subfolders -> labels) and decode them.

Listing goes through pyarrow's filesystem layer, so PATH may be local or a URI
(s3://...). Decoding is PIL; unreadable files raise ``UnreadableImage`` so the
caller can skip and count them (or fail with ``--strict``).
"""

from __future__ import annotations

import io
import posixpath
from dataclasses import dataclass, replace

import numpy as np
import pyarrow.fs as pafs
from PIL import Image, ImageOps
from torchvision.datasets.folder import IMG_EXTENSIONS  # the files torchvision's ImageFolder takes as images

from wgan.data import fs as datafs
from wgan.data.images import fit_image
from wgan.data.parts import EncodedRows, LoadedSource
from wgan.errors import UserError

UNLABELLED = -1
# What PIL raises for files it cannot decode: unknown/garbled format (OSError, SyntaxError in some plugins),
# truncated data (OSError), absurd sizes (DecompressionBombError), bad headers (ValueError).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


class UnreadableImage(Exception):
    """An image file that exists but cannot be decoded."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class FilePart:
    """Image files of one split on a pyarrow filesystem, with their labels."""

    split: str
    filesystem: pafs.FileSystem
    paths: list[str]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> "FilePart":
        return replace(self, paths=[self.paths[i] for i in indices], labels=self.labels[indices])

    def encode(self, start: int, stop: int, size: int, channels: int) -> EncodedRows:
        images, labels, unreadable = [], [], []
        for path, label in zip(self.paths[start:stop], self.labels[start:stop]):
            try:
                images.append(read_image(self.filesystem, path, size, channels))
                labels.append(label)
            except UnreadableImage as err:
                unreadable.append((err.path, err.reason))
        pixels = np.stack(images) if images else np.empty((0, size, size, channels), dtype=np.uint8)
        return EncodedRows(pixels, np.array(labels, dtype=np.int64), unreadable)


def load_image_folder(location: str) -> LoadedSource:
    """Every image under ``location`` (by extension; other files are ignored) as one ``train`` part, in a fixed
    order (root files first, then by path). Subfolder names, sorted, are the classes; root files are unlabelled."""
    filesystem, root = datafs.resolve(location)
    if filesystem.get_file_info(root).type != pafs.FileType.Directory:
        raise UserError(f"image folder {location} does not exist or is not a folder; give an existing folder of images")
    entries = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
    images = sorted(
        (rel for rel in (posixpath.relpath(e.path, root) for e in entries if e.type == pafs.FileType.File)
         if rel.lower().endswith(IMG_EXTENSIONS) and not any(part.startswith(".") for part in rel.split("/"))),
        key=lambda rel: ("/" in rel, rel),
    )
    if not images:
        raise UserError(
            f"image folder {location} holds no images ({' '.join(IMG_EXTENSIONS)}); put images in it, optionally in class subfolders"
        )
    class_names = sorted({rel.split("/", 1)[0] for rel in images if "/" in rel})
    class_index = {name: index for index, name in enumerate(class_names)}
    labels = np.array([class_index[rel.split("/", 1)[0]] if "/" in rel else UNLABELLED for rel in images], dtype=np.int64)
    paths = [posixpath.join(root, rel) for rel in images]
    return LoadedSource([FilePart("train", filesystem, paths, labels)], class_names, datafs.absolute(location))


def read_image(filesystem: pafs.FileSystem, path: str, size: int, channels: int) -> np.ndarray:
    """The image at ``path`` as HWC uint8 fitted to size/channels (EXIF orientation applied); UnreadableImage if it cannot be decoded."""
    try:
        with filesystem.open_input_file(path) as handle:
            data = handle.read()
        with Image.open(io.BytesIO(data)) as image:
            return fit_image(ImageOps.exif_transpose(image), size, channels)
    except _DECODE_ERRORS as err:
        raise UnreadableImage(path, f"{type(err).__name__}: {err}") from None

