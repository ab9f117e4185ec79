"""Sample quality during training: a Frechet distance of fixed generator samples, in classifier features.

One implementation for both of its uses. Tune's objective: the critic's loss cannot rank
trials (its scale moves with lambda and c), so tune ranks them by sample quality at every
checkpoint. `train --eval-every N`: the run's quality curve (``eval/fd`` and class coverage)
every N steps, by which Ray Train keeps the best checkpoint. Either way rank 0 draws
``samples`` images from a fixed latent batch, embeds them with the project classifier of the
evaluate stage and computes the Frechet distance (Heusel et al. 2017) to the dataset's
reference statistics. Everything the workers need travels in one picklable dict, so no
worker reads files that only the driver can see.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from wgan.classifier import Classifier, ClassifierSpec
from wgan.metrics.coverage import class_coverage
from wgan.metrics.frechet import frechet_distance_from_statistics

METRIC = "objective/frechet_distance"  # tune's objective
# train --eval-every: the curve, and the score Ray Train keeps the best checkpoint by
EVAL_FD = "eval/fd"
EVAL_COVERAGE = ("eval/coverage_classes", "eval/coverage_min_share")
EVAL_SECONDS = "eval/seconds"  # each evaluation's wall time: its share of the run is visible
# What Ray Train ranks the checkpoints of a run with --eval-every by (lowest best): eval/fd where the
# checkpoint was evaluated, else UNSCORED, which ranks it last. Not NaN or inf: Ray keeps its ranking
# as JSON (checkpoint_manager_snapshot.json), where they become null, and a resumed run's controller
# then fails on the null (measured with Ray 2.60: "unsupported operand type(s) for *: 'float' and 'NoneType'").
RANK_SCORE = "eval/rank_score"
UNSCORED = 1e300


def objective_spec(classifier: Classifier, mu: np.ndarray, sigma: np.ndarray, samples: int, seed: int = 1234) -> dict[str, Any]:
    return {"classifier_spec": classifier.spec.to_dict(), "classifier_state": classifier.state_dict(),
            "mu": np.asarray(mu), "sigma": np.asarray(sigma), "samples": samples, "seed": seed}


class SampleQuality:
    """Callable on a generator: the Frechet distance of its samples to the reference."""

    def __init__(self, spec: dict[str, Any], z_dim: int, num_classes: int, device: torch.device):
        self.classifier = Classifier(ClassifierSpec(**spec["classifier_spec"]))
        self.classifier.load_state_dict(spec["classifier_state"])
        self.classifier.eval().to(device)
        self.mu, self.sigma = spec["mu"], spec["sigma"]
        g = torch.Generator().manual_seed(spec["seed"])
        self.z = torch.randn(spec["samples"], z_dim, generator=g).to(device)
        self.labels = torch.arange(spec["samples"], device=device) % num_classes if num_classes else None

    def __call__(self, generator: nn.Module, batch: int = 500) -> float:
        """The Frechet distance of the generator's samples to the reference (tune's objective)."""
        return self.measure(generator, batch)[EVAL_FD]

    @torch.no_grad()
    def measure(self, generator: nn.Module, batch: int = 500) -> dict[str, float]:
        """``eval/fd`` and the class coverage of the samples (`wgan.metrics.coverage`), one pass."""
        was_training = generator.training
        generator.eval()
        feats, predicted = [], []
        for start in range(0, self.z.shape[0], batch):
            labels = None if self.labels is None else self.labels[start:start + batch]
            images = generator(self.z[start:start + batch], labels)
            # quantise like real data (uint8) so samples and references share one pipeline
            images = ((images + 1) * 127.5).round().clamp(0, 255) / 127.5 - 1
            f = self.classifier.features(images)
            feats.append(f.double().cpu())
            predicted.append(self.classifier.head(f).argmax(1).cpu())
        generator.train(was_training)
        f = torch.cat(feats).numpy()
        coverage = class_coverage(torch.cat(predicted).numpy(), self.classifier.spec.num_classes)
        return {EVAL_FD: frechet_distance_from_statistics(f.mean(0), np.cov(f, rowvar=False), self.mu, self.sigma),
                EVAL_COVERAGE[0]: float(coverage.covered), EVAL_COVERAGE[1]: float(coverage.shares.min())}
