"""Training hyper-parameters (the ``train:`` section of a config)."""

from __future__ import annotations

from dataclasses import dataclass

SCHEDULES = ("constant", "cosine")


@dataclass
class TrainConfig:
    """How the one training loop runs: optimiser, schedule, precision, logging, checkpoints."""

    steps: int = 10_000  # optimizer steps in total (a resumed run continues up to this)
    lr: float = 1e-4
    weight_decay: float = 1e-4  # AdamW decay of matrices/embeddings; biases and norms get none
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 1000  # linear warm-up from 0 to lr
    schedule: str = "constant"  # after warm-up: "constant" or "cosine" (down to min_lr_ratio * lr)
    min_lr_ratio: float = 0.1
    grad_clip: float = 0.25  # max global gradient norm; 0 = no clipping
    bf16: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    compile: bool = False  # torch.compile the agent's loss
    cuda_graphs: bool = False  # one CUDA process: record the step as a CUDA graph and replay it
    log_every: int = 100
    eval_every: int = 0  # 0 = evaluate only at the end
    checkpoint_every: int = 1000  # 0 = only the final checkpoint
    keep_checkpoints: int = 2  # step checkpoints kept on disk (best/ and final/ are extra)
    device: str = "auto"  # "auto" = cuda if available else cpu
    ddp_find_unused_parameters: bool = False  # for agents whose loss skips some parameters

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        rules = [
            ("steps", self.steps > 0, "> 0"),
            ("lr", self.lr > 0, "> 0"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("betas", len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
             "two numbers in [0, 1)"),
            ("warmup_steps", self.warmup_steps >= 0, ">= 0"),
            ("schedule", self.schedule in SCHEDULES, f"one of {SCHEDULES}"),
            ("min_lr_ratio", 0 <= self.min_lr_ratio <= 1, "in [0, 1]"),
            ("grad_clip", self.grad_clip >= 0, ">= 0 (0 = off)"),
            ("log_every", self.log_every > 0, "> 0"),
            ("eval_every", self.eval_every >= 0, ">= 0 (0 = only at the end)"),
            ("checkpoint_every", self.checkpoint_every >= 0, ">= 0 (0 = only at the end)"),
            ("keep_checkpoints", self.keep_checkpoints >= 1, ">= 1"),
            ("device", self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda"),
             "'auto', 'cpu', 'cuda' or 'cuda:N'"),
        ]
        for name, ok, expected in rules:
            if not ok:
                raise ValueError(f"train.{name} must be {expected}, got {getattr(self, name)!r}")
