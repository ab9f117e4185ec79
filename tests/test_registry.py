"""Registered versions named by models:/ URIs wherever a run id is taken (sample, interpolate,
evaluate, compare): resolved to the version's source run by `pipelines.tracking.resolve_run_id`.

No Ray and no training: a run and a registered version made directly with MlflowClient in the
test's own sqlite store. The end-to-end case (a real sweep's --register, then sample) is in
tests/test_tune.py."""

from __future__ import annotations

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image
from typer.testing import CliRunner

from pipelines import tracking
from pipelines.cli import app
from wgan.errors import UserError


def registered_run(client: MlflowClient, name: str = "gen", alias: str = "champion") -> str:
    """A finished run with version 1 of model ``name`` registered from it, ``alias`` pointing at it."""
    run_id = client.create_run(client.create_experiment("registry")).info.run_id
    client.set_terminated(run_id)
    client.create_registered_model(name)
    version = client.create_model_version(name, source=f"runs:/{run_id}/{tracking.MODEL_NAME}", run_id=run_id)
    client.set_registered_model_alias(name, alias, version.version)
    return run_id


def one_line(text: str) -> bool:
    return len(text.strip().splitlines()) == 1


def test_a_models_uri_names_its_versions_source_run_and_a_run_id_passes_through(mlflow_store):
    client = MlflowClient()
    run_id = registered_run(client)

    assert tracking.resolve_run_id(client, "models:/gen@champion") == run_id
    assert tracking.resolve_run_id(client, "models:/gen/1") == run_id
    assert tracking.resolve_run_id(client, run_id) == run_id
    assert tracking.get_run(client, "models:/gen@champion").info.run_id == run_id

    refusals = {
        "models:/gen@nosuch": r"no registered model 'gen' with alias 'nosuch' in .*`wganctl tune --register gen`",
        "models:/nosuch@champion": r"no registered model 'nosuch' with alias 'champion'",
        "models:/gen/7": r"no registered model 'gen' with version 7",
        "models:/gen": r"give models:/NAME@ALIAS",
        "models:/gen/latest": r"give models:/NAME@ALIAS",
        "models:/@champion": r"give models:/NAME@ALIAS",
    }
    for uri, message in refusals.items():
        with pytest.raises(UserError, match=message) as refused:
            tracking.resolve_run_id(client, uri)
        assert one_line(str(refused.value)), uri

    for command in (["sample", "models:/gen@nosuch", "--n", "3", "--out", "x.npy"],
                    ["interpolate", "models:/gen@nosuch"], ["evaluate", "models:/gen@nosuch"],
                    ["compare", "models:/gen@nosuch"]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 2 and one_line(result.output), (command, result.output)
        assert "alias 'nosuch'" in result.output, (command, result.output)


def test_evaluate_and_compare_work_on_a_models_uris_source_run(mlflow_store, tmp_path):
    client = MlflowClient()
    run_id = registered_run(client)
    client.log_metric(run_id, "eval/fid", 12.5)
    client.log_image(run_id, np.zeros((8, 8), dtype=np.uint8), artifact_file="eval/grid.png")

    compared = CliRunner().invoke(app, ["compare", "models:/gen@champion", "--out", str(tmp_path / "c.png")])
    assert compared.exit_code == 0, compared.output
    assert run_id[:12] in compared.output and "12.5" in compared.output
    assert Image.open(tmp_path / "c.png").size[0] > 0

    # evaluate reads (and would log into) the source run: this one is not a train run, and it says which run it read
    evaluated = CliRunner().invoke(app, ["evaluate", "models:/gen/1", "--n", "20"])
    assert evaluated.exit_code == 2 and one_line(evaluated.output), evaluated.output
    assert f"MLflow run {run_id} is not a wganctl training run" in evaluated.output


def test_tune_refuses_an_alias_the_registry_would_refuse_before_anything_starts(mlflow_store):
    reserved = CliRunner().invoke(app, ["tune", "--data", "nowhere", "--register", "gen", "--alias", "latest"])
    assert reserved.exit_code == 2 and one_line(reserved.output) and "reserved" in reserved.output, reserved.output
    alone = CliRunner().invoke(app, ["tune", "--data", "nowhere", "--alias", "best"])
    assert alone.exit_code == 2 and "add --register NAME" in alone.output, alone.output
