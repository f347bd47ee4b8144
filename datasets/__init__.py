"""Data in and out: Meta-World dataset generation, Minari/D4RL loading, DT segment sampling."""

from orl.datasets.generation import LEVEL_SCHEDULES, GenerationConfig, NoiseSchedule, generate
from orl.datasets.loading import load, load_d4rl, load_minari
from orl.datasets.registry import (
    LEVELS,
    DatasetExistsError,
    DatasetNotFoundError,
    datasets_root,
    list_local,
    metaworld_id,
)
from orl.datasets.sampler import SamplerConfig, SegmentBatch, SegmentSampler
from orl.datasets.store import TrajectoryStore

__all__ = [
    "LEVELS", "LEVEL_SCHEDULES", "DatasetExistsError", "DatasetNotFoundError", "GenerationConfig",
    "NoiseSchedule", "SamplerConfig", "SegmentBatch", "SegmentSampler", "TrajectoryStore",
    "datasets_root", "generate", "list_local", "load", "load_d4rl", "load_minari", "metaworld_id",
]
