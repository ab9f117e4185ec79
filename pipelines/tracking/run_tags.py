"""The MLflow tag names of wganctl's runs, written once (docs/architecture.md, section 3).

MLflow's own (``mlflow.*``) are named here too where the stages set or search them.
"""

# Every run
STAGE = "wganctl.stage"  # train, tune, classifier, evaluate's target is a train run, augment
CODE_VERSION = "code.version"
RUN_NAME = "mlflow.runName"
PARENT_RUN = "mlflow.parentRunId"  # a trial's sweep

# What a run read
DATA_DIR = "data.dir"
DATA_DATASET = "data.dataset"
DATA_MANIFEST_SHA256 = "data.manifest_sha256"

# Train runs
STORAGE_PATH = "ray.storage_path"
RAY_RUN_NAME = "ray.run_name"
COMPLETED_STEPS = "wganctl.completed_steps"
PRECISION = "wganctl.precision"  # what --precision auto became on the workers
RESUMED_WITH = "wganctl.resumed_with"  # run settings changed by --resume, and at which step
SKIPPED_CHECKPOINTS = "wganctl.skipped_checkpoints"  # checkpoints --resume could not read, set aside, and why
FAILURE_REASON = "wganctl.failure_reason"
FAILED_RESUME = "wganctl.failed_resume"  # why a resume of a FINISHED run ended before a new checkpoint (it stays FINISHED)
DIVERGED = "wganctl.diverged"
# --eval-every: the checkpoint Ray Train ranks best by eval/fd (its step) and that FD; `--checkpoint best` reads them
BEST_STEP = "wganctl.best_step"
BEST_FD = "wganctl.best_fd"
DESCRIPTION = "mlflow.note.content"  # the run's description in the MLflow UI: what was trained, on what, its FD
TRACKING_OUTAGE = "wganctl.tracking_outage"  # written by pipelines.tracking.resilient_logging
TRACKING_LOST = "wganctl.tracking_lost"

# Sweeps and their trials
TUNE_PATH = "ray.tune_path"
BEST_RUN = "wganctl.best_run_id"
TRIAL_ID = "wganctl.trial_id"
EARLY_STOPPED = "wganctl.early_stopped"
PBT_DONOR = "wganctl.pbt_donor_run"
PBT_EXPLOITED = "wganctl.pbt_exploited"
REGISTERED_ALIAS = "wganctl.registered_alias"  # --register NAME --alias A: models:/NAME@A, the best trial's version
