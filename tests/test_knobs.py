"""Each knob is declared once, in its dataclass field: the CLI options, the `--config` keys and the
tune search space's keys are derived from it, and help states its real default."""

from __future__ import annotations

import dataclasses
import re

import click
import pytest
import typer
from typer.testing import CliRunner

from wgan.config import LOSS_DEFAULTS, RunSettings, TrainConfig
from wgan.errors import UserError
from wgan.knobs import knobs
from pipelines import cli
from pipelines.cli_options import config_values
from pipelines.search_space import CATEGORICAL, swept_keys, to_param_space

ALL_KNOBS = [(cls, k) for cls in (TrainConfig, RunSettings) for k in knobs(cls)]


def train_options() -> dict[str, click.Option]:
    command = typer.main.get_command(cli.app).commands["train"]
    return {name: p for p in command.params for name in p.opts + p.secondary_opts}


def test_every_dataclass_field_is_a_declared_knob():
    for cls in (TrainConfig, RunSettings):
        assert [f.name for f in dataclasses.fields(cls)] == [k.name for k in knobs(cls)], cls


@pytest.mark.parametrize("cls,knob", ALL_KNOBS, ids=lambda x: getattr(x, "name", ""))
def test_each_knob_has_one_cli_option_and_one_config_key(cls, knob, tmp_path):
    options = train_options()
    mine = [p for p in {id(p): p for p in options.values()}.values() if p.name == knob.name]
    if knob.cli:
        assert len(mine) == 1, f"{knob.name}: {len(mine)} options"
        assert knob.option in mine[0].opts
    else:  # set from the data: no option
        assert not mine
    config = tmp_path / "c.yaml"
    config.write_text(f"{knob.name}: null\n")
    assert config_values(config, {}, TrainConfig, RunSettings)[cls.__name__] == {knob.name: None}


def test_help_shows_every_knobs_real_default():
    result = CliRunner().invoke(cli.app, ["train", "--help"], env={"COLUMNS": "400", "TERM": "dumb"})
    assert result.exit_code == 0
    text = re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", result.output))
    for cls, knob in ALL_KNOBS:
        if not knob.cli:
            continue
        real = getattr(cls(), knob.name)
        if real is None and knob.name in {f.name for f in dataclasses.fields(LOSS_DEFAULTS["wgan"])}:
            # a per-loss default: help names each loss's value, read from the same table the config uses
            shown = ", ".join(f"{loss} " + (" ".join(map(str, getattr(d, knob.name))) if knob.name == "betas"
                                            else _number(getattr(d, knob.name)))
                              for loss, d in LOSS_DEFAULTS.items() if knob.name != "betas" or d.optimizer == "adam")
        elif isinstance(real, bool):
            shown = "off" if not real else "on"
        elif real is None:
            shown = knob.shown_default
        else:
            shown = str(real)
        assert f"(default: {shown}" in text, f"{knob.option}: expected default {shown!r} in help"


def _number(value):
    return f"{value:.0e}".replace("e-0", "e-") if isinstance(value, float) and value < 1e-3 else str(value)


def test_the_search_space_takes_exactly_the_train_hyperparameters():
    assert swept_keys() == {k.name for k in knobs(TrainConfig) if k.cli} - {"steps"}
    # every one of them is accepted (a categorical one with one of its values)
    to_param_space({key: {"choice": [CATEGORICAL[key][0] if key in CATEGORICAL else 1]} for key in swept_keys()})
    for key in ("workers", "steps", "image_size"):
        with pytest.raises(Exception, match=rf"space\.{key}"):
            to_param_space({key: {"choice": [1]}})


def test_categorical_knobs_are_swept_by_choice_over_their_values_only():
    assert {"loss", "arch", "critic_norm", "lr_decay", "augment"} <= set(CATEGORICAL) <= swept_keys()
    space = to_param_space({"arch": {"choice": ["dcgan", "resnet"]}, "loss": {"grid": ["wgan-gp", "hinge"]},
                            "critic_norm": {"choice": [None, "spectral"]}, "lr_decay": "linear",
                            "augment": {"choice": ["none", "diffaug", "diffaug:translation,cutout"]}})
    assert space["lr_decay"] == "linear" and space["arch"].categories == ["dcgan", "resnet"]
    for key, value, says in (("loss", {"uniform": [0, 1]}, "categorical knob takes a constant or"),
                             ("arch", {"choice": ["dcgan", "vgg"]}, "'vgg' is not one of dcgan, resnet, mlp"),
                             ("critic_norm", "spectral-ish", "not one of"),
                             ("augment", {"choice": ["diffaug:zoom"]}, "valid ops are color, translation, cutout")):
        with pytest.raises(UserError, match=rf"^space\.{key}: .*{re.escape(says)}"):
            to_param_space({key: value})
