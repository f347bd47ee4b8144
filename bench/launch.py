"""Run bench jobs (shell commands) a few at a time, one torch thread each, at low priority.

Shared by the bench drivers that launch many ``train-agent`` runs (``continual_ocw10.py``,
``harmodt_mt10.py``); each job's output goes to its own log file.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from pathlib import Path


def train_command(run: Path, overrides: list[str]) -> list[str]:
    """``train-agent`` for run directory ``run``: ``--resume`` if it was started, else a new run
    there with ``overrides`` (``run.out_dir``/``run.name`` are added)."""
    if (run / "config.yaml").is_file():
        return ["train-agent", "--resume", str(run)]
    return ["train-agent", *overrides, f"run.out_dir={run.parent}", f"run.name={run.name}"]


def run_parallel(jobs: list[tuple[str, list[list[str]]]], logs: Path, parallel: int) -> None:
    """Run ``jobs`` (name, commands run one after another) ``parallel`` at a time, logging to
    ``logs/<name>.log``. A job stops at its first failing command."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    queue, running = list(jobs), []
    while queue or running:
        while queue and len(running) < parallel:
            name, commands = queue.pop(0)
            script = " && ".join(" ".join(shlex.quote(c) for c in ["nice", "-n", "10", *cmd])
                                 for cmd in commands)
            log = open(logs / f"{name}.log", "a")
            running.append((subprocess.Popen(["bash", "-c", script], stdout=log,
                                             stderr=subprocess.STDOUT, env=env), name, log))
            print(f"started {name}", flush=True)
        time.sleep(5)
        for job in list(running):
            proc, name, log = job
            if proc.poll() is not None:
                running.remove(job)
                log.close()
                print(f"{name}: exit {proc.returncode}", flush=True)

