"""Training throughput of the one Trainer: samples/s and steps/s of MTDT, paper-sized model.

    python bench/train_throughput.py --batch-sizes 8 64 256 --steps 30            # this CPU
    python bench/train_throughput.py --device cuda --bf16 --reference \
        --modes eager compile graphs compile+graphs                                # a GPU

The data is a synthetic MT10-shaped store (10 tasks x 20 episodes x 500 steps, obs 39, act 4),
so the figures measure the loop (sampling, forward, backward, AdamW), not a dataset.
``--reference`` also times a HuggingFace-GPT2-style DT step in the same process: fp32, eager,
attention as explicit softmax(QK^T) with a masked_fill, unfused AdamW and a ``.item()`` per
step, the way the released DT/HarmoDT code trains. The compute bound printed next to the
ms/step is 6 x parameters x tokens / peak FLOP/s (``--peak-tflops``, default 989 = H100 bf16).
``--modes`` picks how orl's step runs: eager, ``compile`` (torch.compile of the loss),
``graphs`` (train.cuda_graphs: the whole step recorded and replayed) or both; one row each.
"""

from __future__ import annotations

import argparse
import math
import platform
import tempfile
import time

import numpy as np
import torch
from torch import nn

from orl.agents import DataSpec, build_agent
from orl.config.experiment import AgentConfig, ModelConfig
from orl.datasets.sampler import SamplerConfig, SegmentSampler
from orl.datasets.store import TrajectoryStore
from orl.train import TrainConfig, Trainer


def synthetic_store(tasks: int = 10, episodes: int = 20, steps: int = 500) -> TrajectoryStore:
    rng = np.random.default_rng(0)
    n = tasks * episodes * steps
    return TrajectoryStore(
        observations=rng.normal(size=(n, 39)), actions=rng.uniform(-1, 1, (n, 4)),
        rewards=rng.uniform(0, 10, n), terminals=np.zeros(n, bool), timeouts=np.zeros(n, bool),
        episode_starts=np.arange(tasks * episodes + 1) * steps,
        episode_task=np.repeat(np.arange(tasks), episodes), task_names=[f"t{i}" for i in range(tasks)],
    )


PAPER = ModelConfig(embed_dim=256, n_layer=6, n_head=8, activation="relu", dropout=0.1, max_timestep=500)


class Recorder:
    """A logger that keeps what the trainer logs."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.rows.append(metrics)


MODES = ("eager", "compile", "graphs", "compile+graphs")


def orl_rate(store, batch: int, steps: int, device: str, bf16: bool, mode: str) -> tuple[float, int]:
    """(steps/s the Trainer itself measures over its second ``steps`` steps, block parameters).

    The first ``steps`` steps are the warm-up (and compilation); the final checkpoint is
    written after the measured window.
    """
    sampler_cfg = SamplerConfig(context_len=20, batch_size=batch, rtg_scale=1000.0)
    sampler = SegmentSampler(store, sampler_cfg, seed=0, device=device)
    spec = DataSpec(39, 4, store.task_names, 1000.0, [4500.0] * store.num_tasks)
    agent = build_agent(AgentConfig("mtdt"), PAPER, sampler_cfg, spec, *sampler.state_stats)
    recorder = Recorder()
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = TrainConfig(steps=2 * steps, lr=1e-4, warmup_steps=10, log_every=steps,
                          checkpoint_every=0, device=device, bf16=bf16,
                          compile="compile" in mode, cuda_graphs="graphs" in mode)
        Trainer(agent, sampler, cfg, run_dir, logger=recorder).fit()
    params = sum(p.numel() for p in agent.model.transformer.parameters())
    return recorder.rows[-1]["train/steps_per_s"], params


class GPT2StyleDT(nn.Module):
    """The reference: HF-GPT2-like blocks (explicit attention matrix), fp32, eager."""

    def __init__(self, d: int = 256, layers: int = 6, heads: int = 8, k: int = 20) -> None:
        super().__init__()
        self.heads, self.d = heads, d
        self.embed_s, self.embed_a, self.embed_r = nn.Linear(39, d), nn.Linear(4, d), nn.Linear(1, d)
        self.embed_t = nn.Embedding(500, d)
        self.ln_in = nn.LayerNorm(d)
        self.blocks = nn.ModuleList(nn.ModuleDict({
            "ln1": nn.LayerNorm(d), "attn": nn.Linear(d, 3 * d), "proj": nn.Linear(d, d),
            "ln2": nn.LayerNorm(d), "fc": nn.Linear(d, 4 * d), "out": nn.Linear(4 * d, d),
        }) for _ in range(layers))
        self.register_buffer("causal", torch.tril(torch.ones(3 * k, 3 * k, dtype=torch.bool)))
        self.head = nn.Linear(d, 4)
        self.drop = nn.Dropout(0.1)

    def forward(self, s, a, r, t, mask):
        b, k, _ = s.shape
        time_emb = self.embed_t(t)
        x = torch.stack([self.embed_r(r.unsqueeze(-1)) + time_emb, self.embed_s(s) + time_emb,
                         self.embed_a(a) + time_emb], 2).reshape(b, 3 * k, self.d)
        x = self.drop(self.ln_in(x))
        keep = self.causal[None, None] & mask.repeat_interleave(3, 1)[:, None, None, :]
        for blk in self.blocks:
            q, kk, v = blk["attn"](blk["ln1"](x)).split(self.d, -1)
            q, kk, v = (z.view(b, 3 * k, self.heads, -1).transpose(1, 2) for z in (q, kk, v))
            w = (q @ kk.transpose(-1, -2)) / math.sqrt(q.shape[-1])
            w = self.drop(torch.softmax(w.masked_fill(~keep, torch.finfo(w.dtype).min), -1))
            y = (w @ v).transpose(1, 2).reshape(b, 3 * k, self.d)
            x = x + self.drop(blk["proj"](y))
            x = x + self.drop(blk["out"](torch.relu(blk["fc"](blk["ln2"](x)))))
        return torch.tanh(self.head(x.reshape(b, k, 3, self.d)[:, :, 1]))


def reference_rate(store, batch: int, steps: int, device: str) -> float:
    sampler = SegmentSampler(store, SamplerConfig(context_len=20, batch_size=batch), seed=0,
                             device=device)
    model = GPT2StyleDT().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=False)

    def step() -> float:
        b = sampler.sample()
        pred = model(b.states, b.actions, b.returns_to_go, b.timesteps, b.mask)
        loss = ((pred - b.actions) ** 2)[b.mask].mean()
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        opt.step()
        return loss.item()

    for _ in range(5):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 64, 256])
    parser.add_argument("--steps", type=int, default=20, help="warm-up, then measured")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=["eager"])
    parser.add_argument("--reference", action="store_true", help="also time the GPT2-style step")
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    args = parser.parse_args()

    store = synthetic_store()
    name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    print(f"device {args.device} ({name}), torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}, bf16={args.bf16}")
    print("| batch | orl mode | orl steps/s | orl samples/s | ms/step | compute bound ms "
          "| reference steps/s | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for batch in args.batch_sizes:
        ref = reference_rate(store, batch, args.steps, args.device) if args.reference else None
        for mode in args.modes:
            try:
                rate, params = orl_rate(store, batch, args.steps, args.device, args.bf16, mode)
            except Exception as error:  # one failing mode must not lose the others' rows
                print(f"| {batch} | {mode} | failed: {type(error).__name__}: {error} |", flush=True)
                continue
            bound_ms = 6 * params * batch * 60 / (args.peak_tflops * 1e12) * 1e3  # 60 tokens
            bound = f"{bound_ms:.3f}" if args.device == "cuda" else "-"
            ref_cells = f"{ref:.1f} | {rate / ref:.2f}x" if ref else "- | -"
            print(f"| {batch} | {mode} | {rate:.1f} | {rate * batch:,.0f} | {1e3 / rate:.2f} "
                  f"| {bound} | {ref_cells} |", flush=True)


if __name__ == "__main__":
    main()
