"""Typer options generated from the knobs of the config dataclasses (`wgan.knobs`).

A command decorated with `knob_options(TrainConfig, RunSettings)` gets one option per
knob, spelled ``--field-name`` (or the knob's ``flag``), typed from the field, with
the field's help, its real default and its citation. Every option defaults to None
so that the command can tell what was given (a config file's value, or a resumed
run's, stays unless an option overrides it). The same knobs are the keys of a
``--config`` file (`config_values`).
"""

from __future__ import annotations

import functools
import inspect
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from wgan.errors import UserError
from wgan.knobs import Knob, knobs


@dataclass(frozen=True)
class Only:
    """Some of a class's knobs: `wganctl tune` takes train's ``width`` and ``batch`` as
    ``Only(TrainConfig, ("width", "batch"))``, declared where train declares them."""

    cls: type
    names: tuple[str, ...]


def cli_knobs(*sources: "type | Only") -> list[Knob]:
    """The knobs that are CLI options, of whole classes and of `Only` some of a class's."""
    out = []
    for source in sources:
        cls, names = (source.cls, source.names) if isinstance(source, Only) else (source, None)
        out += [k for k in knobs(cls) if k.cli and (names is None or k.name in names)]
    return out


def option_help(k: Knob) -> str:
    cite = f"; {k.cite}" if k.cite else ""
    return f"{k.help} (default: {k.default_text}{cite})"


def knob_options(*classes: "type | Only") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add the knobs of ``classes`` as options of a Typer command that takes ``**knob_values``."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        hints = typing.get_type_hints(command)
        own = [p.replace(annotation=hints.get(p.name, p.annotation))
               for p in inspect.signature(command).parameters.values() if p.kind is not p.VAR_KEYWORD]
        generated = [
            inspect.Parameter(k.name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[k.type],
                              default=typer.Option(None, k.flag or k.option, help=option_help(k), show_default=False))
            for k in cli_knobs(*classes)]

        @functools.wraps(command)
        def with_options(**values: Any) -> Any:
            return command(**values)

        with_options.__signature__ = inspect.Signature(own + generated)  # type: ignore[attr-defined]
        with_options.__annotations__ = {p.name: p.annotation for p in own + generated}
        del with_options.__wrapped__  # Typer must read the signature above, not the command's
        return with_options

    return decorate


_KIND_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _fits(value: Any, kind: Any) -> bool:
    """Whether a YAML value can be the knob type ``kind`` (an int is a float; a list is a tuple)."""
    if value is None:
        return True
    if typing.get_origin(kind) is list:
        return isinstance(value, list) and all(_fits(item, typing.get_args(kind)[0]) for item in value)
    if typing.get_origin(kind) is tuple:
        items = typing.get_args(kind)
        return isinstance(value, (list, tuple)) and len(value) == len(items) and all(map(_fits, value, items))
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind) if isinstance(kind, type) else True


def _check_types(config_file: Path, values: dict[str, Any], classes: tuple[type, ...]) -> None:
    """Refuse a config file value of the wrong type (``batch: many``) before a comparison fails on it."""
    for k in (k for cls in classes for k in knobs(cls) if k.name in values):
        if not _fits(values[k.name], k.type):
            kind = ("two numbers" if typing.get_origin(k.type) is tuple else "a list of strings"
                    if typing.get_origin(k.type) is list else _KIND_WORDS.get(k.type, str(k.type)))
            raise UserError(f"config file {config_file}: {k.name} must be {kind}, got {values[k.name]!r}")


def config_values(config_file: Path | None, given: dict[str, Any], *classes: type) -> dict[str, dict[str, Any]]:
    """The knob values of a ``--config`` YAML/JSON file overridden by the options given, split by
    class name: ``{"TrainConfig": {...}, "RunSettings": {...}}``. The file's keys are the knobs'
    field names (the option without ``--``, with ``_``), and the data's knobs (image_size,
    channels), which have no option."""
    import yaml

    values: dict[str, Any] = {}
    if config_file is not None:
        if not config_file.is_file():
            raise UserError(f"config file {config_file} does not exist")
        try:
            values = yaml.safe_load(config_file.read_text()) or {}
        except yaml.YAMLError as err:
            raise UserError(f"config file {config_file} is not valid YAML/JSON: {str(err).splitlines()[0]}")
        if not isinstance(values, dict):
            raise UserError(f"config file {config_file} must hold a mapping of option names to values")
        _check_types(config_file, values, classes)
    values.update({k: v for k, v in given.items() if v is not None})
    # Every knob is a key, those set from the data too (image_size, channels: checked against it).
    owners = {k.name: cls.__name__ for cls in classes for k in knobs(cls)}
    unknown = sorted(set(values) - set(owners))
    if unknown:
        raise UserError(f"unknown config key(s) {', '.join(unknown)}: valid keys are {', '.join(sorted(owners))}")
    out: dict[str, dict[str, Any]] = {cls.__name__: {} for cls in classes}
    lists = {k.name for cls in classes for k in knobs(cls) if typing.get_origin(k.type) is list}
    for key, value in values.items():
        out[owners[key]][key] = tuple(value) if isinstance(value, list) and key not in lists else value
    return out


def stage_options(cls: type, config_file: Path | None, given: dict[str, Any]) -> Any:
    """A stage's options object (`pipelines.stage_options`): its ``--config`` file's values overridden
    by the options given, validated."""
    return cls(**config_values(config_file, given, cls)[cls.__name__]).validate()
