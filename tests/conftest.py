"""Shared fixtures: one local Ray for the whole session, a fresh MLflow sqlite store per test."""

from __future__ import annotations

import os
import time

import mlflow
import pytest
import ray


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray with both cores, started once: Ray start-up is the slowest thing here."""
    if not ray.is_initialized():
        from pipelines.ray_cluster import use_local_ray_env

        use_local_ray_env()  # as init_ray does
        # The dashboard too, as init_ray starts it: Ray Train's cleaner of dead runs needs it.
        ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=True, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(autouse=True)
def ray_resources_released():
    """After each test, wait until the session's Ray has every CPU back.

    A test that leaves a train worker, an actor pool or a placement group behind would
    otherwise make a later test wait forever for CPUs (a sweep's trial hung 8 minutes in
    CI): fail here instead, naming what is still held.
    """
    yield
    if not ray.is_initialized():
        return
    deadline = time.time() + 60
    while True:
        total, free = ray.cluster_resources().get("CPU", 0), ray.available_resources().get("CPU", 0)
        if free >= total - 1e-6:
            return
        if time.time() > deadline:
            break
        time.sleep(0.25)
    held = [(pg_id[:8], pg["strategy"], pg["bundles"]) for pg_id, pg in ray.util.placement_group_table().items()
            if pg["state"] != "REMOVED"]
    pytest.fail(f"Ray still holds {total - free:g} of {total:g} CPUs 60 s after the test; "
                f"placement groups not removed: {held}")


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A real MLflow tracking store (sqlite) in a temporary working directory."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert mlflow.get_tracking_uri() == uri
    return uri


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory, ray_session) -> str:
    """512 real Fashion-MNIST training images at 28 px, prepared by the real prepare stage."""
    from pipelines.prepare import prepare

    out = tmp_path_factory.mktemp("data") / "fmnist-28"
    return prepare("fashion-mnist", size=28, splits=["train"], limit=512, out=str(out), progress=False).out
