"""The record of a finished run: what the results store keeps (a few KB)."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from orl.study.spec import SCORES, RunSpec

EXTRA_PREFIX = "study_eval_"  # run_dir/study_eval_<name>.json: an extra evaluation's result


def task_scores(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """{"success": {task: x}, "return": {...}, "normalized_score": {...}} of an evaluation's
    ``to_dict()`` (a score the env does not define is left out)."""
    out: dict[str, dict[str, float]] = {score: {} for score in SCORES}
    for key, value in result.items():
        metric, _, task = key.partition("/")
        if metric in out and task and isinstance(value, (int, float)):
            out[metric][task] = float(value)
    return out


def curve_points(run_dir: Path) -> list[dict[str, Any]]:
    """Periodic evaluations logged in ``metrics.jsonl``: step and per-task success."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    points = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        success = {k.removeprefix("eval/success/"): float(v) for k, v in row.items()
                   if k.startswith("eval/success/")}
        if success:
            points[row["step"]] = {"step": row["step"], "success": success}
    return [points[s] for s in sorted(points)]


def mean_throughput(run_dir: Path) -> float | None:
    """Mean of the logged training steps/s."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    values = [row["train/steps_per_s"] for row in map(json.loads, path.read_text().splitlines())
              if "train/steps_per_s" in row]
    return sum(values) / len(values) if values else None


def continual_summary(run_dir: Path) -> dict[str, Any]:
    """Success matrix, before-training success and own-stage curves of a continual run (what
    ``orl.agents.continual.record_metrics`` computes P/F/FWT from: one implementation)."""
    from orl.agents.continual.report import continual_record, load_results

    return continual_record(load_results(run_dir))


@lru_cache(maxsize=256)
def _file_hash(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def content_hash(source: str) -> str:
    """sha256 over a dataset's data files (a Minari id) or a D4RL-format file."""
    from orl.datasets.registry import require_dataset

    path = Path(source)
    files = [path] if path.is_file() else sorted(
        p for p in (require_dataset(source) / "data").iterdir() if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        digest.update(f"{file.name}:{_file_hash(str(file), stat.st_size, stat.st_mtime_ns)}".encode())
    return digest.hexdigest()


def run_datasets(cfg: Any) -> list[str]:
    """The dataset ids (or files) a run trains on."""
    if cfg.continual.enabled:
        from orl.agents.continual.stages import resolve_stages

        return list(dict.fromkeys(stage.dataset for stage in resolve_stages(cfg)))
    from orl.experiment import dataset_sources

    return dataset_sources(cfg)[0]


@lru_cache(maxsize=1)
def provenance() -> dict[str, Any]:
    """orl version, git commit (with a flag for uncommitted changes) and the machine of this
    process."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        orl_version = version("orl")
    except PackageNotFoundError:
        orl_version = None
    repo = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                                 timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no")) if commit else None
    return {"orl_version": orl_version, "git_commit": commit, "git_dirty": dirty,
            "machine": machine()}


def machine() -> dict[str, Any]:
    """CPU model and core count, and the GPU's name when torch sees one."""
    import os

    import torch

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "torch": torch.__version__}


def build_record(study: str, run: RunSpec, run_dir: Path, wall_s: float,
                 started_with: dict[str, Any]) -> dict[str, Any]:
    """The record of ``run``, finished in ``run_dir``, from the files it left there;
    ``started_with`` is the ``provenance()`` of the process that started it."""
    from orl.config import from_dict
    from orl.config.experiment import ExperimentConfig

    cfg = from_dict(ExperimentConfig, run.config)
    record: dict[str, Any] = {
        "study": study, "key": run.key, "variant": run.variant, "axes": run.axes,
        "seed": run.seed, "config_hash": run.config_hash, "config": run.config,
        "datasets": {source: content_hash(source) for source in run_datasets(cfg)},
        "wall_s": round(wall_s, 1), "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **started_with,
    }
    if cfg.continual.enabled:
        from orl.agents.continual.metrics import record_metrics

        summary = continual_summary(run_dir)
        final = summary["final"] or summary["matrix"][-1]  # continual.final_episodes, else R's last row
        record["final"] = {"success": dict(zip(summary["envs"], final, strict=True)), "return": {},
                           "episodes": cfg.continual.final_episodes or cfg.eval.episodes}
        record["continual"] = summary
        record["metrics"] = record_metrics(summary)
        record["steps"] = cfg.train.steps * len(summary["stages"])
    else:
        final = json.loads((run_dir / "eval_final.json").read_text())
        record["final"] = {**task_scores(final), "episodes": cfg.eval.episodes}
        state = run_dir / "checkpoints" / "final" / "state.json"
        record["steps"] = json.loads(state.read_text())["step"] if state.is_file() else None
    record["throughput_steps_per_s"] = mean_throughput(run_dir)
    if cfg.train.eval_every and not cfg.continual.enabled:  # learning-curve points
        record["curve"] = curve_points(run_dir)
    extra = {name: task_scores(json.loads((run_dir / f"{EXTRA_PREFIX}{name}.json").read_text()))
             for name in run.evals}
    if extra:
        record["extra"] = extra
    return record
