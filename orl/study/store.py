"""The results store: ``results/<study>/runs.jsonl``, one JSON record per finished run.

Appends take an exclusive lock and write one line in one ``write`` on a file opened for
appending, so several workers (processes) can append at once without losing or interleaving a
record; a record already there (same run key and config hash) is not written twice. The file is
never rewritten: a corrupt line is reported with its line number, for a person to fix.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from orl.study.spec import StudyError

RECORDS = "runs.jsonl"


@contextmanager
def _locked(lock_file: Path) -> Iterator[None]:
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class ResultsStore:
    """The records of one study."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / RECORDS

    def records(self) -> list[dict[str, Any]]:
        """Every record, in the order written; a line that is not a JSON record is an error that
        names it."""
        if not self.path.is_file():
            return []
        out = []
        for number, line in enumerate(self.path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise StudyError(f"{self.path}, line {number}: not a JSON record ({err}). Fix or "
                                 "delete that line by hand; orl never rewrites the store.") from err
            if not isinstance(record, dict) or not {"key", "config_hash"} <= record.keys():
                raise StudyError(f"{self.path}, line {number}: a record needs 'key' and "
                                 "'config_hash'. Fix or delete that line by hand.")
            out.append(record)
        return out

    def append(self, record: dict[str, Any]) -> bool:
        """Append ``record`` unless one with its key and config hash is there; True if written."""
        line = json.dumps(record, sort_keys=True) + "\n"
        with _locked(self.folder / ".runs.lock"):
            if any(r["key"] == record["key"] and r["config_hash"] == record["config_hash"]
                   for r in self.records()):
                return False
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                if os.fstat(fd).st_size and not _ends_with_newline(self.path):
                    line = "\n" + line  # a line torn by a killed writer stays on its own line
                os.write(fd, line.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        return True


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def split_records(records: list[dict[str, Any]], runs: list[Any]) -> tuple[dict[str, dict], list[dict]]:
    """(current record of each run key, stale records): a record is stale when its config hash
    is not the one the study file gives its key now (or its key left the study)."""
    want = {run.key: run.config_hash for run in runs}
    current: dict[str, dict] = {}
    stale = []
    for record in records:
        if want.get(record["key"]) == record["config_hash"]:
            current.setdefault(record["key"], record)
        else:
            stale.append(record)
    return current, stale
