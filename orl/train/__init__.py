"""The one training loop: ``Trainer``, its config, callbacks and checkpoints."""

from orl.train.callbacks import Callback
from orl.train.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    load_model_weights,
    save_checkpoint,
)
from orl.train.config import TrainConfig
from orl.train.trainer import NonFiniteLossError, Trainer, learning_rate

__all__ = [
    "Callback", "CheckpointError", "NonFiniteLossError", "TrainConfig", "Trainer",
    "latest_checkpoint", "learning_rate", "load_checkpoint", "load_model_weights",
    "save_checkpoint",
]
