"""LIAR sweep: success/return of a trained DT vs fraction of block parameters removed.

For every ratio, the checkpoint is pruned (one criterion) without reconstruction ("none"), with
LIAR reconstruction ("liar"), and the "none" model is fine-tuned for a few steps through the
Trainer ("finetune", the retraining baseline). Every model, and the unpruned one, is evaluated
with the same seeds and timed (``liar_latency.measure``). Rows go to ``OUT/results.jsonl`` as
they finish; a rerun skips the rows already there, so the sweep can be interrupted and resumed.

    python bench/liar_sweep.py RUN_DIR OUT --ratios 0.1 0.3 0.5 0.7 --criterion wanda \
        --finetune-steps 200 --episodes 5 --num-envs 5 --seed 0
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from liar_latency import measure

import orl
from orl.agents.liar import CalibrationConfig, PruneConfig, finetune_checkpoint, prune_checkpoint
from orl.io import atomic_path

METHODS = ("none", "liar", "finetune")


def evaluate(checkpoint: Path, args: argparse.Namespace) -> dict[str, Any]:
    policy, tasks = orl.load_agent(checkpoint, device="cpu", with_tasks=True)
    result = orl.evaluate(policy, args.eval_tasks or tasks, episodes=args.episodes,
                          num_envs=args.num_envs, seed=args.seed, max_steps=args.max_steps,
                          progress=False)
    return {k: v for k, v in result.to_dict().items() if "/" not in k}


def model_for(method: str, ratio: float, args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """The checkpoint of one sweep cell (made if missing) and how long making it took."""
    out: Path = args.out
    pruned = out / f"r{ratio:.2f}-{'liar' if method == 'liar' else 'none'}"
    info: dict[str, Any] = {}
    if not pruned.exists():
        cfg = PruneConfig(ratio=ratio, criterion=args.criterion, scope=args.scope,
                          reconstruct="liar" if method == "liar" else "none")
        report = prune_checkpoint(args.run, pruned, cfg,
                                  CalibrationConfig(episodes=args.calib_episodes,
                                                    windows=args.calib_windows, seed=args.seed))
        info = {"prune_seconds": report.seconds,
                "error_dropped": [s.error_dropped for s in report.sites],
                "error": [s.error for s in report.sites]}
    if method != "finetune":
        return pruned, info
    run_dir = out / f"r{ratio:.2f}-finetune"
    final = run_dir / "checkpoints" / "final"
    if not final.exists():
        shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted fine-tuning restarts
        start = time.perf_counter()
        finetune_checkpoint(pruned, run_dir, steps=args.finetune_steps, lr=args.finetune_lr,
                            seed=args.seed)
        info["finetune_seconds"] = time.perf_counter() - start
    return final, info


def markdown(rows: list[dict[str, Any]]) -> str:
    """One line per model: block parameters removed, success/return/score, size, latency."""
    base = next(r for r in rows if r["method"] == "original")
    keys = [k for k in ("success_mean", "return_mean", "normalized_score_mean") if k in base]
    lat = sorted(k for k in base if k.startswith("latency_ms_"))
    lines = ["| ratio | method | block params removed | " + " | ".join([*keys, "params", *lat]) + " |",
             "|" + "---|" * (4 + len(keys) + len(lat))]
    for r in sorted(rows, key=lambda r: (r["ratio"], METHODS.index(r["method"])
                                         if r["method"] in METHODS else -1)):
        removed = 1 - r["block_params"] / base["block_params"]
        values = [f"{r[k]:.3f}" if k == "success_mean" else f"{r[k]:.1f}" for k in keys]
        lines.append(f"| {r['ratio']:.1f} | {r['method']} | {100 * removed:.1f}% | "
                     + " | ".join(values + [f"{r['params']:,}"] + [f"{r[k]:.2f}" for k in lat]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="run dir or checkpoint of the trained policy")
    parser.add_argument("out", type=Path, help="folder for the pruned models and results.jsonl")
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.1, 0.3, 0.5, 0.7])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--criterion", default="wanda")
    parser.add_argument("--scope", default="per-layer")
    parser.add_argument("--calib-episodes", type=int, default=5)
    parser.add_argument("--calib-windows", type=int, default=256)
    parser.add_argument("--finetune-steps", type=int, default=200)
    parser.add_argument("--finetune-lr", type=float, default=3e-4)
    parser.add_argument("--episodes", type=int, default=5)
    parser.add_argument("--num-envs", type=int, default=5)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--eval-tasks", nargs="+", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latency-batch", nargs="+", type=int, default=[1, 50])
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.jsonl"
    rows = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    done = {(row["ratio"], row["method"]) for row in rows}
    cells = [(0.0, "original")] + [(r, m) for r in args.ratios for m in args.methods]
    for ratio, method in cells:
        if (ratio, method) in done:
            continue
        checkpoint, info = (args.run, {}) if method == "original" else model_for(method, ratio, args)
        start = time.perf_counter()
        row = {"ratio": ratio, "method": method, "criterion": args.criterion,
               **evaluate(checkpoint, args), "eval_seconds": time.perf_counter() - start,
               **measure(checkpoint, args.latency_batch), **info}
        rows.append(row)
        with atomic_path(results) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(json.dumps(row), flush=True)
    print(markdown(rows))


if __name__ == "__main__":
    main()
