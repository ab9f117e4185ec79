"""The tune stage: a Ray Tune sweep whose every trial is a train-stage run.

The rooms: `driver` (`tune_sweep`: checks, resources, the Tuner, the summary and registry),
`trial` (what runs inside each trial), `reports` (the Train callback that feeds a trial),
`schedulers` (search, ASHA, PBT), `callbacks` (the driver's console and the release of ended
trials).

`tune_sweep` and `TuneResult` are re-exported lazily (PEP 562): `reports` is imported by Ray
Train's controller, and must not bring the driver's imports with it.
"""

from __future__ import annotations

import importlib

_EXPORTS = {"tune_sweep": "driver", "TuneResult": "driver", "pbt_interval": "schedulers"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"pipelines.tune.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'pipelines.tune' has no attribute {name!r}")
