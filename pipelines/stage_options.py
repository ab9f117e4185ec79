"""The options of every stage but train and tune, each declared once as a typed, validated knob.

Train's knobs live in `wgan.config` (`TrainConfig`, `RunSettings`) and tune's in
`pipelines.search_space` (`SweepSettings`); these are the other stages'. The CLI's options and
the keys of a stage's ``--config`` file are generated from these fields
(`pipelines.cli_options`), and the stage function takes the object, so a default is written
here and nowhere else. What is genuinely per call (the run or dataset acted on, where the
output goes, the cluster, the console) stays an argument of the stage function.

This module imports nothing heavy: the CLI reads it when it starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from wgan.errors import UserError
from wgan.knobs import knob

EVAL_METRICS = ("fid", "kid", "pr", "coverage", "is")
FEATURE_EXTRACTORS = ("classifier", "inception")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000
# Not ./mlflow.db: experiments created there by local runs keep a local artifact
# path, which workers on other nodes would write to their own disks.
DEFAULT_BACKEND_FILE = "mlflow-server.db"
DEFAULT_ARTIFACTS_DIR = "mlartifacts"
DEFAULT_METRICS = {"classifier": ("fid", "kid", "pr", "coverage"), "inception": ("fid", "kid", "pr", "is")}


def _check(checks: list[tuple[bool, str]]) -> None:
    for ok, message in checks:
        if not ok:
            raise UserError(message)


class StageOptions:
    """What every stage's options object offers: ``validate()`` (returns itself) and ``replace()``."""

    def validate(self):  # pragma: no cover - each stage's options override it
        return self

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes).validate()


@dataclass(frozen=True)
class PrepareOptions(StageOptions):
    """How `wganctl prepare` reads and encodes a dataset: what the manifest records as its params."""

    size: int = knob(32, "output side length in pixels (antialiased resize)")
    channels: int | None = knob(None, "1 or 3", shown_default="the dataset's own")
    splits: list[str] | None = knob(None, "source split(s) to include; repeatable", flag="--split",
                                    shown_default="the dataset's default splits")
    limit: int | None = knob(None, "keep a random subset of N images", shown_default="all")
    seed: int = knob(0, "seed of the --limit subset")
    source_dir: str | None = knob(None, "read a local copy of the dataset from here",
                                  shown_default="the Debian package's copy, else a download")
    strict: bool = knob(False, "fail on a corrupt image instead of skipping it", flag="--strict")
    # Set by tests and benchmarks that need many small shards; sized from the data otherwise.
    rows_per_shard: int | None = knob(None, "rows per parquet shard", cli=False, shown_default="sized from the data")

    def validate(self) -> "PrepareOptions":
        _check([
            (self.size >= 1, f"--size must be a positive number of pixels, not {self.size}"),
            (self.channels in (None, 1, 3), f"--channels must be 1 or 3, not {self.channels}"),
            (self.limit is None or self.limit >= 1, f"--limit must be at least 1, not {self.limit}"),
            (self.seed >= 0, f"--seed must be zero or positive, not {self.seed}"),
            (self.rows_per_shard is None or self.rows_per_shard >= 1,
             f"rows_per_shard must be at least 1, not {self.rows_per_shard}"),
        ])
        return self


@dataclass(frozen=True)
class EvaluateOptions(StageOptions):
    """What `wganctl evaluate` measures, in which features, with how many samples."""

    # 10,000 samples: the FID's usual N (Heusel et al. 2017 recommend at least 10,000).
    n: int = knob(10000, "number of samples", cite="Heusel et al. 2017: at least 10,000 for FID")
    metrics: str | None = knob(None, f"comma-separated: {', '.join(EVAL_METRICS)}",
                               shown_default="fid,kid,pr,coverage; with inception fid,kid,pr,is")
    features: str = knob("classifier", "classifier (the project classifier, offline) or inception (InceptionV3, "
                                       "numbers comparable with papers)")
    inception_weights: str | None = knob(None, "local InceptionV3 weights for --features inception (torch-fidelity's "
                                               "weights-inception-2015-12-05-6726825d.pth)", shown_default="none")
    classifier: str | None = knob(None, "classifier run id", shown_default="newest on the same dataset")
    seed: int = knob(0, "latent and subset seed")
    gpu: bool | None = knob(None, "one GPU per sampling/feature actor", flag="--gpu/--cpu",
                            shown_default="when the cluster has GPUs")

    @property
    def chosen_metrics(self) -> tuple[str, ...]:
        given = tuple(m.strip() for m in (self.metrics or "").split(",") if m.strip())
        return given or DEFAULT_METRICS.get(self.features, ())

    def validate(self) -> "EvaluateOptions":
        if self.features not in FEATURE_EXTRACTORS:
            raise UserError(f"unknown feature extractor {self.features!r}: choose from {', '.join(FEATURE_EXTRACTORS)}")
        unknown = sorted(set(self.chosen_metrics) - set(EVAL_METRICS))
        inception = self.features == "inception"
        _check([
            (not unknown and bool(self.chosen_metrics),
             f"unknown metric(s) {', '.join(unknown) or '(none given)'}: choose from {', '.join(EVAL_METRICS)}"),
            (self.n >= 20, f"--n must be at least 20 (precision/recall, KID and IS need several samples), got {self.n}"),
            (not (inception and "coverage" in self.chosen_metrics),
             "class coverage counts the project classifier's predictions: "
             "drop coverage from --metrics, or use --features classifier"),
            (not inception or bool(self.inception_weights),
             "--features inception needs --inception-weights FILE: torch-fidelity's "
             "weights-inception-2015-12-05-6726825d.pth, downloaded where a network exists"),
        ])
        return self


@dataclass(frozen=True)
class ClassifierOptions(StageOptions):
    """How `wganctl train-classifier` trains the project classifier (a small CNN, one-cycle schedule)."""

    # 4 epochs: 0.910 test accuracy on Fashion-MNIST at 28 px (benchmarks/RESULTS-issue30.md).
    epochs: int = knob(4, "passes over the train split")
    batch: int = knob(128, "images per step")
    lr: float = knob(2e-3, "peak learning rate of the one-cycle schedule", cite="Smith and Topin 2019")
    test_split: str = knob("test", "split to measure accuracy on (train: when there is no test split)")
    seed: int = knob(0, "random seed")
    train_split: str = knob("train", "split to train on", cli=False)

    def validate(self) -> "ClassifierOptions":
        _check([
            (self.epochs >= 1 and self.batch >= 1 and self.lr > 0, "--epochs and --batch must be >= 1 and --lr > 0"),
            (self.seed >= 0, f"--seed must be zero or positive, not {self.seed}"),
        ])
        return self


@dataclass(frozen=True)
class AugmentOptions(StageOptions):
    """The synthetic-data experiment's arms: how many real and synthetic images, how many trainings."""

    real_per_class: int | None = knob(None, "real training images per class", shown_default="required")
    synthetic_per_class: int | None = knob(None, "synthetic images per class and run",
                                           shown_default="--real-per-class")
    seeds: int = knob(3, "trainings per arm (the spread)")
    steps: int = knob(1500, "classifier optimizer steps per training (batch 64)")

    def validate(self) -> "AugmentOptions":
        _check([
            (self.real_per_class is not None, "Missing option '--real-per-class': give it, or set real_per_class "
                                              "in --config"),
            ((self.real_per_class or 0) >= 1 and self.seeds >= 1 and self.steps >= 1,
             "--real-per-class, --seeds and --steps must be >= 1"),
            (self.synthetic_per_class is None or self.synthetic_per_class >= 1,
             f"--synthetic-per-class must be >= 1 (default: --real-per-class), got {self.synthetic_per_class}"),
        ])
        return self


@dataclass(frozen=True)
class SampleOptions(StageOptions):
    """What `wganctl sample` draws."""

    n: int = knob(64, "number of images")
    seed: int = knob(0, "latent seed")
    label: int | None = knob(None, "class index to draw (a --conditional run)", flag="--class",
                             shown_default="classes in turn")

    def validate(self) -> "SampleOptions":
        _check([(self.n >= 1, f"--n must be >= 1, got {self.n}")])
        return self


@dataclass(frozen=True)
class InterpolateOptions(StageOptions):
    """The strip `wganctl interpolate` draws: rows of spherical interpolations."""

    rows: int = knob(8, "interpolation paths")
    steps: int = knob(10, "images per path")
    seed: int = knob(0, "latent seed")

    def validate(self) -> "InterpolateOptions":
        _check([(self.rows >= 1 and self.steps >= 2, "--rows must be >= 1 and --steps >= 2")])
        return self


@dataclass(frozen=True)
class ServerSettings:
    """`wganctl server`'s options (its CLI is generated from these knobs)."""

    host: str = knob(DEFAULT_HOST, "interface to bind (0.0.0.0: every interface; see the warning)")
    port: int = knob(DEFAULT_PORT, "TCP port")
    backend_store_uri: Optional[str] = knob(None, "runs database: sqlite:///FILE or postgresql://USER@HOST/DB",
                                            shown_default=f"./{DEFAULT_BACKEND_FILE}")
    artifacts_destination: Optional[str] = knob(None, "where the server stores artifacts: a directory or "
                                                      "s3://BUCKET/PREFIX", shown_default=f"./{DEFAULT_ARTIFACTS_DIR}")
    workers: int = knob(2, "server worker processes")
    basic_auth: bool = knob(False, "MLflow's basic-auth app: users and passwords (needs "
                                   "MLFLOW_FLASK_SERVER_SECRET_KEY; MLFLOW_AUTH_ADMIN_PASSWORD on first start)",
                            flag="--basic-auth")

    def validate(self) -> "ServerSettings":
        return self  # checked where the defaults are filled in against the working directory (`resolved`)

    def resolved(self, cwd: Path | None = None) -> "ServerSettings":
        """Defaults filled in against ``cwd`` (absolute paths: the server may run elsewhere)."""
        from wgan.data import fs as datafs  # here: the CLI reads this module when it starts

        cwd = (cwd or Path.cwd()).resolve()
        if not 0 < self.port < 65536:
            raise UserError(f"--port {self.port} is not a TCP port: give 1-65535")
        if self.workers < 1:
            raise UserError("--workers must be at least 1")
        backend = self.backend_store_uri or f"sqlite:///{cwd / DEFAULT_BACKEND_FILE}"
        if "://" not in backend:
            raise UserError(f"--backend-store-uri {backend!r} is not a database URI: "
                            "give sqlite:///FILE or postgresql://USER@HOST/DB")
        if backend.startswith("file:"):
            raise UserError("--backend-store-uri must be a database (sqlite:/// or postgresql://), "
                            "not a file store: MLflow's file store is deprecated and slow for many runs")
        database = backend.removeprefix("sqlite:///") if backend.startswith("sqlite:///") else None
        if database and not (cwd / database).parent.is_dir():  # sqlite creates the file, not its directory
            raise UserError(f"--backend-store-uri {backend}: directory {(cwd / database).parent} does not exist: "
                            f"create it, or give sqlite:///FILE in an existing directory")
        artifacts = self.artifacts_destination or str(cwd / DEFAULT_ARTIFACTS_DIR)
        if "://" not in artifacts:
            artifacts = str((cwd / artifacts).resolve())
            problem = datafs.cannot_write(artifacts)
            if problem:
                raise UserError(f"--artifacts-destination {artifacts}: {problem}: give a directory the server "
                                f"can write, or s3://BUCKET/PREFIX")
        return ServerSettings(self.host, self.port, backend, artifacts, self.workers, self.basic_auth)

    @property
    def tracking_uri(self) -> str:
        """What clients set as MLFLOW_TRACKING_URI (a wildcard bind is reached through loopback here)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else "[::1]" if self.host == "::" else self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port}"
