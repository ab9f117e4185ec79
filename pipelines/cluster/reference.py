"""Reference features of a prepared dataset: embedded once on Ray Data, cached beside the data.

The evaluate stage measures samples against them and the tune stage's objective uses their
statistics (docs/architecture.md, section 1: ``<data>/reference/<key>.npz``).
"""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass

import numpy as np

from wgan.classifier import Classifier
from wgan.data import fs as datafs
from wgan.data.manifest import load_manifest, manifest_sha256, shard_paths
from wgan.metrics import feature_statistics
from pipelines.cluster.batch_inference import classifier_extractor, embed_shards

REFERENCE_DIR = "reference"


@dataclass
class Reference:
    features: np.ndarray  # (rows, feature_dim) float32, in the dataset's row order
    mu: np.ndarray
    sigma: np.ndarray


def reference_features(data_dir: str, extractor: dict, key: str, manifest: dict | None = None,
                       gpu: bool = False, progress: bool = False) -> tuple[Reference, str]:
    """Features of every row of the dataset, from ``<data_dir>/reference/<key>.npz`` (key:
    ``classifier-<run>`` or ``inception-<weights sha256[:16]>``) or computed and cached there;
    also the cache's location.

    The cache stores the manifest sha256 it was computed from; a mismatch (the data was
    prepared again in place) recomputes it. ``progress``: count the rows embedded.
    """
    manifest = manifest or load_manifest(data_dir, verify=False)
    sha = manifest_sha256(data_dir)
    location = datafs.join(datafs.absolute(data_dir), REFERENCE_DIR, f"{key}.npz")
    filesystem, path = datafs.resolve(location)
    if datafs.exists(filesystem, path):
        with filesystem.open_input_file(path) as handle:
            cached = np.load(io.BytesIO(handle.read()))
        if str(cached["manifest_sha256"]) == sha:
            return Reference(cached["features"], cached["mu"], cached["sigma"]), location
    load_manifest(data_dir, verify=True)  # the features will be trusted from now on: check every shard once
    features = embed_shards(shard_paths(data_dir, manifest), manifest["size"], manifest["channels"], extractor,
                            gpu=gpu, rows=manifest["count"] if progress else None)
    mu, sigma = feature_statistics(features)
    buffer = io.BytesIO()
    np.savez(buffer, features=features, mu=mu, sigma=sigma, manifest_sha256=np.array(sha))
    filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
    partial = f"{path}.tmp-{uuid.uuid4().hex[:8]}"  # readers never see a half-written cache
    with filesystem.open_output_stream(partial) as out:
        out.write(buffer.getvalue())
    filesystem.move(partial, path)
    return Reference(features, mu, sigma), location


def reference_statistics(data_dir: str, classifier: Classifier, classifier_run: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the dataset's classifier features (cached as in ``reference_features``)."""
    reference, _ = reference_features(data_dir, classifier_extractor(classifier), f"classifier-{classifier_run}")
    return reference.mu, reference.sigma
