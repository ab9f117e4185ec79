"""Locations of datasets and checkpoints: a local path or any URI pyarrow understands (s3://, gs://).

One resolver keeps every reader and writer agnostic of where the bytes live, so
the same command works on a laptop and on a cluster with an object store. Every
join, parent and listing of a location goes through here: ``pathlib`` turns
``s3://bucket/x`` into ``s3:/bucket/x``.

Object-store endpoints and credentials come from the standard environment
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION``), which pyarrow's ``S3FileSystem`` reads when the URI is
resolved; the resolved filesystem keeps them when it is pickled to Ray workers.
"""

from __future__ import annotations

import os
import posixpath

import pyarrow as pa
import pyarrow.fs as pafs

from wgan.errors import UserError

# pyarrow's filesystem type names and the URI schemes that resolve back to them.
_SCHEMES = {"s3": "s3", "gcs": "gs", "hdfs": "hdfs"}


def is_uri(location: str) -> bool:
    """True for ``scheme://...`` locations, False for plain local paths."""
    return "://" in location


def resolve(location: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and the path inside it; local paths are made absolute (Ray workers have another cwd).
    A URI pyarrow cannot read (an unknown scheme) is bad input: `wgan.errors.UserError`."""
    if is_uri(location):
        try:
            return pafs.FileSystem.from_uri(location)
        except pa.ArrowInvalid as err:
            raise UserError(f"{location}: {str(err).splitlines()[0]}: give a local path or a URI such as "
                            f"s3://BUCKET/PREFIX or gs://BUCKET/PREFIX") from None
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(location))


# The URI schemes of pyarrow's filesystems (`resolve`); Ray Train's storage also takes fsspec's.
PYARROW_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")


def cannot_write(location: str, *, fsspec_too: bool = False) -> str | None:
    """Why ``location`` cannot be a directory this process creates and writes, as far as that is
    knowable without the network (a local path: is it or an ancestor a file, is the nearest
    existing ancestor writable; a URI: is its scheme known); None when nothing is wrong here.
    ``fsspec_too``: fsspec's schemes are known too (Ray Train's storage takes them)."""
    if is_uri(location):
        scheme = location.split("://", 1)[0].lower()
        known = set(PYARROW_SCHEMES)
        if fsspec_too:
            try:
                import fsspec

                known.update(fsspec.available_protocols())
            except ImportError:
                pass
        return None if scheme in known else f"{scheme}:// is not a filesystem this machine knows"
    path = absolute(location)
    if os.path.exists(path) and not os.path.isdir(path):
        return f"{path} is a file, not a directory"
    ancestor = _nearest_existing(path)
    if not os.path.isdir(ancestor):
        return f"{ancestor} is a file, not a directory"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"{ancestor} is not writable by this user"
    return None


def _nearest_existing(path: str) -> str:
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def free_bytes(location: str) -> int | None:
    """Bytes free to this user on the local filesystem that ``location`` is (or would be created)
    on; None for a URI, whose free space no API tells."""
    if is_uri(location):
        return None
    import shutil

    return shutil.disk_usage(_nearest_existing(absolute(location))).free


def absolute(location: str) -> str:
    """The location as every process on every node can use it: URIs unchanged, local paths absolute."""
    return location if is_uri(location) else os.path.abspath(os.path.expanduser(location))


def uri(filesystem: pafs.FileSystem, path: str) -> str:
    """``path`` inside ``filesystem`` as a location `resolve` takes back (Ray's ``Checkpoint.path`` has no scheme)."""
    if isinstance(filesystem, pafs.LocalFileSystem):
        return path
    scheme = _SCHEMES.get(filesystem.type_name)
    if scheme is None:
        raise ValueError(f"no URI scheme known for a {filesystem.type_name!r} filesystem")
    return f"{scheme}://{path.lstrip('/')}"


def join(location: str, *parts: str) -> str:
    """Join with '/' (URIs and POSIX paths alike)."""
    return posixpath.join(location, *parts)


def parent(location: str) -> str:
    """The location one level up: ``s3://b/x/y`` -> ``s3://b/x``."""
    head = posixpath.dirname(location.rstrip("/"))
    if head.endswith(":/") or not head:
        raise ValueError(f"{location} has no parent inside its filesystem")
    return head


def name(location: str) -> str:
    """The last component: ``s3://b/x/y`` -> ``y``."""
    return posixpath.basename(location.rstrip("/"))


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def subdirectories(location: str, prefix: str = "") -> list[str]:
    """The directories directly in ``location`` whose names start with ``prefix``, sorted, as locations
    (none when ``location`` does not exist)."""
    filesystem, path = resolve(location)
    entries = filesystem.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(join(location, entry.base_name) for entry in entries
                  if entry.type == pafs.FileType.Directory and entry.base_name.startswith(prefix))
