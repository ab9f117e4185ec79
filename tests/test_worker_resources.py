"""How many CPUs and torch threads a local train worker gets (`pipelines.cluster.connect.worker_resources`)."""

from __future__ import annotations

import os

import pytest

from pipelines.cluster.connect import worker_resources


@pytest.mark.parametrize("workers", [1, 2])
def test_a_local_worker_leaves_a_cpu_for_ray_data_and_takes_its_cores_as_threads(workers, ray_session, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = os.cpu_count()  # the session's Ray has every core (conftest)
    assert worker_resources(workers, gpu=False, local=True) == (
        {"CPU": min(1.0, (cores - 1) / workers)}, max(1, cores // workers))


@pytest.mark.parametrize("value, threads", [("3", 3), ("1", 1), ("0", None), ("many", None), ("", None)])
def test_omp_num_threads_sets_a_local_workers_torch_threads_where_it_is_a_positive_count(value, threads, ray_session,
                                                                                       monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    expected = threads or os.cpu_count()
    assert worker_resources(1, gpu=False, local=True)[1] == expected
    # a trial's share and a GPU or cluster worker are not the local default: the variable does not apply
    assert worker_resources(1, gpu=False, local=True, cpus_per_worker=1.0)[1] == 1
    assert worker_resources(1, gpu=True, local=True)[1] is None
    assert worker_resources(1, gpu=False, local=False)[1] is None
