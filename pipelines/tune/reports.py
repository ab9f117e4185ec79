"""The Ray Train callback that hands a trial's train reports to the trial, kept light: it runs in
the TorchTrainer's controller, which imports the module it is defined in (`pipelines.train_hop`
says why that must not be torch or MLflow)."""

from __future__ import annotations

from ray.train import UserCallback

from wgan.data import fs as datafs


class ForwardReports(UserCallback):
    """Runs in the TorchTrainer's controller: passes each report, with the path of its
    checkpoint, to the trial's queue (Tune's own callback drops the checkpoint)."""

    def __init__(self, queue):
        self.queue = queue

    def after_report(self, run_context, metrics, checkpoint) -> None:
        where = datafs.uri(checkpoint.filesystem, checkpoint.path) if checkpoint else None
        self.queue.put({**metrics[0], "checkpoint_path": where})
