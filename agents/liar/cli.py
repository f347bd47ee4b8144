"""``orl prune``: structured pruning of a checkpoint with LIAR reconstruction."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from orl.agents.liar.checkpoint import CalibrationConfig, prune_checkpoint
from orl.agents.liar.prune import CRITERIA, RECONSTRUCTIONS, SCOPES, PruneConfig, PruneReport
from orl.cli import HelpFormatter


def add_prune_command(commands: Any) -> None:
    """Register ``orl prune`` on the ``orl`` subcommand parsers."""
    p = commands.add_parser(
        "prune", help="remove attention heads and FFN neurons of a checkpoint (LIAR)",
        formatter_class=HelpFormatter,
    )
    p.add_argument("checkpoint", type=Path, help="checkpoint directory or run directory")
    p.add_argument("-o", "--out", type=Path, required=True,
                   help="new checkpoint directory (must not exist)")
    p.add_argument("--ratio", type=float, default=0.5,
                   help="fraction of the heads and of the FFN neurons removed, in [0, 1)")
    p.add_argument("--criterion", choices=CRITERIA, default="wanda")
    p.add_argument("--reconstruct", choices=RECONSTRUCTIONS, default="liar")
    p.add_argument("--scope", choices=SCOPES, default="per-layer")
    p.add_argument("--ridge", type=float, default=1e-3,
                   help="LIAR ridge, relative to the mean variance of the kept features")
    p.add_argument("--calib-episodes", type=int, default=5,
                   help="calibration episodes per task (the first ones of the training data)")
    p.add_argument("--calib-windows", type=int, default=256, help="calibration segments")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_prune)


def _cmd_prune(args: argparse.Namespace) -> int:
    cfg = PruneConfig(ratio=args.ratio, criterion=args.criterion, reconstruct=args.reconstruct,
                      scope=args.scope, ridge=args.ridge)
    calibration = CalibrationConfig(episodes=args.calib_episodes, windows=args.calib_windows,
                                    seed=args.seed)
    report = prune_checkpoint(args.checkpoint, args.out, cfg, calibration, progress=True)
    print_report(report)
    print(f"pruned checkpoint: {args.out}")
    return 0


def print_report(report: PruneReport) -> None:
    """Per-site table (units, relative output error dropped vs reconstructed) and totals."""
    from rich.console import Console
    from rich.table import Table

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    table = Table("layer", "units", "kept", "error dropped", "error reconstructed",
                  title="relative output error of each proj on the calibration tokens")
    for site in report.sites:
        table.add_row(site.name, site.kind, f"{site.units_after}/{site.units_before}",
                      fmt(site.error_dropped), fmt(site.error))
    console = Console()
    console.print(table)
    console.print(
        f"parameters: {report.params_before:,} -> {report.params_after:,} "
        f"(blocks {report.block_params_before:,} -> {report.block_params_after:,}, "
        f"{100 * report.block_fraction_removed:.1f}% of block parameters removed) "
        f"in {report.seconds:.1f} s"
    )
