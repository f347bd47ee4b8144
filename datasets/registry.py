"""Where local Minari datasets live, how they are named, and errors for missing ones."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LEVELS: tuple[str, ...] = ("expert", "near-optimal", "sub-optimal", "random")
_ID = re.compile(r"^(?P<namespace>.+)/(?P<name>[^/]+)-v(?P<version>\d+)$")


class DatasetNotFoundError(FileNotFoundError):
    """A dataset id that is not on disk; the message lists close matches and how to make it."""


class DatasetExistsError(FileExistsError):
    """A dataset id that is already on disk and would be overwritten."""


def datasets_root() -> Path:
    """``$MINARI_DATASETS_PATH``, or ``~/.minari/datasets`` (Minari's own default)."""
    env = os.environ.get("MINARI_DATASETS_PATH")
    return Path(env) if env else Path.home() / ".minari" / "datasets"


def check_level(level: str) -> str:
    if level not in LEVELS:
        close = difflib.get_close_matches(level, LEVELS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown dataset level {level!r}.{hint} Levels: {', '.join(LEVELS)}.")
    return level


def metaworld_id(task: str, level: str, version: int = 0) -> str:
    """``metaworld/<task>/<level>-v<version>``."""
    from orl.envs.metaworld import check_task

    return f"metaworld/{check_task(task)}/{check_level(level)}-v{version}"


def parse_id(dataset_id: str) -> tuple[str, str, int]:
    """Split ``namespace/name-vN`` into (namespace, name, N)."""
    match = _ID.match(dataset_id)
    if match is None:
        raise ValueError(
            f"Malformed dataset id {dataset_id!r}: expected 'namespace/name-vN', "
            "e.g. 'metaworld/reach-v3/expert-v0'."
        )
    return match["namespace"], match["name"], int(match["version"])


def dataset_dir(dataset_id: str, root: Path | None = None) -> Path:
    """Directory of a dataset id (``<root>/<namespace>/<name>-vN``), existing or not."""
    parse_id(dataset_id)
    return (root or datasets_root()) / dataset_id


def list_local(root: Path | None = None) -> list[str]:
    """Ids of the complete datasets under ``root`` (those with data/metadata.json)."""
    root = root or datasets_root()
    if not root.is_dir():
        return []
    ids = [
        str(p.parent.parent.relative_to(root))
        for p in root.rglob("data/metadata.json")
        if not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    return sorted(ids)


def require_dataset(dataset_id: str, root: Path | None = None) -> Path:
    """Directory of an existing dataset, else :class:`DatasetNotFoundError` with advice."""
    path = dataset_dir(dataset_id, root)
    if (path / "data" / "metadata.json").is_file():
        return path
    known = list_local(root)
    lines = [f"Dataset {dataset_id!r} not found under {root or datasets_root()}."]
    if dataset_id.startswith("metaworld/"):  # ids that differ in a few letters of the task
        namespace = dataset_id.rsplit("/", 1)[0]  # are other tasks: list the task's own
        same_task = [k for k in known if k.startswith(f"{namespace}/")]
        if same_task:
            lines.append(f"Local datasets of this task: {', '.join(same_task)}.")
        lines.append(_generate_hint(dataset_id))
    else:
        close = difflib.get_close_matches(dataset_id, known, n=3, cutoff=0.6)
        if close:
            lines.append(f"Close matches: {', '.join(close)}.")
        lines.append("List local datasets with: orl data list")
    raise DatasetNotFoundError(" ".join(lines))


def _generate_hint(dataset_id: str) -> str:
    """How to make a missing Meta-World dataset; a misspelled task or level is replaced by its
    close match (``exprt`` -> ``expert``)."""
    from orl.envs.metaworld import MT50_TASKS

    namespace, level, version = parse_id(dataset_id)
    task = namespace.split("/", 1)[-1]
    known_task, known_level = _closest(task, MT50_TASKS), _closest(level, LEVELS)
    if known_task is None or known_level is None:
        return ("Meta-World dataset ids are metaworld/<task>/<level>-vN, a task of "
                f"orl.envs.metaworld.MT50_TASKS and a level of {', '.join(LEVELS)}.")
    flag = f" --version {version}" if version else ""
    command = f"Generate it with: orl data generate {known_task} --level {known_level}{flag}"
    if (known_task, known_level) == (task, level):
        return command
    return f"Did you mean {metaworld_id(known_task, known_level, version)!r}? {command}"


def _closest(name: str, known: tuple[str, ...]) -> str | None:
    """``name`` if known, else its closest known name (compared without the ``-vN`` suffix that
    every Meta-World task shares), else None."""
    if name in known:
        return name
    stems = {re.sub(r"-v\d+$", "", k): k for k in known}
    match = difflib.get_close_matches(re.sub(r"-v\d+$", "", name), list(stems), n=1)
    return stems[match[0]] if match else None


@contextmanager
def minari_root(root: Path | None) -> Iterator[None]:
    """Point Minari at ``root`` for the duration (it reads MINARI_DATASETS_PATH per call).

    ``None`` leaves the environment as it is.
    """
    if root is None:
        yield
        return
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        yield
    finally:
        if old is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = old
