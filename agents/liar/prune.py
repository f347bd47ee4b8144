"""Structured pruning of a trained DT with LIAR reconstruction.

``prune_agent`` scores every attention head and FFN neuron (``criterion``), picks the units to
remove (per layer or with one global budget per unit kind), then goes through the sites in
forward order: it collects the inputs of the site's ``proj`` on the calibration windows with the
model pruned so far, reconstructs ``proj`` by ridge least squares (``reconstruct="liar"``) and
physically removes the pruned units, so the model really gets smaller and faster.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from tqdm import tqdm

from orl.agents.liar.calibration import collect
from orl.agents.liar.reconstruct import liar_reconstruction, relative_output_error
from orl.agents.liar.units import KINDS, Site, block_sites

CRITERIA = ("magnitude", "wanda", "taylor")
RECONSTRUCTIONS = ("none", "liar")
SCOPES = ("per-layer", "global")


@dataclass
class PruneConfig:
    """What to prune and how. ``ratio``: fraction of the attention heads and, separately, of the
    FFN neurons removed (each layer keeps at least one of each)."""

    ratio: float = 0.5
    criterion: str = "wanda"  # magnitude | wanda (|W| * ||a||) | taylor (first-order, Fisher)
    reconstruct: str = "liar"  # liar | none
    scope: str = "per-layer"  # per-layer | global (one budget per unit kind over all layers)
    ridge: float = 1e-3  # LIAR ridge, relative to the mean variance of the kept features

    def __post_init__(self) -> None:
        rules = [
            ("ratio", 0.0 <= self.ratio < 1.0, "in [0, 1)"),
            ("criterion", self.criterion in CRITERIA, f"one of {', '.join(CRITERIA)}"),
            ("reconstruct", self.reconstruct in RECONSTRUCTIONS,
             f"one of {', '.join(RECONSTRUCTIONS)}"),
            ("scope", self.scope in SCOPES, f"one of {', '.join(SCOPES)}"),
            ("ridge", self.ridge > 0, "> 0"),
        ]
        for name, ok, expected in rules:
            if not ok:
                raise ValueError(f"prune {name} must be {expected}, got {getattr(self, name)!r}")

    @property
    def needs_data(self) -> bool:
        return self.criterion != "magnitude" or self.reconstruct == "liar"


@dataclass
class SiteReport:
    """One site: units before/after, and the relative output error of its ``proj`` on the
    calibration tokens with the units simply dropped and after reconstruction (None without
    calibration data)."""

    name: str
    kind: str
    units_before: int
    kept: list[int]  # indices of the kept units in the unpruned site
    error_dropped: float | None
    error: float | None

    @property
    def units_after(self) -> int:
        return len(self.kept)


@dataclass
class PruneReport:
    sites: list[SiteReport] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    block_params_before: int = 0
    block_params_after: int = 0
    seconds: float = 0.0

    @property
    def block_fraction_removed(self) -> float:
        return 1.0 - self.block_params_after / self.block_params_before

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"block_fraction_removed": self.block_fraction_removed}


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def unit_scores(agent: Any, sites: Sequence[Site], batches: Sequence[Any] | None,
                criterion: str) -> list[torch.Tensor]:
    """Importance of every unit of every site (higher: kept first).

    magnitude: L2 norm of all weights writing and reading the unit; wanda: sum over the unit's
    ``proj`` columns of ``|W_ij| * RMS(a_j)``; taylor: first-order Taylor/Fisher score of the
    unit's activations on the agent's loss (``collect``).
    """
    if criterion == "magnitude":
        return [(site.source_rows().pow(2).sum(1)
                 + site.per_unit(site.proj.weight.detach().pow(2).sum(0))).sqrt().double().cpu()
                for site in sites]
    stats, fisher = collect(agent, batches, sites, gradients=criterion == "taylor")
    if criterion == "taylor":
        return fisher
    return [site.per_unit(site.proj.weight.detach().abs().sum(0).double().cpu()
                          * s.second_moment.diagonal().sqrt())
            for site, s in zip(sites, stats)]


def select_units(scores: Sequence[torch.Tensor], ratio: float, scope: str) -> list[torch.Tensor]:
    """Sorted indices of the units kept at each site: the ``round(ratio * n)`` lowest-scoring
    units of every site (per-layer) or of all sites together (global) are removed, never the
    last unit of a site."""
    if scope == "per-layer":
        keep = []
        for score in scores:
            n = len(score)
            drop = min(int(ratio * n + 0.5), n - 1)
            keep.append(torch.sort(torch.argsort(score, stable=True)[drop:]).values)
        return keep
    left = [len(score) for score in scores]
    budget = int(ratio * sum(left) + 0.5)
    order = sorted((float(v), site, unit) for site, score in enumerate(scores)
                   for unit, v in enumerate(score))
    dropped: list[set[int]] = [set() for _ in scores]
    for _, site, unit in order:
        if budget == 0:
            break
        if left[site] > 1:
            dropped[site].add(unit)
            left[site] -= 1
            budget -= 1
    return [torch.tensor([u for u in range(len(score)) if u not in dropped[i]], dtype=torch.long)
            for i, score in enumerate(scores)]


def check_prunable(agent: Any, cfg: PruneConfig) -> None:
    """LIAR rewrites the dense ``proj`` weights: per-task masks or LoRA adapters over them would
    no longer fit, so masked/adapted models are pruned without reconstruction only."""
    if cfg.reconstruct != "liar":
        return
    carried = [name for name, lin in agent.model.transformer.linears()
               if lin.masks is not None or lin.lora_a is not None]
    if carried:
        raise ValueError(
            f"LIAR reconstruction is not supported for models with per-task masks or LoRA "
            f"adapters (HarmoDT, CompoFormer; found on {', '.join(carried[:3])}...): a single "
            "reconstructed weight cannot serve every mask. Use --reconstruct none (the masks "
            "then follow the kept units)."
        )


def prune_agent(agent: Any, batches: Sequence[Any] | None, cfg: PruneConfig,
                progress: bool = False) -> PruneReport:
    """Prune ``agent.model`` in place (see the module docstring); returns what was done.

    ``batches``: calibration ``SegmentBatch``es; required unless the criterion is magnitude and
    there is no reconstruction (then the report has no errors).
    """
    if cfg.needs_data and not batches:
        raise ValueError(f"criterion {cfg.criterion!r} with reconstruct {cfg.reconstruct!r} needs "
                         "calibration data (at least one batch)")
    check_prunable(agent, cfg)
    start = time.perf_counter()
    transformer = agent.model.transformer
    report = PruneReport(params_before=count_params(agent),
                         block_params_before=count_params(transformer.blocks))
    was_training = agent.training
    agent.eval()
    sites = block_sites(transformer)
    scores = unit_scores(agent, sites, batches, cfg.criterion)
    keep: list[torch.Tensor] = [torch.empty(0)] * len(sites)
    for kind in KINDS:  # heads and neurons have separate budgets (their scores do not compare)
        of_kind = [i for i, site in enumerate(sites) if site.kind == kind]
        for i, kept in zip(of_kind, select_units([scores[i] for i in of_kind], cfg.ratio, cfg.scope)):
            keep[i] = kept
    for site, units in tqdm(list(zip(sites, keep)), desc="prune", disable=not progress):
        report.sites.append(_prune_site(agent, site, units, batches, cfg))
    agent.train(was_training)
    report.params_after = count_params(agent)
    report.block_params_after = count_params(transformer.blocks)
    report.seconds = time.perf_counter() - start
    return report


def _prune_site(agent: Any, site: Site, units: torch.Tensor, batches: Sequence[Any] | None,
                cfg: PruneConfig) -> SiteReport:
    before = site.num_units
    proj = site.proj
    columns = site.columns(units.to(proj.weight.device))
    weight, bias = proj.weight.detach(), proj.bias.detach()
    stats = collect(agent, batches, [site])[0][0] if batches and len(units) < before else None
    if cfg.reconstruct == "liar" and stats is not None:
        new_weight, new_bias = liar_reconstruction(weight, bias, stats, columns, cfg.ridge)
    else:
        new_weight, new_bias = weight[:, columns], bias
    if stats is not None:
        errors = (relative_output_error(weight, bias, weight[:, columns], bias, columns, stats),
                  relative_output_error(weight, bias, new_weight, new_bias, columns, stats))
    else:  # nothing pruned here (no error), or no calibration data (unknown)
        errors = (0.0, 0.0) if batches else (None, None)
    site.keep(units.to(proj.weight.device), new_weight, new_bias)
    return SiteReport(site.name, site.kind, before, units.tolist(), *errors)
