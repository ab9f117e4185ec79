"""The prepared dataset as an MLflow dataset input of the runs that read it (its manifest's digest and schema)."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import mlflow
from mlflow.data.meta_dataset import MetaDataset
from mlflow.tracking import MlflowClient

from wgan.data import fs as datafs


# MLflow keeps at most 36 characters of a dataset digest; the whole sha256 is the run's
# data.manifest_sha256 tag.
DATASET_DIGEST_CHARS = 16


class PreparedDataset(MetaDataset):
    """MetaDataset with the profile it leaves out."""

    def __init__(self, profile: dict, **kwargs):
        self._profile = profile
        super().__init__(**kwargs)

    @property
    def profile(self) -> dict:
        return self._profile

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self._profile)}


def dataset_name(manifest: dict) -> str:
    """A prepared dataset's name in MLflow: ``fashion-mnist-28px``."""
    return f"{manifest.get('dataset')}-{manifest['size']}px"


def prepared_dataset(data_dir: str, manifest: dict, manifest_sha256: str):
    """The prepared dataset at ``data_dir`` as an MLflow dataset (docs/architecture.md, section 3):
    its location as the source, the parquet schema and the manifest's counts as the profile."""
    from mlflow.data.dataset_source_registry import get_dataset_source_from_json, resolve_dataset_source
    from mlflow.types import ColSpec, DataType, Schema

    location = datafs.absolute(data_dir)
    scheme = urlsplit(location).scheme if datafs.is_uri(location) else "local"
    scheme = {"file": "local", "gcs": "gs"}.get(scheme, scheme)  # pyarrow's spellings, MLflow's names
    try:  # the artifact-repository source of that scheme, chosen by name: the resolver warns on local paths
        source = get_dataset_source_from_json(json.dumps({"uri": location}), source_type=scheme)
    except mlflow.exceptions.MlflowException:
        source = resolve_dataset_source(location)
    schema = Schema([ColSpec(DataType.binary, "image"), ColSpec(DataType.long, "label"),
                     ColSpec(DataType.string, "split")])
    profile = {"images": manifest["count"], "classes": len(manifest.get("class_names") or []),
               "splits": manifest["splits"], "image_size": manifest["size"], "channels": manifest["channels"]}
    return PreparedDataset(profile, source=source, name=dataset_name(manifest),
                           digest=manifest_sha256[:DATASET_DIGEST_CHARS], schema=schema)


def log_dataset(client: MlflowClient, run_id: str, data_dir: str, manifest: dict, manifest_sha256: str, *,
                context: str) -> None:
    """Log the prepared dataset as an input of the run (the Runs table's Dataset column). MLflow
    keeps one input per dataset and run: a run that already has this one keeps its first context."""
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    dataset = prepared_dataset(data_dir, manifest, manifest_sha256)._to_mlflow_entity()
    client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])])
