"""Continual learning over task sequences (OCW10/20, shuffled orders, any list): the runner,
the success-matrix metrics and report, and the baselines as plug-ins of the one Trainer."""

from orl.agents.continual.agent import ContinualAgent, Method
from orl.agents.continual.config import METHODS, ContinualConfig, StageConfig
from orl.agents.continual.metrics import ContinualMetrics, cw_forward_transfer, summarize

__all__ = ["METHODS", "ContinualAgent", "ContinualConfig", "ContinualMetrics", "Method",
           "StageConfig", "cw_forward_transfer", "summarize"]
