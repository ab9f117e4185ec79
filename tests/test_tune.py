"""The tune stage: search spaces are checked before anything starts."""

from __future__ import annotations

import pytest

from pipelines.tune import tune_sweep
from wgan.errors import UserError


def test_an_invalid_space_fails_at_once_with_the_key_path(tiny_dataset, mlflow_store, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("lr: {loguniform: [1.0e-5]}\n")
    with pytest.raises(UserError, match=r"space\.lr\.loguniform"):
        tune_sweep(tiny_dataset, space_file=str(space))
    space.write_text("lamda_gp: {uniform: [1, 10]}\n")
    with pytest.raises(UserError, match=r"space\.lamda_gp"):
        tune_sweep(tiny_dataset, space_file=str(space))
