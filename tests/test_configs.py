from pathlib import Path

import pytest

from orl.config import load_config
from orl.config.experiment import ExperimentConfig

CONFIGS = sorted((Path(__file__).parents[1] / "configs").rglob("*.yaml"))


def test_there_are_configs():
    assert len(CONFIGS) >= 13


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads(path):
    cfg = load_config(ExperimentConfig, path)
    assert cfg.sampler.context_len > 0 and cfg.train.steps > 0
