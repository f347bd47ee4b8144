"""Trainer callbacks: how an algorithm hooks into the one training loop."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orl.train.trainer import Trainer


class Callback:
    """Override what you need. ``every`` > 0 makes ``on_step`` run every ``every`` steps.

    State returned by ``state_dict`` (JSON-serialisable, tensors allowed as values of a
    ``"tensors"`` sub-dict) is saved with every checkpoint and handed back to
    ``load_state_dict`` on resume.
    """

    every: int = 0

    def on_train_start(self, trainer: Trainer) -> None:
        """Once, before the first step (also after a resume)."""

    def on_step(self, trainer: Trainer, step: int) -> None:
        """After optimizer step ``step`` (1-based), when ``step % every == 0``."""

    def on_eval(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        """After each periodic evaluation."""

    def on_checkpoint(self, trainer: Trainer, step: int, path: Any) -> None:
        """After a checkpoint was written to ``path``."""

    def on_train_end(self, trainer: Trainer) -> None:
        """Once, after the last step and the final evaluation/checkpoint."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
