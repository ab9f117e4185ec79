"""Runs by reference: a run id, or a registered version (models:/NAME@ALIAS, models:/NAME/VERSION) resolved
to its source run."""

from __future__ import annotations


import mlflow
from mlflow.tracking import MlflowClient

from wgan.errors import UserError
from pipelines.tracking.store import tracking_uri


MODEL_URI_PREFIX = "models:/"


def resolve_run_id(client: MlflowClient, ref: str) -> str:
    """The run id ``ref`` names: a run id as it is, or a registered model version's source run for
    ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` (what `wganctl tune --register` registers)."""
    if not ref.startswith(MODEL_URI_PREFIX):
        return ref
    name, at, alias = ref.removeprefix(MODEL_URI_PREFIX).partition("@")
    if not at:
        name, _, alias = name.rpartition("/")
    if not name or not alias or "/" in name or (not at and not alias.isdigit()):
        raise UserError(f"cannot read {ref!r}: give models:/NAME@ALIAS (e.g. models:/NAME@champion), "
                        f"models:/NAME/VERSION or a run id")
    try:
        version = client.get_model_version_by_alias(name, alias) if at else client.get_model_version(name, alias)
    except mlflow.exceptions.MlflowException as err:
        # unknown name or version: RESOURCE_DOES_NOT_EXIST; unknown alias: INVALID_PARAMETER_VALUE (sqlite store)
        if err.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        what = f"alias {alias!r}" if at else f"version {alias}"
        raise UserError(f"no registered model {name!r} with {what} in {tracking_uri()}: check the name and "
                        f"{'alias' if at else 'version'} (`wganctl tune --register {name}` registers one, "
                        f"--alias names it), or set MLFLOW_TRACKING_URI to the store that has it")
    if not version.run_id:
        raise UserError(f"{ref} (version {version.version}) was not registered from a run: give the run id of a training run")
    return version.run_id


def get_run(client: MlflowClient, run_id: str):
    """The run ``run_id`` names: a run id, or a ``models:/`` URI of a registered version (`resolve_run_id`)."""
    run_id = resolve_run_id(client, run_id)
    try:
        return client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise UserError(f"no MLflow run {run_id!r} in {tracking_uri()}: check the id, or set MLFLOW_TRACKING_URI to the store that has it")
