"""Command-line entry points: ``orl`` (data, eval) and ``train-agent``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each option's default, except where its help already says it or it has
    none worth printing (None, an off flag)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default is None or action.default is False or "default" in text.lower():
            return text
        return super()._get_help_string(action)


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
    from orl.agents.continual.report import add_report_parser
    from orl.agents.liar.cli import add_prune_command
    from orl.datasets.select.cli import add_select_command
    from orl.study.cli import add_study_command

    parser = argparse.ArgumentParser(prog="orl", description="orl: offline RL toolkit")
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="make, list and inspect datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    root_help = "datasets folder (default: $MINARI_DATASETS_PATH or ~/.minari/datasets)"

    gen = data_commands.add_parser(
        "generate", help="roll out Meta-World scripted experts into Minari datasets",
        formatter_class=HelpFormatter,
    )
    gen.add_argument("tasks", nargs="+", help="tasks and/or benchmarks, e.g. reach-v3 or MT10")
    gen.add_argument("--level", nargs="+", default=["expert"],
                     help="expert, near-optimal, sub-optimal, random (several allowed)")
    gen.add_argument("--episodes", type=int, default=50, help="episodes per dataset")
    gen.add_argument("--seed", type=int, default=0,
                     help="seed of the episodes (env resets and the level's action noise)")
    gen.add_argument("--benchmark-seed", type=int, default=0, help="seed of the goal variations")
    gen.add_argument("--version", type=int, default=0, help="dataset version (the -vN of the id)")
    gen.add_argument("--workers", type=int, default=0, help="worker processes (0: one per core)")
    gen.add_argument("--episodes-per-shard", type=int, default=5,
                     help="episodes per work item given to a worker")
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
    add_select_command(data_commands)

    ev = commands.add_parser(
        "eval", help="evaluate a checkpoint (run dir or checkpoint dir) on its tasks",
        formatter_class=HelpFormatter,
    )
    ev.add_argument("checkpoint", type=Path, help="a run dir (its final, else latest checkpoint; a "
                    "continual run: the agent after its last stage) or a checkpoint dir")
    ev.add_argument("--tasks", nargs="+", default=None, help="default: the tasks it was trained on")
    ev.add_argument("--episodes", type=int, default=10, help="per task; episode i uses variation i")
    ev.add_argument("--num-envs", type=int, default=10, help="envs per task")
    ev.add_argument("--seed", type=int, default=0, help="episode i of a task is reset with seed SEED + i")
    ev.add_argument("--vector", choices=["sync", "async"], default="sync",
                    help="gymnasium vector env: one process, or one process per env")
    ev.add_argument("--max-steps", type=int, default=None,
                    help="cap on episode length, like a run's eval.max_steps (None: the env's limit)")
    ev.add_argument("--stop-on-success", action="store_true",
                    help="end an episode at its first success, like a run's eval.stop_on_success")
    ev.add_argument("--device", default=None, help="cpu / cuda (default: cuda if available)")
    ev.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    ev.add_argument("--video", type=Path, default=None, metavar="DIR",
                    help="also record MP4s of the first episodes of every task into DIR "
                         "(pip install 'orl[video]'; headless: MUJOCO_GL=egl or osmesa)")
    ev.add_argument("--video-episodes", type=int, default=1, help="episodes recorded per task")
    ev.add_argument("--task-agnostic", action="store_true",
                    help="HarmoDT: act without task ids (the merged mask; G-HarmoDT: the "
                         "group mask its gate picks from the context)")
    ev.set_defaults(func=_cmd_eval)
    add_prune_command(commands)
    add_report_parser(commands)
    add_study_command(commands)
    return parser


def _cmd_eval(args: argparse.Namespace) -> int:
    from orl.api import load_agent
    from orl.eval.evaluate import evaluate

    policy, tasks = load_agent(args.checkpoint, device=args.device, with_tasks=True,
                               task_agnostic=args.task_agnostic)
    tasks = args.tasks or tasks
    if not tasks:
        raise ValueError(f"{str(args.checkpoint)!r} was trained on data that names no env, so it "
                         "has no tasks to evaluate on: pass --tasks EnvId-vN")
    result = evaluate(policy, tasks, episodes=args.episodes,
                      num_envs=args.num_envs, seed=args.seed, vector=args.vector,
                      max_steps=args.max_steps, stop_on_success=args.stop_on_success,
                      video_dir=args.video, video_episodes=args.video_episodes)
    result.print()
    if args.json:
        from orl.experiment import write_json

        write_json(Path(args.json), result.to_json())
    return 0


def user_errors() -> tuple[type[Exception], ...]:
    """Errors caused by the user's input (bad config values are ``ValueError`` s): printed as one
    line, exit status 2, no traceback."""
    from orl.train.checkpoint import CheckpointError

    return (CheckpointError, ValueError, FileNotFoundError, FileExistsError, ImportError)


def main(argv: list[str] | None = None) -> int:
    from orl.envs.metaworld import quiet_scripted_policies

    quiet_scripted_policies()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except user_errors() as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `orl data list | head -1`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())


def _train_agent_help() -> str:
    from orl.config import describe
    from orl.config.experiment import ExperimentConfig

    rows = describe(ExperimentConfig())
    width = max(len(key) for key, _, _ in rows)
    lines = ["options (key=value; defaults are the built-in quickstart):"]
    lines += [f"  {key:<{width}} {tp:<18} {default!r}" for key, tp, default in rows]
    return "\n".join(lines)


def train_agent_main(argv: list[str] | None = None) -> int:
    """``train-agent [--config X.yaml] [key=value ...] | --resume RUN_DIR``."""
    parser = argparse.ArgumentParser(
        prog="train-agent",
        description="Train an agent. With no arguments: the quickstart (MTDT on a small MT10 "
        "near-optimal dataset, generated once and cached).",
        epilog=_train_agent_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, default=None, help="YAML config (see configs/)")
    parser.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                        help="continue an interrupted run from its latest checkpoint")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. train.steps=500")
    args = parser.parse_args(argv)
    from orl.envs.metaworld import quiet_scripted_policies
    from orl.experiment import train

    quiet_scripted_policies()
    try:
        train(config_path=args.config, overrides=args.overrides, resume=args.resume)
    except user_errors() as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
