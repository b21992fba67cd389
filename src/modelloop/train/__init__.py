"""Training: the loop, early stopping, checkpoints and resume."""

from .trainer import TrainConfig, Trainer, TrainResult

__all__ = ["TrainConfig", "Trainer", "TrainResult"]
