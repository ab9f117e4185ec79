"""One declaration per knob: a dataclass field carries its type, default, help and citation.

`knob()` puts the help text, the paper a number comes from, and CLI details into
the field's metadata; `knobs()` reads them back. The CLI's options, the YAML
``--config`` keys and the tune search space's key paths are all derived from
these fields (`pipelines.cli_options`, `pipelines.search_space`), so a new knob
is written once, in its dataclass. (The pattern of torch-fidelity's one
defaults table shared by its API and CLI, taken to the field.)
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any


def knob(default: Any, help: str, *, cite: str = "", flag: str = "", cli: bool = True,
         shown_default: str = "", on_resume: bool = False) -> Any:
    """A dataclass field that is a user-facing knob.

    ``flag``: the CLI spelling when it is not ``--field-name`` (``--gpu/--cpu``).
    ``cli=False``: set from the data (image size, channels, class count), never by hand.
    ``shown_default``: the default as help should state it when the field's value is a
    placeholder (None: "the paper's value for the loss"). ``on_resume``: a resumed run
    may take a new value (``--steps``: train longer).
    """
    return dataclasses.field(default=default, metadata={
        "help": help, "cite": cite, "flag": flag, "cli": cli, "shown_default": shown_default,
        "on_resume": on_resume})


@dataclass(frozen=True)
class Knob:
    name: str
    type: Any  # the field's type with None removed: int, float, str, bool, tuple[float, float]
    default: Any
    help: str
    cite: str
    flag: str
    cli: bool
    shown_default: str
    on_resume: bool

    @property
    def option(self) -> str:
        """The CLI option's first spelling, e.g. ``--lambda-gp`` or ``--gpu``."""
        return (self.flag or "--" + self.name.replace("_", "-")).split("/")[0]

    @property
    def default_text(self) -> str:
        return self.shown_default or ("off" if self.default is False else str(self.default))


def knobs(cls: type) -> list[Knob]:
    """The knobs of a dataclass declared with `knob()`, in declaration order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            continue
        meta = f.metadata
        out.append(Knob(f.name, _without_none(hints[f.name]), f.default, meta["help"], meta["cite"],
                        meta["flag"], meta["cli"], meta["shown_default"], meta["on_resume"]))
    return out


def _without_none(hint: Any) -> Any:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return hint
