"""Writing Minari datasets atomically: each is built in a staging folder
(``<root>/.orl-staging``) and moved into place with one rename, so it appears only when complete.
Dataset generation and the export of selections both write through :func:`write_dataset`.
"""

from __future__ import annotations

import shutil
import uuid
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from orl.datasets.registry import DatasetExistsError, dataset_dir, minari_root, parse_id

STAGING = ".orl-staging"
EPISODE_KEYS = ("observations", "actions", "rewards", "terminations", "truncations", "success")


def write_dataset(dataset_id: str, episodes: Iterable[dict[str, np.ndarray]], root: Path,
                  metadata: dict[str, Any], overwrite: bool = False, **create: Any) -> Path:
    """Write ``episodes`` (dicts of ``EPISODE_KEYS``; observations and success have one entry
    more than actions) as the Minari dataset ``dataset_id`` under ``root``; returns its folder.

    ``metadata`` is added to the dataset's metadata; ``create`` goes to
    ``minari.create_dataset_from_buffers`` (spaces or env, description, ...). A dataset that
    exists when the new one is complete raises :class:`DatasetExistsError` unless ``overwrite``.
    """
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer
    from minari.namespace import create_namespace, list_local_namespaces

    buffers = [
        EpisodeBuffer(id=i, observations=ep["observations"], actions=ep["actions"],
                      rewards=ep["rewards"], terminations=ep["terminations"],
                      truncations=ep["truncations"], infos={"success": ep["success"]})
        for i, ep in enumerate(episodes)
    ]
    build_root = root / STAGING / f"build-{uuid.uuid4().hex[:8]}"
    try:
        with minari_root(build_root), warnings.catch_warnings():
            # locally made data has no code permalink or author e-mail; a selection that mixes
            # several envs has no env spec
            warnings.filterwarnings("ignore", message="`(code_permalink|author_email|eval_env)`")
            warnings.filterwarnings("ignore", message="env_spec is None")
            dataset = minari.create_dataset_from_buffers(dataset_id=dataset_id, buffer=buffers,
                                                         author={"orl"}, **create)
            dataset.storage.update_metadata(metadata)
        final = dataset_dir(dataset_id, root)
        namespace = parse_id(dataset_id)[0]
        with minari_root(root):
            if namespace not in list_local_namespaces():
                create_namespace(namespace)
        if final.exists():
            if not overwrite:
                raise DatasetExistsError(f"Dataset {dataset_id!r} appeared while it was written.")
            trash = root / STAGING / f"old-{uuid.uuid4().hex[:8]}"
            final.rename(trash)
            shutil.rmtree(trash)
        (build_root / dataset_id).rename(final)
    finally:
        shutil.rmtree(build_root, ignore_errors=True)
    return final
