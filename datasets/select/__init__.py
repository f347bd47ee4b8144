"""Trajectory selection: DiSF, DATAMASK, NTK-Selector, random and top-return, one interface.

``select(store, budget, method, ...)`` returns episode indices; ``export_selection`` writes them
as a new Minari dataset; ``orl data select`` is the command line.
"""

from orl.datasets.select.api import (
    METHODS,
    budget_count,
    dominance_score,
    episode_features,
    normalized_returns,
    select,
)
from orl.datasets.select.datamask import DataMaskConfig, datamask_select
from orl.datasets.select.disf import disf_select, greedy_incremental, greedy_naive, offdiag_mass
from orl.datasets.select.export import export_selection
from orl.datasets.select.features import dt_features, raw_features
from orl.datasets.select.ntk import NTKConfig, ntk_features, ntk_select

__all__ = [
    "METHODS", "DataMaskConfig", "NTKConfig", "budget_count", "datamask_select", "disf_select",
    "dominance_score", "dt_features", "episode_features", "export_selection", "greedy_incremental",
    "greedy_naive", "ntk_features", "ntk_select", "normalized_returns", "offdiag_mass",
    "raw_features", "select",
]
