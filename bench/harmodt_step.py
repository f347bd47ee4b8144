"""HarmoDT training step: orl (masks inside the forward, optimizer hooks) vs the released code's
per-step operations (deep-copy the state dict, zero the masked weights, step, restore).

    python bench/harmodt_step.py --tasks 10 --batch-size 8 --steps 20           # this CPU
    python bench/harmodt_step.py --device cuda --steps 200                        # a GPU

Both train the same paper-sized model (embed 256, 6 layers, 8 heads, K 20, prompt 5) on
synthetic MT10-shaped data, one task per step (round robin). orl's figure is ``Trainer.fit``
with the mask update (every ``--mask-interval`` steps) amortised in: its measured cost is
divided by the interval and added to the step time.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import platform
import tempfile
import time
from collections.abc import Callable

import torch
from train_throughput import PAPER, Recorder, synthetic_store  # bench/ sibling script

from orl.agents import DataSpec, build_agent
from orl.agents.dt import action_mse
from orl.config.experiment import AgentConfig
from orl.datasets.sampler import SamplerConfig, SegmentSampler
from orl.train import TrainConfig, Trainer


def make_agent(tasks: int, batch: int, device: str, interval: int):
    store = synthetic_store(tasks=tasks, episodes=10)
    sampler_cfg = SamplerConfig(context_len=20, batch_size=batch, rtg_scale=1000.0,
                                task_mode="round_robin", prompt_len=5)
    sampler = SegmentSampler(store, sampler_cfg, seed=0, device=device)
    spec = DataSpec(39, 4, store.task_names, 1000.0, [4500.0] * tasks)
    agent_cfg = AgentConfig(name="harmodt")
    agent_cfg.harmodt.mask_interval = interval
    agent = build_agent(agent_cfg, PAPER, sampler_cfg, spec, *sampler.state_stats,
                        sampler.best_prompts())
    return agent.to(device), sampler


def orl_step_seconds(tasks, batch, steps, device, interval, graphs) -> tuple[float, float]:
    """(seconds per training step, seconds per mask update)."""
    agent, sampler = make_agent(tasks, batch, device, interval)
    recorder = Recorder()
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = TrainConfig(steps=2 * steps, lr=1e-4, warmup_steps=10, log_every=steps,
                          checkpoint_every=0, device=device, cuda_graphs=graphs)
        trainer = Trainer(agent, sampler, cfg, run_dir, logger=recorder)
        trainer.callbacks = [c for c in trainer.callbacks if c.every == 0]  # time updates apart
        trainer.fit()
        update = next(c for c in agent.callbacks() if c.every)
        trainer.cfg = TrainConfig(steps=2 * interval, warmup_steps=1)  # mid-training: max change
        update.on_step(trainer, interval)  # untimed: Triton compiles its kernels (once a process)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        update.on_step(trainer, interval)
        if device == "cuda":
            torch.cuda.synchronize()
        update_s = time.perf_counter() - start
    return 1.0 / recorder.rows[-1]["train/steps_per_s"], update_s


def baseline_step_seconds(tasks, batch, steps, device) -> float:
    """The released code's step: two state-dict deep copies, masked weights zeroed, restored."""
    agent, sampler = make_agent(tasks, batch, device, 500)
    masks = agent.task_masks()
    for lin in agent.masked_linears().values():  # the baseline masks by overwriting weights
        lin.set_masks(None)
    linears = agent.masked_linears()
    opt = torch.optim.AdamW(agent.parameters(), lr=1e-4, weight_decay=1e-4)

    def step(t: int) -> None:
        batch_t = sampler.sample(task=t)
        saved = copy.deepcopy(agent.state_dict())
        with torch.no_grad():
            for name, lin in linears.items():
                lin.weight.mul_(masks[name][t])
        loss = action_mse(agent.forward_batch(batch_t, None), batch_t)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(agent.parameters(), 0.25)
        opt.step()
        restored = copy.deepcopy(agent.state_dict())
        with torch.no_grad():
            for name, lin in linears.items():
                key = f"model.transformer.{name}.weight"
                lin.weight.copy_(torch.where(masks[name][t], restored[key], saved[key]))
        loss.item()

    calls = itertools.count()
    return seconds_per_call(lambda: step(next(calls) % tasks), steps, device, warmup=3)


def seconds_per_call(fn: Callable[[], object], calls: int, device: str, warmup: int = 2) -> float:
    """Mean wall seconds of ``fn()`` over ``calls`` calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--mask-interval", type=int, default=500)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cuda-graphs", action="store_true", help="train.cuda_graphs for orl")
    args = parser.parse_args()

    step_s, update_s = orl_step_seconds(args.tasks, args.batch_size, args.steps, args.device,
                                        args.mask_interval, args.cuda_graphs)
    amortised = step_s + update_s / args.mask_interval
    base_s = baseline_step_seconds(args.tasks, args.batch_size, args.steps, args.device)
    name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    print(f"device {args.device} ({name}), torch {torch.__version__}, {args.tasks} tasks, "
          f"batch {args.batch_size}, mask update every {args.mask_interval} steps, "
          f"cuda_graphs={args.cuda_graphs}")
    print("| what | ms/step | steps/s |\n|---|---|---|")
    print(f"| orl HarmoDT step | {1e3 * step_s:.1f} | {1 / step_s:.2f} |")
    print(f"| orl mask update (once) | {1e3 * update_s:.0f} | - |")
    print(f"| orl, update amortised | {1e3 * amortised:.1f} | {1 / amortised:.2f} |")
    print(f"| released-code baseline | {1e3 * base_s:.1f} | {1 / base_s:.2f} |")
    print(f"speed-up (amortised orl vs baseline): {base_s / amortised:.2f}x")


if __name__ == "__main__":
    main()
