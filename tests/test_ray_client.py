"""The Ray Client hop (`pipelines.cluster.connect.through_ray_client`) sends a stage's whole call.

The remote run itself is the cluster test's (tests/test_cluster.py runs prepare, evaluate and
tune through ray:// on a real cluster); here the submission is caught before it connects, to
check what every stage, train included, would send.
"""

from __future__ import annotations

import inspect

import pytest

from pipelines.cluster import connect as ray_cluster
from pipelines.evaluate import evaluate
from pipelines.prepare import prepare
from pipelines.train import train
from pipelines.tune import tune_sweep

STAGES = [prepare, train, tune_sweep, evaluate]


@pytest.mark.parametrize("stage", STAGES, ids=lambda stage: stage.__name__)
def test_every_parameter_of_a_stage_travels_through_ray_client(stage, monkeypatch):
    sent = {}

    def submit(fn, address, args, kwargs):
        sent.update(fn=fn, address=address, call=inspect.signature(fn).bind(*args, **kwargs).arguments)
        return "the task's result"

    monkeypatch.setattr(ray_cluster, "run_through_ray_client", submit)
    parameters = inspect.signature(stage).parameters
    # A value of its own for every parameter, so that a dropped or swapped one shows.
    given = {name: f"value of {name}" for name in parameters}
    given["address"] = "ray://head:10001"

    assert stage(**given) == "the task's result"
    assert sent["fn"] is stage and sent["address"] == "ray://head:10001"
    expected = {**given, "address": "auto"}  # the task joins the cluster it runs on
    if "progress" in parameters:
        expected["progress"] = False  # a task has no terminal
    assert sent["call"] == expected


def test_a_stage_runs_here_without_a_ray_client_address(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray_cluster, "run_through_ray_client",
                        lambda *a: pytest.fail("a local call went through Ray Client"))
    from wgan.errors import UserError

    with pytest.raises(UserError, match="unknown dataset"):  # prepare's own check, run here
        prepare("no-such-dataset", address=None)
