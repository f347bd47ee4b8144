"""The one training loop every agent uses.

AdamW with a warm-up/cosine learning rate computed from the step, gradient clipping, bf16
autocast on CUDA, optional ``torch.compile``, periodic evaluation, callbacks, logging, and
checkpoints that resume exactly (bit-identical weights on CPU).

The loop does not synchronise with the host on ordinary steps: losses and metrics stay on the
device and are read (and checked for NaN/inf) only at log, evaluation and checkpoint steps.
On CUDA, build the sampler on the GPU (``SegmentSampler(..., device="cuda")``) so batches need
no host-to-device copy.

``cuda_graphs`` records the whole step (forward, backward, clipping, fused AdamW with the
learning rate as a device tensor) as a CUDA graph and replays it, so a step costs one launch
instead of hundreds. Each batch is copied into the graph's input buffers, so batches must keep
their shapes. Batches of one task known on the host (``batch.task_id``: round-robin HarmoDT)
get a graph each, as the task picks the mask. The first ``GRAPH_WARMUP`` steps of each graph run
eagerly on the capture stream. Callbacks run between replays and must change the weights,
masks and optimizer state in place (they do): a replaced tensor would not be seen by a graph.
One process only (under torchrun the step runs eagerly, with a warning); ``compile`` combines
with it (default mode, compiled before recording).

Distributed data parallel: launch the same script with ``torchrun --nproc_per_node N``. The
trainer then joins the process group ("nccl" on CUDA, "gloo" on CPU), runs the agent's loss
through ``DistributedDataParallel`` and averages logged metrics over ranks. Only rank 0 logs,
evaluates and writes checkpoints; each rank's sampler and RNG states go into the checkpoint
and every rank resumes its own. The caller must give each rank a different sampler seed, e.g.
``SegmentSampler(store, seed=seed + int(os.environ.get("RANK", 0)))``; the weights start
identical on all ranks (DDP broadcasts rank 0's). A trainer that joined the process group
itself leaves it when ``fit`` ends; to run several trainers in one process, call
``torch.distributed.init_process_group`` first and the trainers leave the group alone.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from orl.train.callbacks import Callback
from orl.train.checkpoint import (
    CheckpointError,
    checkpoints_dir,
    clean_interrupted_writes,
    copy_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    mark_latest,
    prune_checkpoints,
    read_checkpoint,
    save_checkpoint,
    step_checkpoint_path,
)
from orl.train.config import TrainConfig

if TYPE_CHECKING:
    from orl.agents.base import Agent

Evaluator = Callable[[nn.Module, int], dict[str, float]]
GRAPH_WARMUP = 3  # eager steps of each CUDA graph before it is recorded


class Sampler(Protocol):
    """What the trainer needs from a sampler (``SegmentSampler`` is one).

    ``sample()`` returns a batch with ``.to(device)`` that the agent's ``loss`` accepts;
    ``state_dict()`` must be JSON-serialisable.
    """

    def sample(self) -> Any: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class NonFiniteLossError(RuntimeError):
    """The loss (or the weights) became NaN/inf; no checkpoint was written after it."""


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (1-based).

    Linear warm-up from 0 to ``lr`` over ``warmup_steps``, then ``lr`` ("constant") or a cosine
    from ``lr`` down to ``min_lr_ratio * lr`` at step ``steps`` ("cosine").
    """
    if step < cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    min_lr = cfg.min_lr_ratio * cfg.lr
    return min_lr + 0.5 * (cfg.lr - min_lr) * (1.0 + math.cos(math.pi * progress))


class _LossModule(nn.Module):
    """``forward`` is the agent's loss, so DDP and torch.compile can wrap it."""

    def __init__(self, agent: Agent) -> None:
        super().__init__()
        self.agent = agent

    def forward(self, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.agent.loss(batch)


class Trainer:
    """Trains ``agent`` on batches of ``sampler`` for ``cfg.steps`` optimizer steps.

    ``evaluator(agent, step) -> {name: value}`` runs (rank 0, eval mode, no grad, on a forked
    RNG so training is unaffected) every ``cfg.eval_every`` steps and at the end; the
    checkpoint with the highest ``best_metric`` is kept in ``checkpoints/best``. ``extra_state``
    (JSON-serialisable, e.g. the resolved config) is stored in every checkpoint. ``logger`` needs
    ``log(metrics, step)``; the caller finishes it. ``resume=True`` continues from the latest
    checkpoint in ``run_dir`` (see ``resume``). ``save_checkpoints=False`` writes nothing to
    ``run_dir`` (short inner runs whose caller keeps the state, e.g. federated local rounds).
    """

    def __init__(
        self,
        agent: Agent,
        sampler: Sampler,
        cfg: TrainConfig,
        run_dir: Path,
        logger: Any = None,
        evaluator: Evaluator | None = None,
        callbacks: Sequence[Callback] = (),
        extra_state: dict[str, Any] | None = None,
        best_metric: str = "eval/success_mean",
        resume: bool = False,
        save_checkpoints: bool = True,
    ) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.sampler = sampler
        self.logger = logger
        self.evaluator = evaluator
        self.extra_state = extra_state or {}
        self.best_metric = best_metric
        self.save_checkpoints = save_checkpoints
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.is_main = self.rank == 0
        self.device = _pick_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
        self._owns_process_group = self.world_size > 1 and not dist.is_initialized()
        if self._owns_process_group:
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

        capture = cfg.cuda_graphs and self.device.type == "cuda"
        if capture and self.world_size > 1:
            warnings.warn("train.cuda_graphs applies to one process; under torchrun the step runs "
                          "eagerly (DDP's gradient all-reduce is not recorded)", stacklevel=2)
            capture = False
        self.agent = agent.to(self.device)
        self.callbacks: list[Callback] = [*agent.callbacks(), *callbacks]
        self.optimizer = torch.optim.AdamW(
            _param_groups(agent, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas,
            fused=self.device.type == "cuda", capturable=capture,
        )
        if capture:  # a graph reads the learning rate from the device
            _device_learning_rate(self.optimizer, self.device)
        # gradient clipping: each of the agent's clip groups on its own (usually one)
        self._clip_groups = [[p for p in params if p.requires_grad] for params in agent.clip_groups()]
        loss_fn: nn.Module = _LossModule(agent)
        if self.world_size > 1:
            loss_fn = DistributedDataParallel(
                loss_fn, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=cfg.ddp_find_unused_parameters,
            )
        self.loss_fn = torch.compile(loss_fn) if cfg.compile else loss_fn
        self._graphs = _StepGraphs(self._step) if capture else None
        self._metric_names: list[str] = []

        self.step = 0  # optimizer steps done
        self.best: dict[str, Any] | None = None  # {"metric", "value", "step"} of checkpoints/best
        self.last_checkpoint: Path | None = None
        self._pending: list[torch.Tensor] = []  # each step's loss and metrics since the last log
        self._batch_size = 0
        self._clock = (time.perf_counter(), 0)  # (time, step) the throughput is measured from
        self._summary: dict[str, float] = {}
        if resume:
            self.resume()

    # ------------------------------------------------------------------ training
    def fit(self) -> dict[str, float]:
        """Train from the current step to ``cfg.steps``; return the last logged/eval metrics."""
        cfg = self.cfg
        self.agent.train()
        for callback in self.callbacks:
            callback.on_train_start(self)
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train", dynamic_ncols=True,
                   disable=None if self.is_main else True)
        self._clock = (time.perf_counter(), self.step)
        try:
            if self.last_checkpoint is not None and self.step >= cfg.steps:
                self._finish_resumed_end()
            while self.step < cfg.steps:
                self._train_step()
                self.step += 1
                bar.update()
                self._after_step(bar)
            for callback in self.callbacks:
                callback.on_train_end(self)
            if self._owns_process_group:
                dist.barrier()  # no rank leaves the group while another still talks to it
        finally:
            bar.close()
            if self._owns_process_group:
                dist.destroy_process_group()
        return {"step": self.step, **self._summary}

    def _train_step(self) -> None:
        batch = self.sampler.sample().to(self.device)
        if not self._batch_size:
            self._batch_size = _batch_size(batch)
        lr = learning_rate(self.step + 1, self.cfg)
        for group in self.optimizer.param_groups:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
        values = self._step(batch) if self._graphs is None else self._graphs(batch)
        self._pending.append(values)

    def _step(self, batch: Any) -> torch.Tensor:
        """One optimizer step on ``batch``; returns the loss and the metrics stacked (float32)."""
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
                    if self.cfg.bf16 and self.device.type == "cuda" else nullcontext())
        with autocast:
            loss, metrics = self.loss_fn(batch)
        loss.backward()
        if self.cfg.grad_clip > 0:
            norms = [nn.utils.clip_grad_norm_(params, self.cfg.grad_clip) for params in self._clip_groups]
            metrics = {**metrics, "grad_norm": norms[0]}
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._metric_names = ["loss", *metrics]
        return torch.stack([loss.detach().float(), *(v.detach().float() for v in metrics.values())])

    def _after_step(self, bar: tqdm) -> None:
        step, cfg = self.step, self.cfg
        last = step == cfg.steps
        for callback in self.callbacks:
            if _every(step, callback.every):
                callback.on_step(self, step)
        if last or _every(step, cfg.log_every):
            self._log(bar)
        if self.evaluator is not None and (last or _every(step, cfg.eval_every)):
            self._evaluate()
        if self.save_checkpoints and (last or _every(step, cfg.checkpoint_every)):
            self._checkpoint(final=last)

    # ------------------------------------------------------------- monitoring
    def _check_finite(self) -> None:
        """Raise ``NonFiniteLossError`` if a loss since the last log is NaN/inf (one host sync;
        all ranks agree, so all stop together)."""
        if not self._pending:
            return
        bad = (~torch.isfinite(torch.stack([values[0] for values in self._pending]))).float()
        if self.world_size > 1:
            dist.all_reduce(bad)
        flags = bad.tolist()
        if any(flags):
            first = self.step - len(flags) + 1
            bad_step = first + next(i for i, flag in enumerate(flags) if flag)
            self._stop(f"non-finite loss (NaN/inf) at step {bad_step} "
                       f"(found checking steps {first}-{self.step})")

    def _stop(self, why: str) -> None:
        kept = (f"the last good checkpoint, {self.last_checkpoint}, was kept"
                if self.last_checkpoint else "no checkpoint had been written yet")
        raise NonFiniteLossError(
            f"{why}. Training stopped; no checkpoint was written after the problem and {kept}. "
            "Lower train.lr, raise train.warmup_steps or enable train.grad_clip, then resume."
        )

    def _log(self, bar: tqdm) -> None:
        self._check_finite()
        means = torch.stack(self._pending).mean(dim=0)
        if self.world_size > 1:
            dist.all_reduce(means)
            means /= self.world_size
        values = {f"train/{name}": v for name, v in zip(self._metric_names, means.tolist())}
        start, start_step = self._clock
        steps_per_s = (self.step - start_step) / max(time.perf_counter() - start, 1e-9)
        values |= {
            "train/lr": learning_rate(self.step, self.cfg),
            "train/steps_per_s": steps_per_s,
            "train/samples_per_s": steps_per_s * self._batch_size * self.world_size,
        }
        self._pending.clear()
        self._summary |= values
        if self.is_main:
            bar.set_postfix(loss=f"{values['train/loss']:.4g}")
            if self.logger is not None:
                self.logger.log(values, self.step)
                if bar.disable:  # not a terminal (a log file, a pipe): a line per log instead
                    print(_progress_line(self.step, self.cfg.steps, values), flush=True)
        self._clock = (time.perf_counter(), self.step)

    def _evaluate(self) -> None:
        self._check_finite()
        metrics: dict[str, float] = {}
        if self.is_main:
            metrics = self._run_evaluator()
            if self.logger is not None:
                self.logger.log(metrics, self.step)
        if self.world_size > 1:
            shared = [metrics]
            dist.broadcast_object_list(shared, src=0)
            metrics = shared[0]
        self._summary |= metrics
        for callback in self.callbacks:
            callback.on_eval(self, self.step, metrics)
        value = metrics.get(self.best_metric)
        if value is not None and math.isfinite(value) and (self.best is None
                                                           or value > self.best["value"]):
            self.best = {"metric": self.best_metric, "value": value, "step": self.step}
            self._save(checkpoints_dir(self.run_dir) / "best")
        self._clock = (time.perf_counter(), self.step)

    def _run_evaluator(self) -> dict[str, float]:
        """The evaluator's metrics (eval mode, no grad, on a forked RNG: training is unaffected)."""
        self.agent.eval()
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            metrics = {k: float(v) for k, v in self.evaluator(self.agent, self.step).items()}
        self.agent.train()
        return metrics

    # ------------------------------------------------------------- checkpoints
    def _finish_resumed_end(self) -> None:
        """Resumed from the checkpoint of the last step: redo what a run killed after writing it
        may have missed, with the same outcome: the final evaluation (its metrics were logged
        before the checkpoint; the caller reports ``evaluator``'s result) and the copy to
        ``checkpoints/final``."""
        if not self.is_main:
            return
        if self.evaluator is not None:
            self._summary |= self._run_evaluator()
        if self.save_checkpoints:
            copy_checkpoint(self.last_checkpoint, checkpoints_dir(self.run_dir) / "final")

    def _checkpoint(self, final: bool) -> None:
        self._check_finite()
        path = self._save(step_checkpoint_path(self.run_dir, self.step))
        self.last_checkpoint = path
        if self.is_main:
            mark_latest(path)
            prune_checkpoints(self.run_dir, self.cfg.keep_checkpoints)
            if final:
                copy_checkpoint(path, checkpoints_dir(self.run_dir) / "final")
            for callback in self.callbacks:
                callback.on_checkpoint(self, self.step, path)
        self._clock = (time.perf_counter(), self.step)

    def _save(self, path: Path) -> Path:
        """Write the full training state to ``path`` (every rank calls; rank 0 writes)."""
        weights_ok = torch.stack([p.isfinite().all() for p in self.agent.parameters()]).all()
        if not weights_ok.item():  # identical weights on every rank: all stop together
            self._stop(f"non-finite weights (NaN/inf) at step {self.step}")
        state = self._state()
        if self.is_main:
            save_checkpoint(path, self.agent, self.optimizer, state)
        return path

    def _state(self) -> dict[str, Any]:
        """Everything but model and optimizer needed to resume; per-rank parts from all ranks."""
        mine = {"sampler": self.sampler.state_dict(), "rng": _rng_state(self.device)}
        ranks = [mine]
        if self.world_size > 1:
            ranks = [None] * self.world_size if self.is_main else None
            dist.gather_object(mine, ranks, dst=0)
        tensors = {f"rng.{rank}.{name}": t
                   for rank, part in enumerate(ranks or []) for name, t in part["rng"].items()}
        callbacks = []
        for index, callback in enumerate(self.callbacks):
            state = dict(callback.state_dict())
            if "tensors" in state:
                tensors |= {f"callbacks.{index}.{k}": v for k, v in state["tensors"].items()}
                state["tensors"] = sorted(state["tensors"])  # names; the values are tensors
            callbacks.append(state)
        return {
            "step": self.step,
            "world_size": self.world_size,
            "sampler": [part["sampler"] for part in ranks or []],
            "callbacks": callbacks,
            "best": self.best,
            "train": asdict(self.cfg),
            "extra": self.extra_state,
            "tensors": tensors,
        }

    def resume(self, path: Path | None = None) -> dict[str, Any]:
        """Restore model, optimizer, step, sampler, RNG and callback states and the best metric
        from checkpoint ``path`` (default: the latest in ``run_dir``); return its state.

        Every rank loads the same checkpoint and takes back its own sampler and RNG state, so
        the run must be resumed with the same number of processes.
        """
        if self.is_main:
            clean_interrupted_writes(checkpoints_dir(self.run_dir))
        path = path or latest_checkpoint(self.run_dir)
        if path is None:
            raise FileNotFoundError(
                f"no checkpoint to resume from in {checkpoints_dir(self.run_dir)}; "
                "start without resume or point run_dir at the run to continue"
            )
        state, _ = read_checkpoint(path, files=())  # check that it fits before loading it
        if state["world_size"] != self.world_size:
            raise CheckpointError(
                f"checkpoint {path} was written by {state['world_size']} processes; resume it "
                f"with the same number (this run has {self.world_size})"
            )
        if len(state["callbacks"]) != len(self.callbacks):
            raise CheckpointError(
                f"checkpoint {path} has {len(state['callbacks'])} callback states but the trainer "
                f"has {len(self.callbacks)} callbacks: pass the same callbacks as the saved run"
            )
        state = load_checkpoint(path, self.agent, self.optimizer)
        tensors = state["tensors"]
        self.step = state["step"]
        self.best = state["best"]
        self.sampler.load_state_dict(state["sampler"][self.rank])
        torch.set_rng_state(tensors[f"rng.{self.rank}.torch"])
        if self.device.type == "cuda" and f"rng.{self.rank}.cuda" in tensors:
            torch.cuda.set_rng_state(tensors[f"rng.{self.rank}.cuda"], self.device)
        for index, (callback, saved) in enumerate(zip(self.callbacks, state["callbacks"])):
            if "tensors" in saved:
                saved = saved | {"tensors": {k: tensors[f"callbacks.{index}.{k}"]
                                             for k in saved["tensors"]}}
            callback.load_state_dict(saved)
        if self._graphs is not None:  # loading replaced the float learning rate
            _device_learning_rate(self.optimizer, self.device)
        self.last_checkpoint = Path(path)
        self._pending.clear()
        return state


class _StepGraphs:
    """The training step recorded as CUDA graphs and replayed: one graph per host-known batch
    task (``batch.task_id``, None for mixed batches), all in one memory pool."""

    def __init__(self, step: Callable[[Any], torch.Tensor]) -> None:
        self.step = step
        self.stream = torch.cuda.Stream()
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs: dict[Any, tuple[torch.cuda.CUDAGraph, Any, torch.Tensor]] = {}
        self.eager_steps: Counter = Counter()

    def __call__(self, batch: Any) -> torch.Tensor:
        key = getattr(batch, "task_id", None)
        if key not in self.graphs:
            values = self._eager_or_record(key, batch)
            if key not in self.graphs:
                return values
        graph, inputs, values = self.graphs[key]
        _copy_into(inputs, batch)
        graph.replay()
        return values.clone()  # the next replay overwrites ``values``

    def _eager_or_record(self, key: Any, batch: Any) -> torch.Tensor | None:
        """A warm-up step on the capture stream, or the recording (which runs nothing)."""
        self.stream.wait_stream(torch.cuda.current_stream())
        values = None
        with torch.cuda.stream(self.stream):
            if self.eager_steps[key] < GRAPH_WARMUP:
                self.eager_steps[key] += 1
                values = self.step(batch)
            else:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self.pool, stream=self.stream):
                    recorded = self.step(batch)
                self.graphs[key] = (graph, batch, recorded)
        torch.cuda.current_stream().wait_stream(self.stream)
        return values


def _copy_into(inputs: Any, batch: Any) -> None:
    """Copy every tensor field of ``batch`` into the same field of ``inputs`` (a graph's input)."""
    for name, value in vars(batch).items():
        target = getattr(inputs, name)
        if isinstance(value, torch.Tensor) and value.shape == target.shape:
            target.copy_(value)
        elif isinstance(value, torch.Tensor) or value != target:
            raise ValueError(
                f"train.cuda_graphs replays a recorded step, so batches must keep their shapes "
                f"and host fields; field {name!r} changed ({_describe(target)} -> "
                f"{_describe(value)}). Set train.cuda_graphs=false for this sampler."
            )


def _progress_line(step: int, steps: int, values: dict[str, float]) -> str:
    """The progress bar's news as one line of text: step, loss, learning rate, speed."""
    return (f"train step {step}/{steps}: loss {values['train/loss']:.4g}, "
            f"lr {values['train/lr']:.3g}, {values['train/steps_per_s']:.1f} steps/s")


def _describe(value: Any) -> str:
    return f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else repr(value)


def _device_learning_rate(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Make every group's learning rate a device tensor and the optimizer capturable."""
    for group in optimizer.param_groups:
        group["lr"] = torch.tensor(float(group["lr"]), device=device)
        group["capturable"] = True


def _every(step: int, period: int) -> bool:
    """Whether ``step`` is a multiple of ``period`` (never when ``period`` is 0)."""
    return period > 0 and step % period == 0


def _pick_device(name: str, local_rank: int) -> torch.device:
    """``auto`` -> cuda if available; a bare ``cuda`` gets an index (``LOCAL_RANK`` under DDP)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def _param_groups(agent: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay for matrices and embeddings, none for biases and norm scales."""
    params = [p for p in agent.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _batch_size(batch: Any) -> int:
    """Samples in a batch: a tensor's first dim, or that of the first tensor field."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    return next(v.shape[0] for v in vars(batch).values() if isinstance(v, torch.Tensor))
