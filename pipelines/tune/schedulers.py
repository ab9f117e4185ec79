"""A sweep's search and schedulers: Tune's random/grid search, ASHA's rungs and PBT's perturbations."""

from __future__ import annotations

from typing import Any

import numpy as np


PBT_KNOBS = ("lr", "n_critic", "lambda_gp", "clip")


def searcher(seed: int | None, concurrent: int):
    """Tune's default random/grid search; seeded, it draws the same trials every time (the
    loss-specific knobs are drawn through numpy's global generator, seeded here too).
    Tune ignores max_concurrent_trials for a search algorithm given as an instance, so the
    instance gets the limit itself (without it every trial's process started at once:
    32 of them ran this 24 GiB machine out of memory)."""
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if seed is None:
        return None
    np.random.seed(seed)
    return BasicVariantGenerator(random_state=seed, max_concurrent=concurrent)


def scheduler(name: str, reports: int, space: dict[str, Any], whole_population_at_once: bool):
    """ASHA, PBT or none (None).

    PBT is synchronous when every trial runs at once: each perturbation then ranks the
    whole population at the same report. Asynchronous PBT ranks a trial against the
    others' latest reports and clones only a trial that was in the top quarter at one of
    its own earlier perturbations; in a small population whose trials report within
    seconds of each other that depends on who reports first (a 2-trial sweep exploited in
    2 of 5 runs here). With more trials than run at once, it stays asynchronous: waiting
    at a barrier would pause and restart every trial at every perturbation.
    """
    from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining

    if name == "asha":
        # Rungs at 1, 4, 16, ... reports: a trial goes on only if it is in the top quarter
        # of those that reached its rung (reduction factor 4: Ray Tune's default for ASHA, Li et al. 2020).
        # The default 16 reports give it rungs at 1 and 4 of 16: 32 trials one at a time spent
        # 0.23 of a full sweep and found its best within 2% (benchmarks/bench_tune.py). With 8
        # reports the rungs are 1 and 4 of 8, and the asynchronous promotions (the first trials
        # at a rung always pass) spent 0.31-0.34 (benchmarks/replay_asha.py).
        return ASHAScheduler(time_attr="training_iteration", max_t=reports, grace_period=1, reduction_factor=4)
    if name == "pbt":
        # A weak trial (bottom quarter) restarts from a top-quarter trial's checkpoint with
        # its config perturbed (Jaderberg et al. 2017).
        return PopulationBasedTraining(time_attr="training_iteration", perturbation_interval=pbt_interval(reports),
                                       hyperparam_mutations=pbt_mutations(space), synch=whole_population_at_once)
    return None


def pbt_interval(reports: int) -> int:
    """Reports between PBT's perturbations: about a quarter of a trial's reports, and never
    a divisor of their number, so that no perturbation falls on the last report (an exploit
    there would restart a trial only to stop it). 8 reports: perturbations at 3 and 6."""
    interval = max(1, reports // 4)
    while reports % interval == 0:
        interval += 1
    return interval


def pbt_mutations(space: dict[str, Any]) -> dict[str, Any]:
    """The swept knobs PBT may perturb: ranges and choices that do not depend on the loss
    (lambda and c exist for one loss each, and a perturbed trial keeps its donor's loss)."""
    from ray.tune.search.sample import Domain, Function

    return {k: v for k, v in space.items()
            if k in PBT_KNOBS and isinstance(v, Domain) and not isinstance(v, Function)}
