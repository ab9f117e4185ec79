"""Locations of datasets: a local path or any URI pyarrow understands (s3://, gs://, hdfs://).

One resolver keeps every reader and writer agnostic of where the bytes live, so
the same command works on a laptop and on a cluster with an object store.
"""

from __future__ import annotations

import os
import posixpath

import pyarrow.fs as pafs


def is_uri(location: str) -> bool:
    """True for ``scheme://...`` locations, False for plain local paths."""
    return "://" in location


def resolve(location: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and the path inside it; local paths are made absolute (Ray workers have another cwd)."""
    if is_uri(location):
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(location))


def absolute(location: str) -> str:
    """The location as every process on every node can use it: URIs unchanged, local paths absolute."""
    return location if is_uri(location) else os.path.abspath(os.path.expanduser(location))


def join(location: str, *parts: str) -> str:
    """Join with '/' (URIs and POSIX paths alike)."""
    return posixpath.join(location, *parts)


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound
