"""LIAR: structured pruning of trained DT policies (attention heads, FFN neurons) with
closed-form least-squares reconstruction of the pruned projections, no retraining."""

from orl.agents.liar.checkpoint import CalibrationConfig, finetune_checkpoint, prune_checkpoint
from orl.agents.liar.prune import PruneConfig, PruneReport, prune_agent, select_units, unit_scores
from orl.agents.liar.reconstruct import ActivationStats, liar_reconstruction, relative_output_error

__all__ = [
    "ActivationStats", "CalibrationConfig", "PruneConfig", "PruneReport", "finetune_checkpoint",
    "liar_reconstruction", "prune_agent", "prune_checkpoint", "relative_output_error",
    "select_units", "unit_scores",
]
