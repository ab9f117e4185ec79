"""Shared fixtures: one local Ray for the whole session, a fresh MLflow sqlite store per test."""

from __future__ import annotations

import logging
import os
import socket
import time

# One torch thread everywhere (this process, the CLIs it starts, Ray's workers, which a local
# train worker would otherwise give every core): the tests' networks are tiny, and on a
# 2-core machine shared with Ray two threads spin-wait on each other
# (`pipelines.cluster.connect.worker_resources`). Set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import mlflow
import pytest
import ray
from pipelines.stage_options import ClassifierOptions, PrepareOptions


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def object_store():
    """A real S3 API (moto's standalone server) on 127.0.0.1, and the standard variables that
    point every client at it: pyarrow and Ray Train (AWS_ENDPOINT_URL), boto3 and MLflow's
    artifact store (AWS_ENDPOINT_URL, MLFLOW_S3_ENDPOINT_URL), with dummy credentials.

    Started before Ray (`ray_session` asks for it), so that Ray's workers inherit the
    variables as they do on a cluster whose nodes have them set. Yields the endpoint URL.
    """
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    settings = {"AWS_ENDPOINT_URL": endpoint, "MLFLOW_S3_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    try:
        yield endpoint
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


@pytest.fixture
def s3_bucket(object_store) -> str:
    """A new, empty bucket on the test's S3 server: its s3:// URI."""
    from tests.object_store import new_bucket

    return new_bucket(object_store)


@pytest.fixture(scope="session")
def ray_session(object_store):
    """A real local Ray with both cores, started once: Ray start-up is the slowest thing here."""
    if not ray.is_initialized():
        from pipelines.cluster.connect import use_local_ray_env

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
    return prepare("fashion-mnist", options=PrepareOptions(size=28, splits=["train"], limit=512), out=str(out), progress=False).out


@pytest.fixture(scope="session")
def shared_mlflow_store(tmp_path_factory) -> str:
    """One MLflow sqlite store for the tests that read what a session fixture trained there (the
    classifier of tiny_dataset); each writes its own runs under an experiment of its own."""
    return f"sqlite:///{tmp_path_factory.mktemp('shared-mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="session")
def tiny_classifier(tiny_dataset, shared_mlflow_store) -> str:
    """The project classifier of tiny_dataset (one epoch), trained once: its run id in shared_mlflow_store."""
    from pipelines.classifier import train_classifier

    before = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = shared_mlflow_store
    try:
        return train_classifier(tiny_dataset, options=ClassifierOptions(epochs=1, test_split="train"), progress=False).run_id
    finally:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI")
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture
def mlflow_with_classifier(tiny_classifier, shared_mlflow_store, tmp_path, monkeypatch) -> str:
    """This test's tracking store is the shared one, which holds tiny_classifier (its run id is
    returned), in a fresh working directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", shared_mlflow_store)
    assert mlflow.get_tracking_uri() == shared_mlflow_store
    return tiny_classifier


@pytest.fixture
def one_thread():
    """torch on one thread for the test: the in-process steps on tiny networks run faster so than
    split over two threads, which on a shared 2-core machine wait on each other (measured: a 4-step
    test 11.6 s on two threads under load, 0.2 s on one), and leave the thread count as it was."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def small_disk(tmp_path):
    """A factory of small real filesystems: ``small_disk(bytes)`` mounts a tmpfs of that size
    under tmp_path and returns its path (``.resize(bytes)`` remounts it larger: space freed);
    unmounted after the test. Mounting needs root: the test is skipped, saying so, elsewhere."""
    import subprocess
    from pathlib import Path

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; run as root (CI does) to test a full disk")
    mounted = []

    class Disk(type(Path())):
        def resize(self, size: int) -> None:
            subprocess.run(["mount", "-o", f"remount,size={size}", str(self)], check=True)

    def mount(size: int) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"this machine cannot mount a tmpfs ({done.stderr.strip()}): a full disk is not testable here")
        mounted.append(where)
        return Disk(where)

    yield mount
    for where in mounted:
        subprocess.run(["umount", "--lazy", str(where)], check=False)
