"""Checkpoints: a directory of safetensors files and one ``state.json``, written atomically.

Layout of a run directory::

    run_dir/checkpoints/
        latest                  text: the name of the newest step checkpoint
        step_00001000/          one per ``checkpoint_every`` steps, the newest ``keep`` kept
            model.safetensors       agent.state_dict()
            optimizer.safetensors   optimizer tensors, keys "state.<param_index>.<name>"
            state.safetensors       the tensors of state.json: RNG states, callback tensors
            state.json              step, optimizer param groups, sampler and callback states,
                                    best metric, caller's extra dict, size + sha256 of each file
                                    and the sha256 of state.json's own content (``state_sha256``)
        best/                   same layout: the checkpoint with the best evaluation metric
        final/                  same layout: the end of training

A checkpoint is written into ``<name>.tmp-<random>`` and renamed into place, so a reader sees
either the old checkpoint or the complete new one; ``clean_interrupted_writes`` removes what a
killed writer left. Loading reads safetensors and JSON only (nothing is unpickled), verifies every
file against its recorded size and hash and ``state.json`` against its own (an edited
hyperparameter would change the model silently), and checks that the tensors fit the agent
before anything is loaded into it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from orl.io import atomic_path

CHECKPOINTS = "checkpoints"
LATEST = "latest"
MODEL, OPTIMIZER, TENSORS, STATE = (
    "model.safetensors", "optimizer.safetensors", "state.safetensors", "state.json"
)
STATE_DIGEST = "state_sha256"  # key of state.json: the sha256 of the rest of it
_INTERRUPTED = re.compile(r"(.+)\.(tmp|old)-[0-9a-f]{8}")  # names of _atomic_dir, atomic_path


class CheckpointError(RuntimeError):
    """A checkpoint that is corrupt, incomplete or does not fit the agent/optimizer/run."""


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def step_checkpoint_path(run_dir: Path, step: int) -> Path:
    return checkpoints_dir(run_dir) / f"step_{step:08d}"


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint named by ``checkpoints/latest``, or None if no checkpoint was written."""
    latest = checkpoints_dir(run_dir) / LATEST
    if not latest.exists():
        return None
    path = latest.parent / latest.read_text().strip()
    if not path.is_dir():
        raise CheckpointError(f"{latest} names {path.name}, which does not exist")
    return path


# ------------------------------------------------------------------------------ writing
def save_checkpoint(path: Path, agent: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    state: dict[str, Any] | None = None) -> Path:
    """Write the checkpoint directory ``path`` atomically; an existing one is replaced.

    ``state`` must be JSON-serialisable, except its optional ``"tensors"`` entry (a flat
    ``name -> tensor`` dict) which goes to ``state.safetensors``.
    """
    path = Path(path)
    state = dict(state or {})
    files = {MODEL: agent.state_dict(), TENSORS: state.pop("tensors", {})}
    if optimizer is not None:
        files[OPTIMIZER], state["optimizer"] = _split_optimizer_state(optimizer.state_dict())
    with _atomic_dir(path) as tmp:
        tmp.mkdir(parents=True)
        for name, tensors in files.items():
            save_file(_storable(tensors), tmp / name)
        state["files"] = {name: _fingerprint(tmp / name) for name in files}
        try:
            text = json.dumps(with_digest(state), indent=1)
        except TypeError as err:
            raise TypeError(f"checkpoint state is not JSON-serialisable ({err}); "
                            "put tensors under state['tensors']") from err
        (tmp / STATE).write_text(text)
    return path


def copy_checkpoint(source: Path, target: Path) -> Path:
    """Copy a checkpoint directory to ``target`` (e.g. ``final``) atomically."""
    target = Path(target)
    with _atomic_dir(target) as tmp:
        shutil.copytree(source, tmp)
    return target


def mark_latest(path: Path) -> None:
    """Point ``checkpoints/latest`` at the checkpoint directory ``path`` (atomically)."""
    path = Path(path)
    with atomic_path(path.parent / LATEST) as tmp:
        tmp.write_text(path.name + "\n")


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` step checkpoints (never the latest, best or final)
    and the leftovers of interrupted writes."""
    root = checkpoints_dir(run_dir)
    clean_interrupted_writes(root)
    latest = latest_checkpoint(run_dir)
    steps = sorted((p for p in root.glob("step_*") if p.name[5:].isdigit()),
                   key=lambda p: int(p.name[5:]))
    for path in steps[:-keep]:
        if path != latest:
            shutil.rmtree(path)


def clean_interrupted_writes(directory: Path) -> None:
    """Tidy ``directory`` after a writer was killed: its temporary files and checkpoint
    directories (``<name>.tmp-<random>``) are removed; a checkpoint moved aside for its
    replacement (``<name>.old-<random>``) is moved back if the replacement never arrived, else
    removed. Only one process may write into ``directory`` while this runs."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    for path in sorted(directory.iterdir()):
        match = _INTERRUPTED.fullmatch(path.name)
        if match is None:
            continue
        target = directory / match[1].removeprefix(".")  # atomic_path's temps start with "."
        if match[2] == "old" and not target.exists():
            os.replace(path, target)
        elif path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def _storable(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, and no two entries sharing memory (safetensors refuses aliases)."""
    out, seen = {}, set()
    for name, tensor in tensors.items():
        tensor = tensor.detach().cpu().contiguous()
        storage = tensor.untyped_storage().data_ptr()
        if storage in seen:
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        out[name] = tensor
    return out


def _split_optimizer_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer ``state_dict()`` -> (tensors keyed ``state.<index>.<name>``, the JSON rest)."""
    tensors, rest = {}, {}
    for index, values in state["state"].items():
        rest[str(index)] = {}
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value
            else:
                rest[str(index)][name] = value
    groups = [{k: v.item() if isinstance(v, torch.Tensor) else v for k, v in group.items()}
              for group in state["param_groups"]]  # a learning rate on the device (CUDA graphs)
    return tensors, {"param_groups": groups, "state": rest}


def _join_optimizer_state(meta: dict, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Inverse of ``_split_optimizer_state`` (JSON turned the parameter indices into strings)."""
    state = {int(index): dict(values) for index, values in meta["state"].items()}
    for key, tensor in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = tensor
    return {"state": state, "param_groups": meta["param_groups"]}


def with_digest(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with ``state_sha256``: the sha256 of its canonical JSON (sorted keys, no
    whitespace), so reformatting keeps it valid and any changed value does not."""
    rest = {k: v for k, v in state.items() if k != STATE_DIGEST}
    text = json.dumps(rest, sort_keys=True, separators=(",", ":"))
    return rest | {STATE_DIGEST: hashlib.sha256(text.encode()).hexdigest()}


def _fingerprint(file: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return {"bytes": file.stat().st_size, "sha256": digest.hexdigest()}


def _fsync_tree(directory: Path) -> None:
    """Flush the files of ``directory`` and the directory itself to disk."""
    for file in directory.iterdir():
        with open(file, "rb") as f:
            os.fsync(f.fileno())
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling path for the caller to fill, then fsync it and swap it in for
    ``target``. On error the temporary directory is removed and ``target`` is left as it was."""
    tmp = target.with_name(f"{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        _fsync_tree(tmp)
        _replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_dir(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``; an existing ``target`` is moved aside, then deleted."""
    if not target.exists():
        os.replace(source, target)
        return
    old = target.with_name(f"{target.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(target, old)
    os.replace(source, target)
    shutil.rmtree(old)


# ------------------------------------------------------------------------------ reading
def read_checkpoint(path: Path, files: tuple[str, ...] = (MODEL, OPTIMIZER, TENSORS)
                    ) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]]]:
    """Parse and verify ``state.json`` and ``files`` of a checkpoint without applying anything.

    Files the checkpoint does not have (e.g. no optimizer was saved) are left out of the result.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no checkpoint directory at {path}")
    if not (path / STATE).exists():
        raise _corrupt(path, f"{STATE} is missing")
    try:
        state = json.loads((path / STATE).read_text())
        recorded = state["files"]
    except (ValueError, KeyError, TypeError) as err:  # JSONDecodeError is a ValueError
        raise _corrupt(path, f"{STATE}: {err!r}") from err
    if STATE_DIGEST not in state:
        raise _corrupt(path, f"{STATE} has no {STATE_DIGEST} (an older orl wrote it, or it was "
                             "edited): re-save it with this version or retrain")
    if with_digest(state)[STATE_DIGEST] != state[STATE_DIGEST]:
        raise _corrupt(path, f"{STATE} was changed after it was written (its content does not "
                             f"match its {STATE_DIGEST}). Loading it would change the model "
                             "silently: restore the original file, or set what you wanted to "
                             "change in the config and retrain")
    tensors = {name: _read_tensors(path, name, recorded[name]) for name in files if name in recorded}
    return state, tensors


def load_checkpoint(path: Path, agent: nn.Module,
                    optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """Load the weights (and optimizer state) of a checkpoint; return its ``state.json``.

    The returned dict has the tensors of ``state.safetensors`` under ``"tensors"``. Everything
    is verified first: on any error neither the agent nor the optimizer is changed.
    """
    state, tensors = read_checkpoint(path)
    _check_model(path, agent, tensors[MODEL])
    if optimizer is not None:
        if OPTIMIZER not in tensors:
            raise CheckpointError(f"checkpoint {path} has no optimizer state")
        optimizer_state = _join_optimizer_state(state["optimizer"], tensors[OPTIMIZER])
        _check_optimizer(path, optimizer, optimizer_state)
    agent.load_state_dict(tensors[MODEL])
    if optimizer is not None:
        optimizer.load_state_dict(optimizer_state)
    return state | {"tensors": tensors[TENSORS]}


def load_model_weights(path: Path, agent: nn.Module) -> dict[str, Any]:
    """Load only the agent's weights (evaluation); return the checkpoint's ``state.json``."""
    state, tensors = read_checkpoint(path, files=(MODEL,))
    _check_model(path, agent, tensors[MODEL])
    agent.load_state_dict(tensors[MODEL])
    return state


def _corrupt(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {path} is corrupt or truncated: {why}")


def _read_tensors(path: Path, name: str, recorded: dict[str, Any]) -> dict[str, torch.Tensor]:
    file = path / name
    if not file.exists():
        raise _corrupt(path, f"{name} is missing")
    found = _fingerprint(file)
    if found["bytes"] != recorded.get("bytes"):
        raise _corrupt(path, f"{name} has {found['bytes']} bytes, {STATE} says {recorded.get('bytes')}")
    if found["sha256"] != recorded.get("sha256"):
        raise _corrupt(path, f"{name} does not match the sha256 recorded in {STATE}")
    try:
        return load_file(file)
    except SafetensorError as err:
        raise _corrupt(path, f"{name}: {err}") from err


def _listing(title: str, items: list[str], limit: int = 20) -> str:
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return f"\n  {title}: {', '.join(items[:limit])}{more}"


def _check_model(path: Path, agent: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Raise ``CheckpointError`` listing every key/shape difference between the two."""
    expected = agent.state_dict()
    missing = sorted(expected.keys() - weights.keys())
    unexpected = sorted(weights.keys() - expected.keys())
    shapes = [
        f"{key} {tuple(weights[key].shape)} in the checkpoint vs {tuple(expected[key].shape)}"
        for key in sorted(expected.keys() & weights.keys())
        if weights[key].shape != expected[key].shape
    ]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"checkpoint {path} does not match the agent"
            + (_listing("missing keys (in the agent, not in the checkpoint)", missing)
               if missing else "")
            + (_listing("unexpected keys (in the checkpoint, not in the agent)", unexpected)
               if unexpected else "")
            + (_listing("shape mismatches", shapes) if shapes else "")
            + "\nBuild the agent with the configuration of the run that wrote it; if that is what "
              "was done, another version of orl wrote it: load it with that version (its "
              "provenance or study record names the git commit), or retrain."
        )


def _check_optimizer(path: Path, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    saved = [len(group["params"]) for group in state["param_groups"]]
    current = [len(group["params"]) for group in optimizer.param_groups]
    if saved != current:
        raise CheckpointError(
            f"checkpoint {path} has optimizer parameter groups of sizes {saved}, the optimizer "
            f"{current}: the trainable parameters of the agent differ from the saved run"
        )
