"""Where a study's run dirs and records live, and what a run dir says of its run: running (a
process holds the lock beside it, ``.<dir>.lock``; the OS drops it when the process dies, kill -9
included) or finished (``done.json``)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from orl.study.spec import RunSpec, Study


@dataclass
class Places:
    """Where a study's run dirs and records live."""

    runs: Path  # run dirs: runs/<key>-<hash>
    results: Path  # the results store of this study: results/<study>/

    @classmethod
    def of(cls, study: Study, runs_dir: str | Path | None = None,
           results_dir: str | Path | None = None) -> Places:
        """Defaults: ``runs/<study>`` under the working directory, ``results/<study>`` beside the
        study file's folder (``studies/x.yaml`` -> ``results/x``)."""
        runs = Path(runs_dir) if runs_dir else Path("runs")
        results = Path(results_dir) if results_dir else study.path.resolve().parent.parent / "results"
        return cls(runs=runs.resolve() / study.name, results=results.resolve() / study.name)

    def run_dir(self, run: RunSpec) -> Path:
        return self.runs / run.dir_name()


def _lock_file(run_dir: Path) -> Path:
    return run_dir.with_name(f".{run_dir.name}.lock")


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run's lock, waiting for a process that works on the run to end."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(_lock_file(run_dir), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def is_running(run_dir: Path) -> bool:
    """True while some process holds the run's lock."""
    if not _lock_file(run_dir).is_file():
        return False
    fd = os.open(_lock_file(run_dir), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def is_finished(run_dir: Path) -> bool:
    """Whether a run dir holds a finished run (``done.json``, written last by every kind of run)."""
    from orl.experiment import DONE_FILE

    return (run_dir / DONE_FILE).is_file()
