"""What crosses the Ray hop to a train run's controller stays light (`pipelines.train_hop`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_what_ray_trains_controller_unpickles_imports_neither_torch_nor_mlflow():
    """Ray Train's controller, a new process every run, imports the modules of the train function, its
    config and its callbacks (`pipelines.train_hop`): were they torch's or MLflow's, every run and every
    sweep trial would wait seconds for imports in a process that never trains."""
    probe = ("import sys, ray.train\n"
             "import pipelines.train_hop, pipelines.tune.reports, pipelines.cluster.holds\n"
             "print(sorted(m for m in ('torch', 'mlflow', 'torchvision', 'pipelines.train_worker') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]", done.stdout
