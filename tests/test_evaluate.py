"""The evaluate stage end to end: a real train run and classifier run in a real MLflow store, metrics and pictures logged."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image
from typer.testing import CliRunner

from pipelines.classifier import features_and_logits, load_classifier, train_classifier
from pipelines.cli import app
from pipelines.evaluate import draw_samples, evaluate
from pipelines.tracking import ui_url
from tests.cli_output import assert_one_line_error
from wgan.data.rows import read_rows
from pipelines.train import train
from wgan.config import RunSettings, TrainConfig
from wgan.data.reader import ShardReader, pixels_to_tensor
from wgan.errors import UserError
from wgan.metrics import frechet_distance
from pipelines.stage_options import ClassifierOptions, EvaluateOptions, PrepareOptions

# class-conditional, so that the per-class metrics are measured too
TINY = TrainConfig(loss="wgan-gp", steps=4, width=8, z_dim=16, batch=16, conditional=True)
EVERY_2 = RunSettings(log_every=2, sample_every=2, checkpoint_every=2)
N = 200


def test_evaluate_logs_metrics_and_pictures_into_the_run(tiny_dataset, ray_session, mlflow_with_classifier, tmp_path):
    run_id = train(TINY, tiny_dataset, run=EVERY_2, experiment="evaluate", progress=False).run_id
    classifier_run = mlflow_with_classifier

    result = evaluate(run_id, options=EvaluateOptions(n=N, metrics="fid,kid,pr,coverage,is", classifier=classifier_run))

    client = MlflowClient()
    run = client.get_run(run_id)
    logged = {k: v for k, v in run.data.metrics.items() if k.startswith("eval/")}
    assert logged == pytest.approx(result.metrics)
    assert set(logged) == {"eval/fid", "eval/kid_mean", "eval/kid_std", "eval/precision", "eval/recall",
                           "eval/coverage_classes", "eval/coverage_min_share", "eval/is_mean", "eval/is_std",
                           "eval/class_accuracy", "eval/intra_fid_mean"}
    per_class = list(csv.DictReader(io.StringIO(mlflow.artifacts.load_text(f"runs:/{run_id}/eval/per_class.csv"))))
    assert [int(row["class"]) for row in per_class] == list(range(10))
    assert all(int(row["samples"]) == N // 10 for row in per_class)  # sample i is drawn for class i % 10
    assert logged["eval/class_accuracy"] == pytest.approx(np.mean([float(r["accuracy"]) for r in per_class]))
    assert np.isfinite(logged["eval/intra_fid_mean"]) and logged["eval/intra_fid_mean"] > 0
    assert [m.step for m in client.get_metric_history(run_id, "eval/fid")] == [4]  # the run's completed step
    assert 0 <= logged["eval/precision"] <= 1 and 0 <= logged["eval/recall"] <= 1
    assert logged["eval/coverage_classes"] in range(11) and 1 <= logged["eval/is_mean"] <= 10
    assert run.data.tags["eval.classifier_run"] == classifier_run and run.data.tags["eval.n"] == str(N)

    # The logged FID is the Frechet distance of the run's samples to every dataset image, in classifier features;
    # real images sit far closer to the reference than a 4-step generator's samples do.
    classifier = load_classifier(classifier_run)
    real_features, _ = features_and_logits(classifier, (x for x, _ in ShardReader(tiny_dataset, 128, shuffle=False)))
    sample_features, _ = features_and_logits(classifier, [pixels_to_tensor(draw_samples(run_id, N, seed=0))])
    assert logged["eval/fid"] == pytest.approx(frechet_distance(sample_features, real_features), rel=1e-4)
    assert frechet_distance(real_features[:N], real_features) < logged["eval/fid"] / 3

    cache = Path(result.reference)
    assert cache == Path(tiny_dataset) / "reference" / f"classifier-{classifier_run}.npz"
    np.testing.assert_allclose(np.load(cache)["features"], real_features, rtol=1e-4, atol=1e-5)

    artifacts = {a.path for a in client.list_artifacts(run_id, "eval")}
    assert artifacts == {"eval/grid.png", "eval/nearest_neighbours.png", "eval/class_histogram.png", "eval/per_class.csv"}
    neighbours = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/eval/nearest_neighbours.png", dst_path=str(tmp_path))
    assert Image.open(neighbours).size == (6 * 28 + 7 * 2, 8 * 28 + 9 * 2)  # each sample beside its 5 nearest images

    # Again through the CLI, with the classifier found by dataset: same latents, same number; the cache is reused.
    cached_at = os.stat(cache).st_mtime_ns
    cli = CliRunner().invoke(app, ["evaluate", run_id, "--n", str(N), "--metrics", "fid"])
    assert cli.exit_code == 0, cli.output
    assert cli.stdout.strip().splitlines()[-1] == f"open the run: {ui_url(run_id)}"
    # the reference it read is the data the run trained on: still the run's one dataset
    assert [d.dataset.name for d in client.get_run(run_id).inputs.dataset_inputs] == ["fashion-mnist-28px"]
    assert os.stat(cache).st_mtime_ns == cached_at
    assert [m.value for m in client.get_metric_history(run_id, "eval/fid")] == pytest.approx([logged["eval/fid"]] * 2)

    compared = CliRunner().invoke(app, ["compare", run_id, "--out", str(tmp_path / "compare.png")])
    assert compared.exit_code == 0, compared.output
    assert "fid" in compared.output and run_id[:12] in compared.output
    assert Image.open(tmp_path / "compare.png").size[0] > 0

    # An earlier checkpoint, evaluated in the same run at its own step: a quality curve.
    early = evaluate(run_id, options=EvaluateOptions(n=N, metrics="fid", classifier=classifier_run), checkpoint=2)
    history = {m.step: m.value for m in client.get_metric_history(run_id, "eval/fid")}
    assert sorted(history) == [2, 4] and history[2] == pytest.approx(early.metrics["eval/fid"])
    assert client.get_run(run_id).data.tags["eval.checkpoint_step"] == "2"
    with pytest.raises(UserError, match="no checkpoint at step 3"):
        evaluate(run_id, options=EvaluateOptions(n=N, classifier=classifier_run), checkpoint=3)

    with pytest.raises(UserError, match="not a wganctl training run"):
        evaluate(classifier_run, options=EvaluateOptions(n=N))
    bad = CliRunner().invoke(app, ["evaluate", run_id, "--metrics", "fid,sharpness"])
    assert bad.exit_code == 2 and "unknown metric(s) sharpness" in bad.output

    # a checkpoint named by step that does not load is refused in one line (issue 33)
    saved = (Path(client.get_run(run_id).data.tags["ray.storage_path"]) / f"wganctl-{run_id}" / "checkpoint_0000002"
             / "checkpoint.pt")
    saved.write_bytes(saved.read_bytes()[:300])
    cut = CliRunner().invoke(app, ["evaluate", run_id, "--checkpoint", "2", "--classifier", classifier_run])
    assert_one_line_error(cut, "checkpoint at step 2 cannot be used", "is incomplete: 300 of",
                          "give another step it checkpointed (2, 4)")


def test_classifier_refuses_a_missing_test_split(tiny_dataset, mlflow_store):
    with pytest.raises(UserError, match="no 'test' split"):
        train_classifier(tiny_dataset, options=ClassifierOptions(epochs=1), progress=False)


def test_compare_refuses_a_run_without_evaluation(mlflow_store):
    with mlflow.start_run() as run:
        pass
    result = CliRunner().invoke(app, ["compare", run.info.run_id])
    assert result.exit_code == 2 and "wganctl evaluate" in result.output


def random_inception_weights(directory: Path) -> Path:
    """An InceptionV3 state dict in torch-fidelity's on-disk format, randomly initialised (the real
    file is downloaded where a network exists; this test needs its format, not its training)."""
    from torch_fidelity import FeatureExtractorInceptionV3

    class Untrained(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True):  # keep the random initialisation
            return None

    empty = directory / "empty.pth"
    torch.save({}, empty)
    torch.manual_seed(0)
    net = Untrained("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    path = directory / "weights-inception.pth"
    torch.save(net.state_dict(), path)
    return path


def test_inception_features_on_ray_data_match_torchmetrics(ray_session, tmp_path):
    from torchmetrics.image.fid import NoTrainInceptionV3

    from pipelines.cluster.batch_inference import embed_shards, inception_extractor
    from pipelines.prepare import prepare
    from wgan.data.manifest import load_manifest, shard_paths

    data = prepare("fashion-mnist", options=PrepareOptions(size=28, splits=["train"], limit=8), out=str(tmp_path / "fm"), progress=False).out
    manifest = load_manifest(data)
    weights = random_inception_weights(tmp_path)
    ours = embed_shards(shard_paths(data, manifest), 28, 1, inception_extractor(str(weights)))

    # torchmetrics' FID extractor with TF1-style resizing (antialias off) is the same network and input pipeline
    reference = NoTrainInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights),
                                   antialias=False)
    images = torch.from_numpy(read_rows(data, manifest, np.arange(8))).permute(0, 3, 1, 2).expand(-1, 3, -1, -1)
    with torch.no_grad():
        theirs = reference(images.contiguous())  # one requested feature: the tensor itself
    assert ours.shape == (8, 2048)
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-4, atol=1e-4)


def test_inception_weights_are_checked_before_anything_runs(tmp_path):
    from pipelines.cluster.batch_inference import inception_extractor

    with pytest.raises(UserError, match="no Inception weights at"):
        inception_extractor(str(tmp_path / "missing.pth"))
    pickled = tmp_path / "code.pth"
    torch.save({"fc.weight": torch.zeros(1), "extra": Path("/")}, pickled)  # a pickled object, not a tensor
    with pytest.raises(UserError, match="not an Inception state dict that loads safely"):
        inception_extractor(str(pickled))
    result = CliRunner().invoke(app, ["evaluate", "0" * 32, "--features", "inception"])
    assert result.exit_code == 2 and "--inception-weights" in result.output


def test_a_conditional_sample_has_the_label_of_its_row_on_every_path(ray_session, mlflow_store, tmp_path):
    """Sample i of a conditional run is drawn with label i % K whatever the batching: through the logged
    model as `evaluate` calls it, through a checkpoint, and in-process (`draw_samples`). Three classes
    and n past one Ray Data batch (BATCH) and one in-process chunk (FEATURE_BATCH), neither a multiple
    of 3, so a batch that labelled its rows by their index within it would draw other classes."""
    from pipelines.cluster.batch_inference import (BATCH, checkpoint_generator, classifier_extractor, latents,
                                           logged_generator, sample_and_embed)
    from pipelines.classifier import FEATURE_BATCH
    from pipelines.prepare import prepare
    from pipelines.tracking import load_generator
    from tests.data_formats import random_images
    from wgan import checkpoint as ckpt
    from wgan.classifier import Classifier, ClassifierSpec

    classes = 3
    rng = np.random.default_rng(0)
    for name in ("circles", "squares", "stars"):
        (tmp_path / "shapes" / name).mkdir(parents=True)
        for i, pixels in enumerate(random_images(rng, 16, 28, 1)):
            Image.fromarray(pixels.squeeze(-1)).save(tmp_path / "shapes" / name / f"{i:02d}.png")
    data = prepare("imagefolder", str(tmp_path / "shapes"), options=PrepareOptions(size=28, channels=1), out=str(tmp_path / "data"), progress=False).out
    cfg = TrainConfig(loss="wgan-gp", steps=2, width=8, z_dim=16, batch=16, conditional=True)
    trained = train(cfg, data, run=RunSettings(log_every=1, sample_every=2, checkpoint_every=2), experiment="t",
                    progress=False)

    n, seed = FEATURE_BATCH + 10, 3
    assert n > BATCH and BATCH % classes and FEATURE_BATCH % classes  # row 500 is class 2, row 1000 class 1
    model, z_dim = load_generator(trained.run_id)

    def drawn_alone(row: int, label: int) -> np.ndarray:
        return np.asarray(model.predict(latents(seed, [row], z_dim), params={"label": label}), dtype=np.uint8)[0]

    def differs(actual: np.ndarray, expected: np.ndarray) -> bool:
        # the same network on the same latent; another batch size may round a pixel the other way
        return np.abs(actual.astype(int) - expected.astype(int)).max() > 1

    # the label matters: the same latent under another class is another image
    assert all(differs(drawn_alone(BATCH, 2), drawn_alone(BATCH, other)) for other in (0, 1))

    rows = [0, 1, 2, BATCH - 1, BATCH, BATCH + 1, BATCH + 2, FEATURE_BATCH, FEATURE_BATCH + 1, n - 1]
    extractor = classifier_extractor(Classifier(ClassifierSpec(channels=1, image_size=28, num_classes=classes)))
    paths = {
        # no num_classes given: the sampler takes the class count from the model itself
        "logged model": sample_and_embed(logged_generator(trained.model_uri, trained.tracking_uri), n, seed,
                                         extractor)["image"],
        "checkpoint": sample_and_embed(checkpoint_generator(ckpt.load(trained.checkpoint_dir)), n, seed,
                                       extractor)["image"],
        "draw_samples": draw_samples(trained.run_id, n, seed),
    }
    assert all(images.shape == (n, 28, 28, 1) for images in paths.values())
    wrong = [f"{path} row {row}" for path, images in paths.items() for row in rows
             if differs(images[row], drawn_alone(row, row % classes))]
    assert not wrong, f"not drawn with label row % {classes}: {', '.join(wrong)}"
