"""The generator as an MLflow pyfunc model ("models from code").

This file is logged with the model and run at load time; the `wgan` package
travels with it as `code_paths`, so the model loads and samples on a machine that
has neither the project nor the training run. Contract: docs/architecture.md,
section 3 ("The model").
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import torch


class GeneratorModel(mlflow.pyfunc.PythonModel):
    """predict(z: float32 (N, z_dim)) -> uint8 images (N, H, W, C).

    ``config`` (the run's resolved TrainConfig) is read by samplers through
    ``unwrap_python_model()``: `pipelines.cluster.batch_inference.model_num_classes` takes the class
    count from it, so evaluation labels sample i with i % K without being told K.
    """

    def load_context(self, context):
        self.load_weights(torch.load(context.artifacts["generator"], map_location="cpu", weights_only=True))

    def load_weights(self, payload: dict) -> "GeneratorModel":
        """{"config": the run's config, "generator": the state dict}: the logged artifact, or a
        checkpoint's sampling state (`sample --checkpoint`)."""
        from wgan.config import TrainConfig
        from wgan.networks import build_generator

        self.config = TrainConfig.from_dict(payload["config"])
        self.generator = build_generator(self.config)
        self.generator.load_state_dict(payload["generator"])
        self.generator.eval()
        return self

    # np.ndarray: a hint MLflow accepts without inferring a schema from it, so the signature logged
    # with the model (float32 (N, z_dim) -> uint8 images, params {"label": -1}) stays the contract.
    def predict(self, context, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        from wgan.images import to_uint8

        z = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        labels = None
        if self.config.num_classes:
            label = (params or {}).get("label")
            # no label: classes in turn by position within this call; samplers that split a larger
            # set of rows into calls pass each row's label instead (batch_inference.draw_rows)
            labels = (torch.full((z.shape[0],), int(label)) if label is not None and int(label) >= 0
                      else torch.arange(z.shape[0]) % self.config.num_classes)
        with torch.no_grad():
            return to_uint8(self.generator(z, labels))


mlflow.models.set_model(GeneratorModel())
