"""The CPU-budget MT10 comparison of docs/results/harmodt.md: launch the runs, then summarize.

    orl data generate MT10 --level near-optimal --episodes 50 --version 1
    python bench/harmodt_mt10.py --out runs/harmodt-mt10 --methods mtbc harmodt-M --seeds 0 1
    python bench/summarize_runs.py runs/harmodt-mt10

Every run is ``train-agent`` with the same data, small model (64-d, 2 layers, 2 heads, K 20),
3,000 steps of batch 16 and evaluation (every 1,500 steps and at the end, 10 episodes per task);
only the agent differs. Methods: ``mtdt``, ``mtbc``, ``prompt_dt``, ``harmodt-R|M|F`` and
``gharmodt-F-g<G>`` (HarmoDT-F with the tasks clustered into G groups). Runs of masked HarmoDT
variants are then evaluated without task ids (``orl eval --task-agnostic``: the merged mask, or
the gate for G-HarmoDT) into ``eval_task_agnostic.json``. ``--unseen TASKS`` holds those MT10
tasks out of training and evaluates them from 5 of their trajectories (``eval_final_unseen.json``).
A finished run (``eval_final.json`` present) is skipped; runs go ``--parallel`` at a time, one
torch thread each.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from launch import run_parallel, train_command

COMMON = ["data.generate_missing=false", "model.embed_dim=64", "model.n_layer=2", "model.n_head=2",
          "sampler.batch_size=16", "sampler.rtg_scale=1000.0", "train.steps=3000", "train.lr=1e-3",
          "train.warmup_steps=300", "train.eval_every=1500", "train.checkpoint_every=1500",
          "eval.episodes=10", "eval.num_envs=10", "run.logger=csv"]
PROMPT = ["sampler.prompt_len=5", "sampler.prompt_source=random"]


def method_overrides(method: str) -> list[str]:
    """The ``train-agent`` overrides that make ``method`` out of the common setting."""
    if method in ("mtdt", "mtbc"):
        return [f"agent.name={method}"]
    if method == "prompt_dt":
        return ["agent.name=prompt_dt", *PROMPT]
    match = re.fullmatch(r"(g?)harmodt-([RMF])(?:-g(\d+))?", method)
    if match is None or bool(match[1]) != bool(match[3]):
        raise SystemExit(f"unknown method {method!r}")
    groups = [f"agent.harmodt.num_groups={match[3]}"] if match[3] else []
    return ["agent.name=harmodt", f"agent.harmodt.variant={match[2]}",
            "sampler.task_mode=round_robin", *PROMPT, *groups]


def commands(method: str, seed: int, args: argparse.Namespace) -> list[list[str]]:
    """Training, then (for masked HarmoDT) the evaluation without task ids."""
    run = args.out / f"{method}-s{seed}"
    tasks = [t for t in mt10() if t not in args.unseen]
    data = [f"data.tasks=[{', '.join(tasks)}]", f"data.level={args.level}",
            f"data.version={args.version}"]
    if args.unseen:
        data.append(f"data.unseen_tasks=[{', '.join(args.unseen)}]")
    jobs = [train_command(run, [*COMMON, *data, *method_overrides(method), f"run.seed={seed}"])]
    if "harmodt" in method and not method.startswith("harmodt-R"):
        jobs.append(["orl", "eval", str(run), "--task-agnostic", "--seed", str(seed),
                     "--json", str(run / "eval_task_agnostic.json")])
    return jobs


def mt10() -> list[str]:
    from orl.envs.benchmarks import MT10

    return list(MT10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/harmodt-mt10"))
    parser.add_argument("--methods", nargs="+", default=["mtdt", "mtbc", "prompt_dt", "harmodt-R",
                                                          "harmodt-M", "harmodt-F"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--level", default="near-optimal")
    parser.add_argument("--version", type=int, default=1)
    parser.add_argument("--unseen", nargs="*", default=[], metavar="TASK")
    parser.add_argument("--parallel", type=int, default=2)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [(f"{m}-s{s}", commands(m, s, args)) for s in args.seeds for m in args.methods
            if not (args.out / f"{m}-s{s}" / "eval_final.json").is_file()]
    run_parallel(jobs, args.out, args.parallel)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
