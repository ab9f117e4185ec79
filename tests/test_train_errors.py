"""Bad input to `wganctl train`: one line, exit code 2, before Ray starts and before any MLflow run exists."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

import pipelines.train
from pipelines.cli import app


@pytest.fixture
def no_ray(monkeypatch):
    """Fail loudly if the stage gets as far as starting Ray."""

    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started for bad input")

    monkeypatch.setattr(pipelines.train, "init_ray", refuse)


def run_cli(args: list[str]):
    result = CliRunner().invoke(app, args)
    return result.exit_code, result.stderr.strip()


@pytest.mark.parametrize("args, message", [
    (["--lambda-gp", "-1"], "--lambda-gp must be >= 0"),
    (["--loss", "wgan", "--clip", "0"], "--clip must be > 0"),
    (["--n-critic", "0"], "--n-critic must be >= 1"),
    (["--lr", "0"], "--lr must be > 0"),
    (["--batch", "63", "--workers", "2"], "does not split over 2 workers"),
    (["--loss", "wgan-gp", "--critic-norm", "batch"], "batch norm in the critic is refused"),
    (["--loss", "nope"], "unknown loss"),
    (["--precision", "fp16"], "--precision fp16 runs on GPUs only"),
])
def test_invalid_options(args, message, tiny_dataset, mlflow_store, no_ray):
    code, err = run_cli(["train", "--data", tiny_dataset, *args])
    assert code == 2
    assert message in err and len(err.splitlines()) == 1
    assert MlflowClient().search_experiments(filter_string="name = 'wganctl'") == []


def test_missing_data_directory(tmp_path, mlflow_store, no_ray):
    code, err = run_cli(["train", "--data", str(tmp_path / "nowhere")])
    assert code == 2 and len(err.splitlines()) == 1 and "wganctl prepare" in err


def test_data_whose_manifest_fails_its_checks(tiny_dataset, tmp_path, mlflow_store, no_ray):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_dataset, copy)
    shard = next(copy.glob("*.parquet"))
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    code, err = run_cli(["train", "--data", str(copy)])
    assert code == 2 and len(err.splitlines()) == 1 and "sha256" in err


def test_resolution_or_channels_that_do_not_match_the_data(tiny_dataset, tmp_path, mlflow_store, no_ray):
    for key, value, word in (("image_size", 64, "image size"), ("channels", 3, "channel count")):
        config = tmp_path / f"{key}.yaml"
        config.write_text(json.dumps({key: value}))
        code, err = run_cli(["train", "--data", tiny_dataset, "--config", str(config)])
        assert code == 2 and len(err.splitlines()) == 1 and word in err and "does not match" in err


def test_unknown_config_key(tiny_dataset, tmp_path, mlflow_store, no_ray):
    config = tmp_path / "c.yaml"
    config.write_text("lamda_gp: 5\n")
    code, err = run_cli(["train", "--data", tiny_dataset, "--config", str(config)])
    assert code == 2 and "lamda_gp" in err


def test_resume_of_a_run_that_does_not_exist(mlflow_store, no_ray):
    code, err = run_cli(["train", "--resume", "0123456789abcdef"])
    assert code == 2 and len(err.splitlines()) == 1 and "no MLflow run" in err


@pytest.fixture
def logged_run(tiny_dataset, mlflow_store, tmp_path) -> str:
    """A train run as MLflow holds it (params, config.json, run_settings.json), not trained: what
    --resume reads before anything starts."""
    from pipelines import tracking
    from wgan.config import RunSettings, TrainConfig
    from wgan.data.manifest import load_manifest, manifest_sha256

    manifest = load_manifest(tiny_dataset)
    cfg = TrainConfig(width=8, image_size=28, channels=1).resolved()
    return tracking.start_train_run(MlflowClient(), "t", cfg, RunSettings(storage_path=str(tmp_path)),
                                    data_dir=tiny_dataset, manifest=manifest,
                                    manifest_sha256=manifest_sha256(tiny_dataset))


def test_resume_refuses_an_option_that_would_change_the_model_before_ray_starts(logged_run, no_ray):
    code, err = run_cli(["train", "--resume", logged_run, "--lr", "1"])
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: --lr would change the model or objective of run") and "drop it" in err
    code, err = run_cli(["train", "--resume", logged_run, "--width", "16", "--loss", "wgan", "--workers", "2"])
    assert code == 2 and "--loss, --width would change" in err and "drop them" in err
    # the Python API refuses the same, naming what differs from the run
    from wgan.config import TrainConfig
    from wgan.errors import UserError

    with pytest.raises(UserError, match="^--lr would change"):
        pipelines.train.train(TrainConfig(width=8, lr=1.0), resume=logged_run)
    with pytest.raises(UserError, match="holds no checkpoint of run"):  # moved storage must hold its checkpoints
        run_settings = pipelines.train.logged_run_settings(logged_run)
        pipelines.train.train(resume=pipelines.train.Resume(logged_run, steps=4000), run=type(run_settings)(storage_path="elsewhere"))
