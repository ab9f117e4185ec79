"""The object store going away mid-write (issue 33): a run whose checkpoint upload is cut either
goes on within Ray's and pyarrow's own retries, or fails in one line with its last good
checkpoint intact; it never leaves a checkpoint that resume would trust and that cannot load.

The run is the real `wganctl train` in a child process with its own local Ray, whose workers
talk to the test's S3 server through a relay (`tests.object_store.CuttableEndpoint`) that goes
away the moment the step-8 checkpoint's upload starts."""

from __future__ import annotations

import subprocess

import pytest
from mlflow.tracking import MlflowClient

from pipelines.cluster import checkpoints
from tests.object_store import CuttableEndpoint, bucket_keys
from tests.processes import JOB_TIMEOUT_S, VENV_BIN, clean_env
from wgan.errors import UserError

TRAIN = ["--loss", "wgan-gp", "--width", "8", "--z-dim", "16", "--batch", "16", "--n-critic", "1",
         "--checkpoint-every", "4", "--log-every", "4", "--sample-every", "4", "--max-failures", "0", "--quiet"]


def _wganctl(args: list[str], env: dict, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "wganctl"), *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=JOB_TIMEOUT_S)


def test_an_upload_cut_by_the_store_going_away_fails_in_one_line_and_keeps_the_last_checkpoint(
        object_store, s3_bucket, tiny_dataset, tmp_path):
    relay = CuttableEndpoint(object_store, cut_at=b"checkpoint_0000008/checkpoint.pt")
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = clean_env(AWS_ENDPOINT_URL=relay.url, MLFLOW_TRACKING_URI=tracking)
    storage = f"{s3_bucket}/ckpt"
    try:
        failed = _wganctl(["train", "--data", tiny_dataset, "--steps", "12", "--storage-path", storage,
                           "--experiment", "cut", *TRAIN], env, tmp_path)
        assert relay.cut.is_set(), failed.stderr  # the upload of step 8 was cut
        assert failed.returncode == 1, failed.stdout + failed.stderr
        said = failed.stderr.strip().splitlines()
        assert len(said) == 1 and said[0].startswith("error: training run "), failed.stderr

        client = MlflowClient(tracking)
        run = client.search_runs([client.get_experiment_by_name("cut").experiment_id])[0]
        assert run.info.status == "FAILED"
        where = checkpoints.run_checkpoints(storage, run.info.run_id)  # read past the relay, straight from S3
        assert checkpoints.load(where[0])["step"] == 4  # the last good one, whole
        for cut in where[1:]:  # whatever the cut left of step 8 never loads
            with pytest.raises(UserError):
                checkpoints.load(cut)
        assert not any("checkpoint_0000012" in key for key in bucket_keys(s3_bucket))

        relay.restore()  # the store is back: the run goes on from its last good checkpoint
        resumed = _wganctl(["train", "--resume", run.info.run_id, "--steps", "12", "--quiet"], env, tmp_path)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert client.get_run(run.info.run_id).info.status == "FINISHED"
        assert checkpoints.load(f"{storage}/wganctl-{run.info.run_id}/checkpoint_0000012")["step"] == 12
    finally:
        relay.close()
