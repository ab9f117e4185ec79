"""Sampling and feature extraction for the evaluate stage, as Ray Data batch inference.

Ray Data's documented pattern: a callable class mapped over batches by a pool of
actors (`map_batches(..., concurrency=N)`), each of which loads its models once,
on a GPU of its own with ``gpu``. On one machine the pool uses its CPUs; on a
cluster a 50,000-sample evaluation spreads over the nodes.

Samples are reproducible whatever the batching: row ``i`` always gets the latent
drawn from seed ``(seed, i)`` (`latents`), and from a class-conditional generator
the label ``i % num_classes`` (`draw_rows`, which every sampling path goes through:
logged model, checkpoint, and `pipelines.evaluate.draw_samples` in-process), with the
class count read from the generator itself, never left to the caller.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from wgan.classifier import Classifier, ClassifierSpec
from wgan.data.images import unpack_images
from wgan.data.reader import pixels_to_tensor

BATCH = 500


def latents(seed: int, rows: np.ndarray, z_dim: int) -> np.ndarray:
    """(len(rows), z_dim) float32 standard normal latents, one seeded generator per row."""
    return np.stack([torch.randn(z_dim, generator=torch.Generator().manual_seed(seed * 2**32 + int(row))).numpy()
                     for row in rows]) if len(rows) else np.zeros((0, z_dim), np.float32)


def draw_rows(predict, z: np.ndarray, rows: np.ndarray, num_classes: int) -> np.ndarray:
    """uint8 images of latents ``z`` for sample rows ``rows``: row ``i`` drawn with label
    ``i % num_classes`` (a class-conditional generator), whatever batch the rows came in.

    ``predict(z, label)`` draws every latent of ``z`` with class ``label`` (None: an
    unconditional generator). The label is always given explicitly, one call per label: a
    logged model left without one would label by position within the call instead.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if not num_classes:
        return np.asarray(predict(z, None), dtype=np.uint8)
    labels = rows % num_classes
    out = None
    for label in np.unique(labels):
        chosen = labels == label
        images = np.asarray(predict(z[chosen], int(label)), dtype=np.uint8)
        if out is None:
            out = np.empty((len(z), *images.shape[1:]), np.uint8)
        out[chosen] = images
    return out if out is not None else np.asarray(predict(z, 0), dtype=np.uint8)  # no rows at all


def model_num_classes(model) -> int:
    """The class count of a loaded generator pyfunc model (`pipelines.tracking.generator_model`; 0:
    unconditional), read from the model itself: its own config, not what a caller remembers."""
    config = getattr(model.unwrap_python_model(), "config", None)
    if config is None:
        raise ValueError(f"{type(model.unwrap_python_model()).__name__} is not a wganctl generator model "
                         f"(it has no config): log it with `wganctl train`")
    return int(config.num_classes or 0)


def model_sampler(model, num_classes: int | None = None):
    """``draw(z, rows)`` for a loaded generator pyfunc model: `draw_rows` with the model's class
    count. ``num_classes``, when given, is what the caller expects; refused if the model differs."""
    classes = model_num_classes(model)
    if num_classes is not None and int(num_classes) != classes:
        raise ValueError(f"the logged generator has {classes} classes, not the {num_classes} expected")

    def predict(z: np.ndarray, label: int | None) -> np.ndarray:
        return model.predict(z, params=None if label is None else {"label": label})

    return lambda z, rows: draw_rows(predict, z, rows, classes)


INCEPTION_BATCH = 64  # 299 x 299 inputs: about 1 GB of activations per 64 images


def classifier_extractor(classifier: Classifier) -> dict:
    """Features of the project classifier (its penultimate layer) and its logits."""
    return {"kind": "classifier", "spec": classifier.spec.to_dict(), "state": classifier.state_dict()}


def inception_extractor(weights_path: str) -> dict:
    """InceptionV3 pool3 features (2048-d) and unbiased logits as the FID/IS literature computes them
    (torch-fidelity's port of the TF 'pt_inception-2015-12-05' graph), from a local weights file.

    The file is read here with ``weights_only=True`` (no unpickling of arbitrary objects); a
    file that is not a plain state dict is refused.
    """
    from wgan.errors import UserError

    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"no Inception weights at {weights_path}: download torch-fidelity's "
                        f"weights-inception-2015-12-05-6726825d.pth where a network exists and pass its path")
    except Exception as err:
        raise UserError(f"{weights_path} is not an Inception state dict that loads safely ({type(err).__name__}): "
                        f"pass torch-fidelity's weights-inception-2015-12-05-6726825d.pth")
    if not isinstance(state, dict) or "fc.weight" not in state:
        raise UserError(f"{weights_path} is not an InceptionV3 state dict (no fc.weight): "
                        f"pass torch-fidelity's weights-inception-2015-12-05-6726825d.pth")
    return {"kind": "inception", "state": state}


class _Embedder:
    """A feature extractor on this actor's device: features and logits of uint8 NHWC images."""

    def __init__(self, extractor: dict, gpu: bool):
        self.device = torch.device("cuda" if gpu and torch.cuda.is_available() else "cpu")
        self.kind = extractor["kind"]
        if self.kind == "classifier":
            self.net = Classifier(ClassifierSpec(**extractor["spec"]))
            self.net.load_state_dict(extractor["state"])
        else:
            self.net = _inception(extractor["state"])
        self.net.eval().to(self.device)

    @torch.no_grad()
    def embed(self, images: np.ndarray) -> dict[str, np.ndarray]:
        if self.kind == "classifier":
            hidden = self.net.features(pixels_to_tensor(images).to(self.device))
            logits = self.net.head(hidden)
        else:  # uint8 NCHW RGB in, resized to 299 px inside, as torch-fidelity does
            x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
            hidden, logits = self.net(x.expand(-1, 3, -1, -1).contiguous().to(self.device))
        return {"features": hidden.float().cpu().numpy(), "logits": logits.float().cpu().numpy()}


def _inception(state: dict) -> torch.nn.Module:
    import tempfile

    from torch_fidelity import FeatureExtractorInceptionV3

    # torch-fidelity reads its weights from a path: a file written here from the state dict
    # that was checked with weights_only=True.
    with tempfile.NamedTemporaryFile(suffix=".pth") as handle:
        torch.save(state, handle.name)
        return FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                           feature_extractor_weights_path=handle.name)


class EmbedShards(_Embedder):
    """Batches of a prepared dataset's parquet rows (pyarrow) -> their features."""

    def __init__(self, extractor: dict, gpu: bool, size: int, channels: int):
        super().__init__(extractor, gpu)
        self.size, self.channels = size, channels

    def __call__(self, table) -> dict[str, np.ndarray]:
        return self.embed(unpack_images(table.column("image"), self.size, self.channels))


def logged_generator(model_uri: str, tracking_uri: str, num_classes: int | None = None) -> dict:
    """Sample from a run's logged MLflow model (`runs:/<id>/generator`). The class count comes from
    the model itself; ``num_classes``, when given, is checked against it."""
    return {"model_uri": model_uri, "tracking_uri": tracking_uri, "num_classes": num_classes}


def checkpoint_generator(payload: dict) -> dict:
    """Sample from the generator of a training checkpoint (its moving average when it kept one)."""
    from wgan.checkpoint import sampling_state

    return {"config": payload["config"], "weights": sampling_state(payload)}


class SampleAndEmbed(_Embedder):
    """Row ids -> samples of a generator (a logged MLflow model or checkpoint weights) and their features."""

    def __init__(self, extractor: dict, gpu: bool, generator: dict, seed: int):
        super().__init__(extractor, gpu)
        if "model_uri" in generator:
            import mlflow

            mlflow.set_tracking_uri(generator["tracking_uri"])
            model = mlflow.pyfunc.load_model(generator["model_uri"])
            self.z_dim = model.metadata.get_input_schema().inputs[0].shape[-1]
            self.draw = model_sampler(model, generator.get("num_classes"))
        else:
            from wgan.config import TrainConfig
            from wgan.images import to_uint8
            from wgan.networks import build_generator

            cfg = TrainConfig.from_dict(generator["config"])
            net = build_generator(cfg)
            net.load_state_dict(generator["weights"])
            net.eval()
            self.z_dim = cfg.z_dim

            @torch.no_grad()
            def predict(z: np.ndarray, label: int | None) -> np.ndarray:
                labels = None if label is None else torch.full((len(z),), label, dtype=torch.long)
                return to_uint8(net(torch.from_numpy(z), labels))

            self.draw = lambda z, rows: draw_rows(predict, z, rows, cfg.num_classes)
        self.seed = seed

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = batch["id"]
        images = self.draw(latents(self.seed, rows, self.z_dim), rows)
        return {"row": rows, "image": images, **self.embed(images)}


def _batch(extractor: dict) -> int:
    return INCEPTION_BATCH if extractor["kind"] == "inception" else BATCH


def _pool(gpu: bool, concurrency: int | None) -> dict:
    """map_batches arguments: a fixed pool of actors, one GPU (or one CPU) each."""
    import ray
    import ray.data

    if concurrency is None:
        concurrency = int(ray.cluster_resources().get("GPU" if gpu else "CPU", 1)) or 1
        if not gpu:  # leave a CPU for the read and range tasks that feed the actors
            concurrency = max(1, concurrency - 1)
    return {"compute": ray.data.ActorPoolStrategy(size=concurrency), "num_gpus": 1 if gpu else 0,
            "num_cpus": 0 if gpu else 1}


def sample_and_embed(generator: dict, n: int, seed: int, extractor: dict, *,
                     gpu: bool = False, concurrency: int | None = None, progress: bool = False) -> dict[str, np.ndarray]:
    """``n`` samples of ``generator`` (`logged_generator` or `checkpoint_generator`; uint8 NHWC,
    row order) with their features and logits; ``progress`` counts the samples drawn."""
    import ray.data

    from pipelines.cluster.progress import StageProgress

    with _in_order():  # sample i in row i: a conditional run drew it for class i % K
        dataset = ray.data.range(n).map_batches(
            SampleAndEmbed, batch_size=_batch(extractor), batch_format="numpy",
            fn_constructor_kwargs=dict(extractor=extractor, gpu=gpu, generator=generator, seed=seed),
            **_pool(gpu, concurrency))
        return _collect(dataset, ("row", "image", "features", "logits"),
                        progress=StageProgress("evaluate", n, "samples", enabled=progress))


def embed_shards(paths: list[str], size: int, channels: int, extractor: dict, *, gpu: bool = False,
                 concurrency: int | None = None, rows: int | None = None) -> np.ndarray:
    """Features of every row of the given parquet shards, in row order; given the number of
    ``rows`` they hold, a progress counts the rows embedded."""
    import ray.data

    from pipelines.cluster.progress import StageProgress

    with _in_order():  # features stay in the dataset's row order
        dataset = ray.data.read_parquet(paths, columns=["image"]).map_batches(
            EmbedShards, batch_size=_batch(extractor), batch_format="pyarrow",
            fn_constructor_kwargs=dict(extractor=extractor, gpu=gpu, size=size, channels=channels),
            **_pool(gpu, concurrency))
        progress = StageProgress("evaluate", rows or 0, "reference features", enabled=rows is not None)
        return _collect(dataset, ("features",), progress=progress)["features"]


@contextlib.contextmanager
def _in_order():
    """Ray Data's own order while the block runs (``preserve_order``): its output rows in its input's order."""
    import ray.data

    options = ray.data.DataContext.get_current().execution_options
    ordered = options.preserve_order
    options.preserve_order = True
    try:
        yield
    finally:
        options.preserve_order = ordered


def _collect(dataset, columns: tuple[str, ...], *, progress) -> dict[str, np.ndarray]:
    """The dataset's ``columns``, batch after batch (``progress``, a `StageProgress`, counts the rows).
    Ray core's notice about the actor pool's restarts stays off the console (`console.ray_notices_filtered`)."""
    from pipelines.cluster.console import ray_notices_filtered

    parts: dict[str, list[np.ndarray]] = {c: [] for c in columns}
    with progress, ray_notices_filtered():
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            for c in columns:
                parts[c].append(batch[c])
            progress.advance(len(batch[columns[0]]))
    return {c: np.concatenate(v) for c, v in parts.items()}
