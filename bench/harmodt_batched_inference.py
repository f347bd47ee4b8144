"""HarmoDT inference for many tasks at once: one forward over every task's envs, each row under
its own task mask (the fused kernel on CUDA, a per-mask loop on CPU), against one forward per task.

    python bench/harmodt_batched_inference.py --tasks 50 --envs 10 --device cuda   # the target
    python bench/harmodt_batched_inference.py --device cuda --tiles 16,32,32,4 64,64,32,4
    python bench/harmodt_batched_inference.py --tasks 10 --envs 10 --steps 3       # this CPU

Paper-sized model (embed 256, 6 layers, 8 heads, K 20, prompt 5), random weights and masks,
full 20-step windows, last step only: what ``DTPolicy.act`` runs at every evaluation step.
Checks that both ways give the same actions, then times them. ``--tiles`` times the batched
forward with other kernel tiles (block_m,block_n,block_k,num_warps); ``--bf16`` runs both under
bf16 autocast; ``--profile`` prints the GPU time per op of one batched forward.
"""

from __future__ import annotations

import argparse
import contextlib
import platform

import torch
from harmodt_step import make_agent, seconds_per_call  # bench/ sibling script

from orl.kernels.masked_linear import TILE
from orl.model.layers import Route


def windows(agent, tasks: int, envs: int, device: str) -> dict[str, torch.Tensor]:
    """Random full context windows and each task's prompt, for ``tasks * envs`` envs."""
    cfg = agent.model.cfg
    n, k = tasks * envs, cfg.context_len
    gen = torch.Generator(device="cpu").manual_seed(0)
    task = torch.arange(tasks).repeat_interleave(envs)
    prompts = {name: value[task] for name, value in agent.prompts().items()}
    return {
        "states": torch.randn(n, k, cfg.obs_dim, generator=gen).to(device),
        "actions": torch.rand(n, k, cfg.act_dim, generator=gen).to(device) * 2 - 1,
        "returns_to_go": torch.rand(n, k, generator=gen).to(device) * 4.5,
        "timesteps": (torch.arange(k) + 100).expand(n, k).to(device),
        "mask": torch.ones(n, k, dtype=torch.bool, device=device),
        "task": task.to(device),
        "prompt": {name: value.to(device) for name, value in prompts.items()},
    }


def one_forward(agent, w: dict[str, torch.Tensor]) -> torch.Tensor:
    """Every env in one forward; row i under the mask of its task."""
    return agent.model(w["states"], w["actions"], w["returns_to_go"], w["timesteps"], w["mask"],
                       prompt=w["prompt"], route=Route(mask=w["task"]), last_only=True)[:, -1]


def per_task_forwards(agent, w: dict[str, torch.Tensor], tasks: int, envs: int) -> torch.Tensor:
    """One forward per task over its own envs, under that task's mask."""
    outs = []
    for t in range(tasks):
        rows = slice(t * envs, (t + 1) * envs)
        outs.append(agent.model(
            w["states"][rows], w["actions"][rows], w["returns_to_go"][rows], w["timesteps"][rows],
            w["mask"][rows], prompt={k: v[rows] for k, v in w["prompt"].items()},
            route=Route(mask=t), last_only=True)[:, -1])
    return torch.cat(outs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--envs", type=int, default=10, help="envs per task")
    parser.add_argument("--steps", type=int, default=20, help="timed inference steps")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tiles", nargs="*", default=[], help="block_m,block_n,block_k,num_warps")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()

    agent, _ = make_agent(args.tasks, 8, args.device, 500)
    agent.eval()
    w = windows(agent, args.tasks, args.envs, args.device)
    autocast = (torch.autocast(args.device, dtype=torch.bfloat16) if args.bf16
                else contextlib.nullcontext())
    with torch.inference_mode(), autocast:
        batched = one_forward(agent, w)
        looped = per_task_forwards(agent, w, args.tasks, args.envs)
        error = (batched.float() - looped.float()).abs().max().item()
        batched_s = seconds_per_call(lambda: one_forward(agent, w), args.steps, args.device)
        looped_s = seconds_per_call(lambda: per_task_forwards(agent, w, args.tasks, args.envs),
                                    args.steps, args.device)
        tiles = {}
        default = dict(TILE)
        for spec in args.tiles:  # the kernel reads TILE at every call
            TILE.update(zip(default, map(int, spec.split(","))))
            tiles[spec] = seconds_per_call(lambda: one_forward(agent, w), args.steps, args.device)
        TILE.update(default)
        if args.profile:
            with torch.profiler.profile() as prof:
                one_forward(agent, w)
                torch.cuda.synchronize()
            print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=12))
    name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    print(f"device {args.device} ({name}), torch {torch.__version__}, {args.tasks} tasks x "
          f"{args.envs} envs, bf16={args.bf16}, max |difference| of the actions {error:.2e}")
    print("| inference step | ms |\n|---|---|")
    print(f"| one forward, per-row task masks (tile {default}) | {1e3 * batched_s:.2f} |")
    for spec, seconds in tiles.items():
        print(f"| one forward, tile {spec} | {1e3 * seconds:.2f} |")
    print(f"| one forward per task | {1e3 * looped_s:.2f} |")
    print(f"speed-up: {looped_s / batched_s:.2f}x")


if __name__ == "__main__":
    main()
