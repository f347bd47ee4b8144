"""Run logging: every metric goes to ``metrics.jsonl`` in the run directory (``metrics.csv`` is
written from it when the run finishes), and optionally to wandb.

wandb runs offline unless ``WANDB_MODE`` says otherwise; nothing needs a login or a network.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from orl.io import atomic_path

LOGGERS = ("none", "csv", "wandb")


class RunLogger:
    """``log(metrics, step)`` appends to ``metrics.jsonl`` (and ``metrics.csv``); with
    ``backend="wandb"`` the same goes to a wandb run (offline by default)."""

    def __init__(self, run_dir: Path, backend: str = "csv", config: dict[str, Any] | None = None,
                 project: str = "orl", name: str | None = None, resume_id: str | None = None,
                 group: str | None = None):
        if backend not in LOGGERS:
            raise ValueError(f"logger must be one of {', '.join(LOGGERS)}, got {backend!r}")
        self.backend = backend
        self.run_dir = Path(run_dir)
        self.wandb_run = None
        if backend == "none":
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.run_dir / "metrics.jsonl"
        self.jsonl = open(self.jsonl_path, "a", buffering=1)
        if backend == "wandb":
            self.wandb_run = self._start_wandb(config, project, name, resume_id, group)

    def _start_wandb(self, config, project, name, resume_id, group):
        try:
            import wandb
        except ImportError as err:
            raise ImportError(
                "run.logger=wandb needs the wandb package: pip install wandb "
                "(or use run.logger=csv)"
            ) from err
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        return wandb.init(project=project, name=name, group=group, config=config, dir=str(self.run_dir),
                          id=resume_id, resume="allow" if resume_id else None)

    @property
    def wandb_id(self) -> str | None:
        return None if self.wandb_run is None else self.wandb_run.id

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """Log scalar metrics at ``step``."""
        if self.backend == "none":
            return
        row = {"step": step, **{k: _scalar(v) for k, v in metrics.items()}}
        self.jsonl.write(json.dumps(row) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log(row, step=step)

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        """A table (e.g. per-task success): JSON file in the run dir and a wandb Table."""
        if self.backend == "none":
            return
        path = self.run_dir / f"{name.replace('/', '_')}.json"
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({"step": step, "columns": columns, "rows": rows}, indent=1))
        if self.wandb_run is not None:
            import wandb

            self.wandb_run.log({name: wandb.Table(columns=columns, data=rows)}, step=step)

    def log_bar(self, name: str, labels: list[str], values: list[float], step: int) -> None:
        """A bar plot (e.g. success per task) as a wandb chart; the values go to the JSONL too."""
        self.log({f"{name}/{label}": v for label, v in zip(labels, values)}, step)
        if self.wandb_run is not None:
            import wandb

            table = wandb.Table(columns=["label", "value"], data=list(zip(labels, values)))
            self.wandb_run.log({name: wandb.plot.bar(table, "label", "value", title=name)},
                               step=step)

    def finish(self) -> None:
        """Close the run; ``metrics.csv`` is written from ``metrics.jsonl`` here."""
        if self.backend == "none":
            return
        self.jsonl.close()
        write_csv(self.jsonl_path, self.run_dir / "metrics.csv")
        if self.wandb_run is not None:
            self.wandb_run.finish()


def _scalar(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return value


def write_csv(jsonl: Path, out: Path) -> None:
    """Convert a metrics JSONL file to CSV (columns: the union of all keys, in first-seen order)."""
    rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_path(out) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
