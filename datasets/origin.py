"""What datasets say about the env they were collected in: its gymnasium id and action bounds.

A Minari dataset records both (its ``eval_env_spec``, else ``env_spec``, and ``action_space``). A
D4RL-format file may name its env in a root attribute ``env_id``
(``h5py.File(path, "a").attrs["env_id"] = "Hopper-v5"``); its bounds then come from that env.
A run uses them to pick its evaluation envs when ``data.eval_tasks`` is empty, and to scale a
tanh action head to the action space (``action_bounds``, ``tanh_bounds``).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

Bounds = tuple[list[float], list[float]]  # (low, high), one value per action dimension
UNKNOWN_ENV_FIX = ("set data.eval_tasks=[EnvId-vN] (a gymnasium id or Meta-World task), or "
                   "record the env in the data (Minari: create it with env=...; D4RL file: "
                   "h5py.File(path, 'a').attrs['env_id'] = 'EnvId-vN')")


@dataclass(frozen=True)
class Origin:
    """A dataset's env id and finite action bounds; None where the dataset does not say."""

    env_id: str | None = None
    bounds: Bounds | None = None


def is_d4rl_file(source: str | Path) -> bool:
    """Whether ``source`` names a D4RL-format HDF5 file (else it is a Minari dataset id)."""
    return str(source).endswith((".hdf5", ".h5"))


def dataset_origin(source: str | Path, root: Path | None = None) -> Origin:
    """The env ``source`` (a Minari id or a D4RL-format file) was collected in, as far as known."""
    if is_d4rl_file(source):
        return _d4rl_origin(Path(source))
    return _minari_origin(str(source), root)


def _minari_origin(dataset_id: str, root: Path | None) -> Origin:
    import minari

    from orl.datasets.registry import minari_root, require_dataset

    require_dataset(dataset_id, root)
    with minari_root(root):
        dataset = minari.load_dataset(dataset_id)
    eval_spec = dataset.storage.metadata.get("eval_env_spec")  # set when it differs from env_spec
    env_spec = dataset.spec.env_spec
    env_id = json.loads(eval_spec)["id"] if eval_spec else env_spec.id if env_spec else None
    return Origin(env_id, space_bounds(dataset.action_space))


def _d4rl_origin(path: Path) -> Origin:
    import h5py

    if not path.is_file():
        raise FileNotFoundError(f"D4RL file {str(path)!r} does not exist.")
    with h5py.File(path, "r") as f:
        env_id = f.attrs.get("env_id")
    if isinstance(env_id, bytes):
        env_id = env_id.decode()
    return Origin(str(env_id) if env_id else None)


def space_bounds(space: Any) -> Bounds | None:
    """(low, high) of a Box space whose bounds are all finite, else None."""
    from gymnasium.spaces import Box

    if not isinstance(space, Box) or not (np.isfinite(space.low).all() and np.isfinite(space.high).all()):
        return None
    return space.low.reshape(-1).astype(float).tolist(), space.high.reshape(-1).astype(float).tolist()


def dataset_eval_tasks(sources: list[str], root: Path | None = None) -> list[str]:
    """The envs ``sources`` were collected in, to evaluate on when the config names none.

    Warns about every dataset whose env is unknown or not registered with gymnasium (it is not
    evaluated on)."""
    tasks, unknown = [], []
    for source in sources:
        env_id = dataset_origin(source, root).env_id
        if env_id is None:
            unknown.append(str(source))
        elif not _registered(env_id):
            unknown.append(f"{source} (its env {env_id!r} is not registered with gymnasium)")
        else:
            tasks.append(env_id)
    if unknown:
        nothing = "" if tasks else "; the run evaluates nothing"
        warnings.warn(f"No evaluation env is known for dataset(s) {', '.join(unknown)}{nothing}. "
                      f"To evaluate, {UNKNOWN_ENV_FIX}.", UserWarning, stacklevel=2)
    return list(dict.fromkeys(tasks))


def _registered(env_id: str) -> bool:
    from orl.eval.evaluate import resolve_eval_tasks

    try:
        resolve_eval_tasks([env_id])
    except ValueError:
        return False
    return True


def action_bounds(sources: list[str], eval_tasks: list[str], root: Path | None = None) -> Bounds | None:
    """Action bounds of the datasets' env (from those datasets that record them), else of the
    evaluation envs; None when neither is known. Raises when they disagree."""
    from orl.eval.evaluate import env_info, resolve_eval_tasks

    data = recorded_bounds(sources, root)
    envs = _agreed({t.name: space_bounds(env_info(t.env_id)[1])
                    for t in (resolve_eval_tasks(eval_tasks) if eval_tasks else [])})
    if data is not None and envs is not None and data != envs:
        raise ValueError(f"The datasets' action bounds {_show(data)} differ from those of the "
                         f"evaluation envs {eval_tasks}: {_show(envs)}. Evaluate on the env the "
                         "data was collected in (data.eval_tasks).")
    return data if data is not None else envs


def recorded_bounds(sources: list[str], root: Path | None = None) -> Bounds | None:
    """The action bounds recorded by those of ``sources`` that are on disk (None: none records
    any); raises when they disagree."""
    return _agreed({str(s): dataset_origin(s, root).bounds for s in sources if _on_disk(s, root)})


def _on_disk(source: str | Path, root: Path | None) -> bool:
    from orl.datasets.registry import dataset_dir

    if is_d4rl_file(source):
        return Path(source).is_file()
    try:
        return (dataset_dir(str(source), root) / "data" / "metadata.json").is_file()
    except ValueError:  # not a dataset id
        return False


def _agreed(bounds: dict[str, Bounds | None]) -> Bounds | None:
    """The one set of bounds of all the known ones (None if none is known)."""
    known = {name: b for name, b in bounds.items() if b is not None}
    distinct = {(tuple(b[0]), tuple(b[1])) for b in known.values()}
    if len(distinct) > 1:
        raise ValueError("Action bounds differ between " + "; ".join(
            f"{name}: {_show(b)}" for name, b in known.items()) + ". Train one model on data "
            "of envs with the same action space.")
    return next(iter(known.values()), None)


def tanh_bounds(bounds: Bounds | None, actions: np.ndarray) -> Bounds:
    """The bounds a tanh action head is scaled to, checked against the data's ``actions``.

    Unknown bounds: [-1, 1] (with a warning) if every action lies in it, else a ``ValueError``.
    Known bounds that some actions exceed: a warning (the policy cannot produce those actions).
    """
    dim = actions.shape[1]
    if bounds is None:
        reach = float(np.abs(actions).max(initial=0.0))
        if reach > 1.0 + 1e-6:
            raise ValueError(
                f"The dataset's actions reach {reach:.3g} in absolute value, but the action bounds "
                "are unknown, so a tanh action head (model.tanh_actions=true) would limit the "
                f"policy to [-1, 1]. To give the bounds, {UNKNOWN_ENV_FIX}; or set "
                "model.tanh_actions=false (unbounded linear actions).")
        warnings.warn("The action bounds are unknown (no env recorded in the data, no "
                      "data.eval_tasks): the policy's tanh actions stay in [-1, 1], which holds "
                      f"every dataset action. If the env accepts larger actions, {UNKNOWN_ENV_FIX}.",
                      UserWarning, stacklevel=2)
        return [-1.0] * dim, [1.0] * dim
    low, high = np.asarray(bounds[0]), np.asarray(bounds[1])
    outside = float(((actions < low - 1e-6) | (actions > high + 1e-6)).any(axis=1).mean())
    if outside:
        warnings.warn(f"{outside:.1%} of the dataset's actions lie outside the action space "
                      f"{_show(bounds)}; the tanh policy acts within it.", UserWarning, stacklevel=2)
    return bounds


def _show(bounds: Bounds) -> str:
    low, high = bounds
    if len(set(low)) == 1 and len(set(high)) == 1:
        return f"[{low[0]:g}, {high[0]:g}]"
    return f"low {[round(v, 4) for v in low]}, high {[round(v, 4) for v in high]}"
