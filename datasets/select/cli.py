"""``orl data select``: choose episodes of local datasets and save them as a new Minari dataset.

The summary compares the selection with the pool: selected count, time, mean return (raw and
per-task normalised) and the dominance score of the top eigenvalues of the feature correlation
(``orl.datasets.select.dominance_score``: share of the variance in the 5 largest eigenvalues;
lower means less dimensional collapse).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from orl.cli import HelpFormatter

METHOD_NAMES = ("disf", "datamask", "ntk", "random", "top-return")


def parse_budget(text: str) -> float | int:
    """``0.1`` -> a fraction (float); ``50`` -> a count (int)."""
    try:
        return int(text) if text.lstrip("+-").isdigit() else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"budget must be a fraction in (0, 1] (e.g. 0.1) or a count (e.g. 50), got {text!r}"
        ) from None


def add_select_command(data_commands: Any) -> None:
    """Register ``select`` under ``orl data``."""
    sel = data_commands.add_parser(
        "select", help="select episodes (DiSF, DATAMASK, NTK, random, top-return) into a new dataset",
        formatter_class=HelpFormatter,
    )
    sel.add_argument("sources", nargs="+", help="dataset ids (or D4RL files) forming the pool")
    sel.add_argument("--method", choices=METHOD_NAMES, default="disf")
    sel.add_argument("--budget", type=parse_budget, default=0.1,
                     help="fraction in (0, 1] of the pool's episodes, or an integer count")
    sel.add_argument("-o", "--output", required=True, help="id of the new dataset (namespace/name-vN)")
    sel.add_argument("--target", nargs="+", default=None,
                     help="ntk: dataset ids of the target task's few trajectories")
    sel.add_argument("--model", type=Path, default=None,
                     help="run or checkpoint dir of a trained DT: encoder features (disf, datamask) "
                          "and gradients (ntk; train it on the target set)")
    sel.add_argument("--features", choices=("auto", "raw", "dt"), default="auto",
                     help="auto: the model's encoder when --model is given, else raw statistics")
    sel.add_argument("--seed", type=int, default=0)
    sel.add_argument("--block-size", type=int, default=1024, help="disf: items per block")
    sel.add_argument("--quality-filter", type=float, default=0.0,
                     help="disf: first drop this bottom fraction by normalised return")
    sel.add_argument("--lam", type=float, default=0.3, help="datamask: weight of quality")
    sel.add_argument("--diversity", choices=("cosine", "disf"), default="cosine", help="datamask")
    sel.add_argument("--steps", type=int, default=300, help="datamask: policy-gradient steps")
    sel.add_argument("--prefilter", type=float, default=0.4,
                     help="datamask: drop this bottom fraction by quality first")
    sel.add_argument("--ntk-params", choices=("adapter", "last-block"), default="adapter")
    sel.add_argument("--ntk-dim", type=int, default=8192, help="ntk: projected gradient size")
    sel.add_argument("--device", default=None, help="cpu / cuda (default: cuda if available)")
    sel.add_argument("--json", type=Path, default=None, help="also write the summary as JSON")
    sel.add_argument("--root", type=Path, default=None,
                     help="datasets folder (default: $MINARI_DATASETS_PATH or ~/.minari/datasets)")
    sel.set_defaults(func=run_select)


def summarize(store: Any, chosen: Any, features: Any, seconds: float) -> dict[str, Any]:
    """Selected count, time, mean returns and dominance scores of the pool and the selection."""
    from orl.datasets.select.api import dominance_score, normalized_returns

    returns, quality = store.episode_returns, normalized_returns(store)
    return {
        "pool_episodes": store.num_episodes, "selected": len(chosen), "seconds": round(seconds, 3),
        "return_mean_pool": float(returns.mean()), "return_mean_selected": float(returns[chosen].mean()),
        "normalized_return_pool": float(quality.mean()),
        "normalized_return_selected": float(quality[chosen].mean()),
        "dominance_pool": dominance_score(features), "dominance_selected": dominance_score(features[chosen]),
    }


def run_select(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table
    from tqdm.auto import tqdm

    from orl.datasets.loading import load
    from orl.datasets.registry import DatasetExistsError, dataset_dir
    from orl.datasets.select.api import budget_count, episode_features, select
    from orl.datasets.select.datamask import DataMaskConfig
    from orl.datasets.select.export import export_selection
    from orl.datasets.select.ntk import NTKConfig
    from orl.io import atomic_path

    if dataset_dir(args.output, args.root).exists():  # fail before any work
        raise DatasetExistsError(f"Dataset {args.output!r} already exists: choose another -o id.")
    store = load(args.sources, args.root)
    budget_count(args.budget, store.num_episodes)
    agent = None
    if args.model is not None:
        from orl.api import load_trained_agent

        agent = load_trained_agent(args.model, device=args.device)
    target = load(args.target, args.root) if args.target else None
    features = episode_features(store, args.features, agent)
    datamask = DataMaskConfig(lam=args.lam, diversity=args.diversity, steps=args.steps,
                              prefilter=args.prefilter)
    ntk = NTKConfig(params=args.ntk_params, dim=args.ntk_dim)
    bar = tqdm(desc=f"select ({args.method})", unit="it",
               disable=args.method in ("random", "top-return"))  # nothing to report

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done)

    start = time.perf_counter()
    chosen = select(store, args.budget, args.method, seed=args.seed, features=features, agent=agent,
                    target=target, block_size=args.block_size, quality_filter=args.quality_filter,
                    datamask=datamask, ntk=ntk, device=args.device, progress=progress)
    seconds = time.perf_counter() - start
    bar.close()
    params = {k: v for k, v in vars(args).items()
              if k not in ("func", "sources", "output", "json", "root", "command", "data_command")}
    params = {k: str(v) if isinstance(v, Path) else v for k, v in params.items()}
    summary = summarize(store, chosen, features, seconds)
    path = export_selection(store, chosen, args.output, {**params, "summary": summary}, args.root)
    table = Table("", "pool", "selected", title=f"{args.output} ({args.method}, {seconds:.1f} s)")
    table.add_row("episodes", str(summary["pool_episodes"]), str(summary["selected"]))
    table.add_row("mean return", f"{summary['return_mean_pool']:.1f}",
                  f"{summary['return_mean_selected']:.1f}")
    table.add_row("mean normalised return", f"{summary['normalized_return_pool']:.3f}",
                  f"{summary['normalized_return_selected']:.3f}")
    table.add_row("dominance (top-5 eigenvalues)", f"{summary['dominance_pool']:.3f}",
                  f"{summary['dominance_selected']:.3f}")
    Console().print(table)
    print(f"wrote {path}")
    if args.json:
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps({"dataset": args.output, **params, **summary}, indent=1))
    return 0
