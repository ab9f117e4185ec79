"""wgan: Wasserstein GAN library (networks, losses, training step, data, metrics).

Plain PyTorch: nothing in this package imports Ray, MLflow or the CLI.
"""

__version__ = "0.1.0"
