import h5py
import numpy as np
import pytest


@pytest.fixture
def task_files(tmp_path):
    """``task_files(names, episodes, length)``: one tiny D4RL-format task file per name (random
    data, 3-d observations, 1-d actions; the file stem is the task name)."""

    def make(names, episodes=6, length=15):
        paths = []
        for seed, name in enumerate(names):
            rng = np.random.default_rng(seed)
            n = episodes * length
            path = tmp_path / f"{name}.hdf5"
            with h5py.File(path, "w") as f:
                f["observations"] = rng.normal(size=(n, 3))
                f["actions"] = rng.uniform(-1, 1, size=(n, 1))
                f["rewards"] = rng.normal(size=n)
                f["terminals"] = np.zeros(n, bool)
                f["timeouts"] = (np.arange(n) % length) == length - 1
            paths.append(path)
        return paths

    return make
