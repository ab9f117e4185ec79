"""A run's generator as an MLflow model (`generator_model`), logged from a checkpoint and loaded back."""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import numpy as np
import torch

import wgan
from wgan import checkpoint as ckpt
from wgan.config import TrainConfig
from wgan.errors import UserError
from pipelines.tracking.registry import get_run
from pipelines.tracking.store import client


MODEL_NAME = "generator"


def model_requirements() -> list[str]:
    """What the `generator` model needs to load: pinned to the versions that logged it.

    Given explicitly because MLflow's inference of requirements runs the model in a
    subprocess (8 of the 11 s that logging took, measured here).
    """
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("mlflow", "torch", "numpy")]


def log_generator_model(run_id: str, payload: dict) -> str:
    """Log the generator of a checkpoint payload as the pyfunc model `generator`."""
    from mlflow.models import infer_signature

    from pipelines.tracking import generator_model

    cfg = TrainConfig.from_dict(payload["config"])
    z = torch.randn(2, cfg.z_dim, generator=torch.Generator().manual_seed(0)).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "generator.pt"
        # The moving-average generator when the run kept one: it is the better sampler.
        torch.save({"config": payload["config"], "generator": ckpt.sampling_state(payload),
                    "step": payload["step"]}, weights)
        example_out = np.zeros((2, cfg.image_size, cfg.image_size, cfg.channels), dtype=np.uint8)
        with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAME,
                python_model=generator_model.__file__,
                artifacts={"generator": str(weights)},
                code_paths=[str(Path(wgan.__file__).parent)],
                # params: {"label": K} draws class K from a conditional generator; -1: classes in turn
                signature=infer_signature(z, example_out, params={"label": -1}),
                input_example=z,
                pip_requirements=model_requirements(),
            )
    return info.model_uri


class CheckpointGenerator:
    """A checkpoint's generator (its moving average when kept) behind the logged model's
    ``predict(z, params)``: the same sampling code, weights from the checkpoint."""

    def __init__(self, payload: dict):
        from pipelines.tracking.generator_model import GeneratorModel

        self.model = GeneratorModel().load_weights({"config": payload["config"],
                                                    "generator": ckpt.sampling_state(payload)})

    def predict(self, model_input: np.ndarray, params: dict | None = None) -> np.ndarray:
        return self.model.predict(None, model_input, params)


def load_generator(run_id: str, checkpoint: str | int | None = None):
    """The run's pyfunc generator and its latent size; ``run_id`` may be a ``models:/`` URI (`resolve_run_id`).
    ``checkpoint``: the generator of the run's checkpoint at that step, or ``best`` (`checkpoints.of_run`)."""
    run = get_run(client(needs=f"MLflow run {run_id!r}"), run_id)
    run_id = run.info.run_id
    if checkpoint is not None:
        from pipelines.cluster import checkpoints

        _, payload = checkpoints.of_run(run, checkpoint)
        return CheckpointGenerator(payload), int(payload["config"]["z_dim"])
    try:
        model = mlflow.pyfunc.load_model(f"runs:/{run_id}/{MODEL_NAME}")
    except mlflow.exceptions.MlflowException as err:
        raise UserError(f"run {run_id} has no logged generator ({str(err).splitlines()[0]}): "
                        f"was its training finished? `wganctl train --resume {run_id}` completes it")
    z_dim = model.metadata.get_input_schema().inputs[0].shape[-1]
    return model, z_dim
