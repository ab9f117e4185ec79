"""The tune stage: a Ray Tune sweep whose every trial is a train-stage run.

The rooms: `driver` (`tune_sweep`: checks, resources, the Tuner, the summary and registry),
`trial` (what runs inside each trial), `schedulers` (search, ASHA, PBT), `callbacks` (the
driver's console and the release of ended trials).
"""

from pipelines.tune.driver import TuneResult, tune_sweep
from pipelines.tune.schedulers import pbt_interval

__all__ = ["TuneResult", "pbt_interval", "tune_sweep"]
