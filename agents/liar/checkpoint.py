"""Pruning a saved checkpoint into a new, smaller one; fine-tuning it (the retraining baseline).

The pruned checkpoint is an ordinary checkpoint directory whose ``state.json`` keeps the source
run's config and data spec and adds ``extra["pruned"]``: the per-layer structure (kept heads and
hidden sizes) that ``orl.api.load_trained_agent`` rebuilds before loading the weights, and how
the model was pruned.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from orl.agents.liar.calibration import calibration_batches
from orl.agents.liar.prune import PruneConfig, PruneReport, check_prunable, prune_agent


@dataclass
class CalibrationConfig:
    """Which calibration windows: ``windows`` segments from the first ``episodes`` episodes of
    every task of the policy's training data."""

    episodes: int = 5
    windows: int = 256
    batch_size: int = 64
    seed: int = 0


def _source(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """The checkpoint directory and its ``extra`` state (config, data spec, pruned structure)."""
    from orl.api import resolve_checkpoint
    from orl.train.checkpoint import read_checkpoint

    checkpoint = resolve_checkpoint(path)
    state, _ = read_checkpoint(checkpoint, files=())
    return checkpoint, state.get("extra", {})


def prune_checkpoint(source: str | Path, out: str | Path, cfg: PruneConfig,
                     calibration: CalibrationConfig | None = None,
                     progress: bool = False) -> PruneReport:
    """Load ``source`` (checkpoint or run dir), prune it, write the checkpoint ``out``.

    ``out`` must not exist; it is written atomically (nothing is left on failure).
    """
    from orl.api import load_trained_agent
    from orl.train.checkpoint import save_checkpoint

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{str(out)!r} already exists: choose another output path "
                              "(pruning never overwrites)")
    checkpoint, extra = _source(source)
    agent = load_trained_agent(checkpoint, device="cpu")
    check_prunable(agent, cfg)  # before any data is loaded
    batches = None
    if cfg.needs_data:
        calibration = calibration or CalibrationConfig()
        batches = calibration_batches(extra["config"], agent.state_mean, calibration.episodes,
                                      calibration.windows, calibration.batch_size,
                                      calibration.seed)
    report = prune_agent(agent, batches, cfg, progress=progress)
    pruned = {"structure": agent.model.transformer.structure(), "config": asdict(cfg),
              "calibration": asdict(calibration) if batches else None,
              "report": report.to_dict()}
    save_checkpoint(out, agent, state={"step": 0, "extra": extra | {"pruned": pruned}})
    return report


def finetune_checkpoint(source: str | Path, run_dir: str | Path, steps: int,
                        lr: float = 1e-4, seed: int = 0) -> Path:
    """Retraining baseline: train the (pruned) checkpoint ``source`` for ``steps`` more steps on
    its own training data through the ``Trainer`` (constant ``lr`` after a short warm-up).

    Returns the final checkpoint in ``run_dir``; it loads with ``orl.load_agent`` like any.
    """
    from orl.api import load_trained_agent
    from orl.config import from_dict
    from orl.config.experiment import ExperimentConfig
    from orl.datasets.loading import load
    from orl.datasets.sampler import SegmentSampler
    from orl.experiment import dataset_sources, seed_everything
    from orl.train.config import TrainConfig
    from orl.train.trainer import Trainer

    if steps <= 0:
        raise ValueError(f"fine-tuning needs steps > 0, got {steps}")
    checkpoint, extra = _source(source)
    cfg = from_dict(ExperimentConfig, extra["config"])
    cfg.data.generate_missing = False
    seed_everything(seed)
    agent = load_trained_agent(checkpoint, device="cpu").train()
    sampler = SegmentSampler(load(dataset_sources(cfg)[0]), cfg.sampler, seed=seed)
    train_cfg = TrainConfig(steps=steps, lr=lr, warmup_steps=min(steps // 10, 100),
                            schedule="constant", log_every=max(steps // 4, 1),
                            checkpoint_every=steps, eval_every=0, device="cpu")
    Trainer(agent, sampler, train_cfg, Path(run_dir), extra_state=extra).fit()
    return Path(run_dir) / "checkpoints" / "final"
