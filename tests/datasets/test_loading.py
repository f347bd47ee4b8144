import hashlib

import h5py
import numpy as np
import pytest

from orl.datasets import loading as load_module
from orl.datasets.generation import GenerationConfig, generate
from orl.datasets.loading import CACHE_NAME, load, load_d4rl, load_minari
from orl.datasets.registry import DatasetNotFoundError, dataset_dir


@pytest.fixture(scope="module")
def one_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("one")
    cfg = GenerationConfig(tasks=["reach-v3"], levels=["random"], episodes=2, workers=1)
    (dataset_id,) = generate(cfg, root=root, progress=False)
    return root, dataset_id


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_minari_path_is_walked_once(one_dataset, monkeypatch):
    root, dataset_id = one_dataset
    (dataset_dir(dataset_id, root) / CACHE_NAME).unlink(missing_ok=True)
    calls = []
    real = load_module._read_minari
    monkeypatch.setattr(load_module, "_read_minari", lambda *a: calls.append(a) or real(*a))
    first = load_minari(dataset_id, root)
    second = load_minari(dataset_id, root)
    assert len(calls) == 1
    np.testing.assert_array_equal(first.observations, second.observations)
    assert second.episode_success is not None and second.task_names == ["reach-v3"]


def test_cache_invalidated_when_dataset_changes(one_dataset, monkeypatch):
    root, dataset_id = one_dataset
    load_minari(dataset_id, root)
    metadata = dataset_dir(dataset_id, root) / "data" / "metadata.json"
    metadata.write_text(metadata.read_text() + " ")  # a change: size and mtime differ
    calls = []
    real = load_module._read_minari
    monkeypatch.setattr(load_module, "_read_minari", lambda *a: calls.append(a) or real(*a))
    load_minari(dataset_id, root)
    assert len(calls) == 1


def test_corrupt_cache_is_rebuilt(one_dataset):
    root, dataset_id = one_dataset
    reference = load_minari(dataset_id, root, cache=False)
    (dataset_dir(dataset_id, root) / CACHE_NAME).write_bytes(b"not an npz")
    store = load_minari(dataset_id, root)
    np.testing.assert_array_equal(store.actions, reference.actions)


def test_missing_dataset_lists_close_matches_and_how_to_generate(one_dataset):
    root, dataset_id = one_dataset
    with pytest.raises(DatasetNotFoundError) as err:
        load("metaworld/reach-v3/random-v1", root)
    message = str(err.value)
    assert dataset_id in message and "orl data generate reach-v3 --level random --version 1" in message
    with pytest.raises(ValueError, match="Malformed dataset id"):
        load("reach", root)


def _write_d4rl(path, n_steps=10, drop=(), **overrides):
    rng = np.random.default_rng(0)
    data = {
        "observations": rng.normal(size=(n_steps, 3)),
        "actions": rng.uniform(-1, 1, size=(n_steps, 2)),
        "rewards": rng.normal(size=n_steps),
        "terminals": np.zeros(n_steps, dtype=bool),
        "timeouts": np.zeros(n_steps, dtype=bool),
    }
    data["terminals"][3] = True  # episode 0: steps 0..3, ended by termination
    data["timeouts"][6] = True  # episode 1: steps 4..6, truncated; steps 7..9: trailing episode
    data.update(overrides)
    with h5py.File(path, "w") as f:
        for key, value in data.items():
            if key not in drop:
                f[key] = value
        f["infos/qpos"] = np.zeros((n_steps, 2))
    return data


def test_d4rl_file_loads(tmp_path):
    path = tmp_path / "halfcheetah-medium.hdf5"
    data = _write_d4rl(path)
    store = load(path)
    assert store.episode_starts.tolist() == [0, 4, 7, 10]
    assert store.task_names == ["halfcheetah-medium"]
    np.testing.assert_allclose(store.observations, data["observations"].astype(np.float32))
    np.testing.assert_allclose(store.episode_returns,
                               [data["rewards"][a:b].sum() for a, b in [(0, 4), (4, 7), (7, 10)]],
                               rtol=1e-5)
    assert store.terminals[3] and store.timeouts[6] and store.episode_success is None


def test_d4rl_missing_keys(tmp_path):
    path = tmp_path / "bad.hdf5"
    _write_d4rl(path, drop=("timeouts", "rewards"))
    before = _digest(path)
    with pytest.raises(ValueError, match="rewards, timeouts"):
        load_d4rl(path)
    assert _digest(path) == before


def test_d4rl_length_mismatch(tmp_path):
    path = tmp_path / "bad.hdf5"
    _write_d4rl(path, rewards=np.zeros(7))
    with pytest.raises(ValueError, match="equally long"):
        load_d4rl(path)


def test_truncated_hdf5(tmp_path):
    good = tmp_path / "good.hdf5"
    _write_d4rl(good, n_steps=2000)
    cut = tmp_path / "cut.hdf5"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    before = _digest(cut)
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_d4rl(cut)
    assert _digest(cut) == before
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_d4rl(tmp_path / "nope.hdf5")
