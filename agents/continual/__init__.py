"""Continual learning over task sequences (OCW10/20, shuffled orders, any list): the runner,
the success-matrix metrics and report, and the baselines as plug-ins of the one Trainer."""

from orl.agents.continual.agent import ContinualAgent, Method
from orl.agents.continual.config import METHODS, ContinualConfig, StageConfig
from orl.agents.continual.metrics import (
                                         ContinualMetrics,
                                         Curve,
                                         cw_forward_transfer,
                                         record_metrics,
                                         sequence_matrix,
                                         summarize,
)
from orl.agents.continual.report import (
                                         continual_metrics,
                                         continual_record,
                                         load_results,
                                         own_stage_curve,
                                         reference_curves,
)

__all__ = ["METHODS", "ContinualAgent", "ContinualConfig", "ContinualMetrics", "Curve", "Method",
           "StageConfig", "continual_metrics", "continual_record", "cw_forward_transfer",
           "load_results", "own_stage_curve", "record_metrics", "reference_curves", "sequence_matrix",
           "summarize"]
