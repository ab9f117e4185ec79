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
from pipelines.cli_options import cli_knobs, config_values, option_help, stage_options
from pipelines.search_space import CATEGORICAL, SweepSettings, swept_keys, to_param_space
from pipelines.stage_options import (AugmentOptions, ClassifierOptions, EvaluateOptions, InterpolateOptions,
                                     PrepareOptions, SampleOptions, ServerSettings)

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


# Every stage's options: (command path, its declarations). Train's are above; the hand-written
# options left on a command are what is genuinely per call (the input, the output, the cluster, the console).
STAGES = [
    (("prepare",), (PrepareOptions,)),
    (("sample",), (SampleOptions,)),
    (("interpolate",), (InterpolateOptions,)),
    (("train-classifier",), (ClassifierOptions,)),
    (("evaluate",), (EvaluateOptions,)),
    (("server",), (ServerSettings,)),
    (("experiment", "augment"), (AugmentOptions,)),
    (("tune",), (SweepSettings, cli.TUNE_TRAIN_OPTIONS)),
    (("train",), (TrainConfig, RunSettings)),
]
PER_CALL = {"data", "path", "dataset", "run_id", "out", "force", "quiet", "verbose", "address", "config",
            "checkpoint", "experiment", "resume", "runs", "help"}


def command_of(path: tuple[str, ...]) -> click.Command:
    command = typer.main.get_command(cli.app)
    for name in path:
        command = command.commands[name]
    return command


@pytest.mark.parametrize("path,sources", STAGES, ids=lambda x: " ".join(x) if isinstance(x[0], str) else "")
def test_every_stages_options_are_generated_from_its_declarations(path, sources):
    """Each declared knob is exactly one option of its command, spelled and helped as declared (its real
    default in the help), every other option is per call, and each command takes --config."""
    params = {p.name: p for p in command_of(path).params}
    declared = cli_knobs(*sources)
    for knob in declared:
        option = params.get(knob.name)
        assert option is not None, f"{' '.join(path)}: {knob.option} is declared but not an option"
        assert knob.option in option.opts and option.help == option_help(knob)
        assert option.default is None  # so a --config value stays unless the option is given
    assert set(params) - {k.name for k in declared} <= PER_CALL, f"{' '.join(path)}: options written by hand"
    assert "config" in params


def test_no_stage_repeats_a_default_of_its_declarations():
    """The stage functions take their options object: no parameter repeats a declared knob's name."""
    import inspect

    from pipelines.augment import augment_experiment
    from pipelines.classifier import train_classifier
    from pipelines.evaluate import evaluate
    from pipelines.prepare import prepare
    from pipelines.sample import interpolate, sample
    from pipelines.tune import tune_sweep

    for function, cls in ((prepare, PrepareOptions), (sample, SampleOptions), (interpolate, InterpolateOptions),
                          (train_classifier, ClassifierOptions), (evaluate, EvaluateOptions),
                          (augment_experiment, AugmentOptions), (tune_sweep, SweepSettings)):
        function = inspect.unwrap(function)
        repeated = set(inspect.signature(function).parameters) & {k.name for k in knobs(cls)}
        assert not repeated, f"{function.__name__} repeats {repeated} of {cls.__name__}"


@pytest.mark.parametrize("args,config,says", [
    (["prepare", "mnist"], "size: 0\n", "--size must be a positive number of pixels, not 0"),
    (["prepare", "mnist"], "splits: test\n", "splits must be a list of strings"),
    (["sample", "r"], "n: 0\n", "--n must be >= 1, got 0"),
    (["interpolate", "r"], "steps: 1\n", "--rows must be >= 1 and --steps >= 2"),
    (["train-classifier", "d"], "epochs: 0\n", "--epochs and --batch must be >= 1"),
    (["evaluate", "r"], "metrics: fid,xyz\n", "unknown metric(s) xyz"),
    (["server"], "port: 70000\n", "--port 70000 is not a TCP port"),
    (["experiment", "augment", "--data", "d"], "seeds: 2\n", "Missing option '--real-per-class'"),
    (["tune", "--data", "d"], "reports: 7\n", "--steps (400) must be a multiple of --reports (7)"),
    (["tune", "--data", "d"], "batch: many\n", "batch must be an integer"),
    (["prepare", "mnist"], "sise: 28\n", "unknown config key(s) sise"),
])
def test_every_stage_reads_its_options_from_config(args, config, says, tmp_path):
    """--config FILE works for every stage: its values are the stage's options, checked like the CLI's."""
    path = tmp_path / "options.yaml"
    path.write_text(config)
    result = CliRunner().invoke(cli.app, [*args, "--config", str(path)])
    assert result.exit_code == 2 and says in result.output, result.output


def test_an_option_given_wins_over_its_config_value(tmp_path):
    path = tmp_path / "options.yaml"
    path.write_text("n: 0\nseed: 3\n")
    options = stage_options(SampleOptions, path, {"n": 5})
    assert (options.n, options.seed) == (5, 3)
