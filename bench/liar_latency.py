"""Size and inference latency of a (pruned) DT checkpoint: parameters, bytes of the weights file,
and the median time of one model forward on a (batch, context_len) window, on one CPU thread.

    python bench/liar_latency.py BASE_CHECKPOINT [CHECKPOINT ...] [--batch 1 50] [--rounds 5]

Speed-ups are relative to the first checkpoint.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from orl.api import load_trained_agent, resolve_checkpoint


def forward_latency(agent: Any, batch: int, reps: int = 50, warmup: int = 5) -> float:
    """Median seconds of one ``agent.model`` forward on a full window of ``batch`` sequences."""
    cfg = agent.model.cfg
    g = torch.Generator().manual_seed(0)
    k = cfg.context_len
    task = torch.zeros(batch, dtype=torch.long)
    prompts = agent.prompts()
    inputs = dict(
        states=torch.randn(batch, k, cfg.obs_dim, generator=g),
        actions=torch.randn(batch, k, cfg.act_dim, generator=g),
        returns_to_go=torch.rand(batch, k, generator=g),
        timesteps=torch.arange(k).expand(batch, k),
        mask=torch.ones(batch, k, dtype=torch.bool),
        task=task if agent.uses_task_id else None,
        prompt=None if prompts is None else {name: v[task] for name, v in prompts.items()},
        route=agent.route(task),
    )
    times = []
    with torch.no_grad():
        for i in range(warmup + reps):
            start = time.perf_counter()
            agent.model(**inputs)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def size(agent: Any, checkpoint: str | Path) -> dict[str, int]:
    """Parameters (all, blocks) of a loaded agent and bytes of its checkpoint's weights file."""
    return {
        "params": sum(p.numel() for p in agent.parameters()),
        "block_params": sum(p.numel() for p in agent.model.transformer.blocks.parameters()),
        "weights_bytes": (resolve_checkpoint(checkpoint) / "model.safetensors").stat().st_size,
    }


def measure(checkpoint: str | Path, batches: list[int], reps: int = 50) -> dict[str, Any]:
    """``size`` and the forward latency (ms) per batch size."""
    agent = load_trained_agent(checkpoint, device="cpu")
    return size(agent, checkpoint) | {
        f"latency_ms_b{b}": 1e3 * forward_latency(agent, b, reps) for b in batches
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 50])
    parser.add_argument("--reps", type=int, default=20, help="forwards per measurement")
    parser.add_argument("--rounds", type=int, default=5,
                        help="the checkpoints are measured in turn this many times (so a busy "
                             "machine slows all alike); the median of the rounds is reported")
    args = parser.parse_args()
    torch.set_num_threads(1)
    agents = {c: load_trained_agent(c, device="cpu") for c in args.checkpoints}
    times: dict[tuple[Path, int], list[float]] = {(c, b): [] for c in agents for b in args.batch}
    for _ in range(args.rounds):
        for (checkpoint, batch), samples in times.items():
            samples.append(forward_latency(agents[checkpoint], batch, args.reps))
    base = args.checkpoints[0]
    for checkpoint in args.checkpoints:
        row: dict[str, Any] = {"checkpoint": str(checkpoint), **size(agents[checkpoint], checkpoint)}
        for batch in args.batch:
            ms = 1e3 * statistics.median(times[checkpoint, batch])
            row[f"latency_ms_b{batch}"] = ms
            row[f"speedup_b{batch}"] = 1e3 * statistics.median(times[base, batch]) / ms
        print(json.dumps(row))


if __name__ == "__main__":
    main()
