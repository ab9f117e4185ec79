"""Prepared datasets (docs/architecture.md, section 1): manifest, shard paths, decoding, a plain-PyTorch reader.

The writing side lives in `pipelines.prepare` (Ray Data); nothing here imports Ray.
The public names below are imported on first use, so Ray workers that only
unpickle a `wgan.data.parts` object do not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "FORMAT_VERSION": "wgan.data.manifest",
    "load_manifest": "wgan.data.manifest",
    "manifest_sha256": "wgan.data.manifest",
    "shard_paths": "wgan.data.manifest",
    "decode_images": "wgan.data.reader",
    "ShardReader": "wgan.data.reader",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'wgan.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)
