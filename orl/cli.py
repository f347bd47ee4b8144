"""The ``orl`` command: ``orl data generate|list|info``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _cmd_generate(args: argparse.Namespace) -> int:
    from orl.datasets.generation import GenerationConfig, generate

    cfg = GenerationConfig(
        tasks=args.tasks,
        levels=args.level,
        episodes=args.episodes,
        seed=args.seed,
        benchmark_seed=args.benchmark_seed,
        version=args.version,
        workers=args.workers,
        episodes_per_shard=args.episodes_per_shard,
    )
    ids = generate(cfg, root=args.root, exist_ok=args.exist_ok, overwrite=args.overwrite)
    for dataset_id in ids:
        print(dataset_id)
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from orl.datasets.registry import datasets_root, list_local

    ids = list_local(args.root)
    if not ids:
        print(f"No datasets under {args.root or datasets_root()}. Make some with: orl data generate")
    for dataset_id in ids:
        print(dataset_id)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from orl.datasets.info import summarize

    summaries = [summarize(dataset_id, args.root) for dataset_id in args.ids]
    if args.json:
        print(json.dumps([s.to_dict() for s in summaries], indent=2))
        return 0
    table = Table("dataset", "episodes", "steps", "return mean ± std", "min / max", "success")
    for s in summaries:
        success = "n/a" if s.success_rate is None else f"{s.success_rate:.2f}"
        table.add_row(
            s.dataset_id, str(s.episodes), str(s.steps),
            f"{s.return_mean:.1f} ± {s.return_std:.1f}",
            f"{s.return_min:.1f} / {s.return_max:.1f}", success,
        )
    Console().print(table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orl", description="orl: offline RL toolkit")
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="make, list and inspect datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    root_help = "datasets folder (default: $MINARI_DATASETS_PATH or ~/.minari/datasets)"

    gen = data_commands.add_parser(
        "generate", help="roll out Meta-World scripted experts into Minari datasets",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    gen.add_argument("tasks", nargs="+", help="tasks and/or benchmarks, e.g. reach-v3 or MT10")
    gen.add_argument("--level", nargs="+", default=["expert"],
                     help="expert, near-optimal, sub-optimal, random (several allowed)")
    gen.add_argument("--episodes", type=int, default=50, help="episodes per dataset")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--benchmark-seed", type=int, default=0, help="seed of the goal variations")
    gen.add_argument("--version", type=int, default=0, help="dataset version (the -vN of the id)")
    gen.add_argument("--workers", type=int, default=0, help="worker processes (0: one per core)")
    gen.add_argument("--episodes-per-shard", type=int, default=5)
    gen.add_argument("--exist-ok", action="store_true", help="skip datasets that already exist")
    gen.add_argument("--overwrite", action="store_true", help="replace existing datasets")
    gen.add_argument("--root", type=Path, default=None, help=root_help)
    gen.set_defaults(func=_cmd_generate)

    lst = data_commands.add_parser("list", help="list local datasets")
    lst.add_argument("--root", type=Path, default=None, help=root_help)
    lst.set_defaults(func=_cmd_list)

    info = data_commands.add_parser("info", help="episodes, steps, returns and success of datasets")
    info.add_argument("ids", nargs="+", help="dataset ids or D4RL-format .hdf5 files")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.add_argument("--root", type=Path, default=None, help=root_help)
    info.set_defaults(func=_cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
