import json

import minari
import numpy as np
import pytest

from orl.datasets import generation as gen
from orl.datasets.generation import LEVEL_SCHEDULES, GenerationConfig, generate
from orl.datasets.loading import load
from orl.datasets.registry import DatasetExistsError, dataset_dir, list_local, minari_root
from orl.envs.metaworld import MetaWorldEnv, expert_policy


@pytest.fixture(scope="module")
def two_task_root(tmp_path_factory):
    """2 tasks x 2 episodes, generated once through the worker pool."""
    root = tmp_path_factory.mktemp("two_task")
    cfg = GenerationConfig(tasks=["reach-v3", "drawer-close"], levels=["near-optimal"],
                           episodes=2, episodes_per_shard=1, workers=2)
    ids = generate(cfg, root=root, progress=False)
    return root, ids


def test_round_trip_minari_and_store(two_task_root):
    root, ids = two_task_root
    assert ids == ["metaworld/reach-v3/near-optimal-v0", "metaworld/drawer-close-v3/near-optimal-v0"]
    assert list_local(root) == sorted(ids)
    store = load(ids, root)
    assert store.task_names == ["reach-v3", "drawer-close-v3"]
    assert store.num_episodes == 4 and store.episode_task.tolist() == [0, 0, 1, 1]
    with minari_root(root):
        episodes = [ep for i in ids for ep in minari.load_dataset(i).iterate_episodes()]
    for e, ep in enumerate(episodes):
        rows = slice(store.episode_starts[e], store.episode_starts[e + 1])
        np.testing.assert_array_equal(store.observations[rows], ep.observations[:-1])
        np.testing.assert_array_equal(store.actions[rows], ep.actions)
        np.testing.assert_array_equal(store.rewards[rows], ep.rewards.astype(np.float32))
        np.testing.assert_array_equal(store.timeouts[rows], ep.truncations)
        assert store.episode_success[e] == ep.infos["success"].any()
    assert store.observations.dtype == np.float32 and store.observations.flags.c_contiguous


def test_episodes_do_not_depend_on_workers(two_task_root):
    """Episode 1 re-rolled alone equals what the pool wrote: RNG per episode, not per worker."""
    root, ids = two_task_root
    store = load(ids[0], root)
    std, prob = (v[1] for v in LEVEL_SCHEDULES["near-optimal"].per_episode(2))
    ep = gen.rollout_episode(MetaWorldEnv("reach-v3"), expert_policy("reach-v3"),
                             gen.episode_rng(0, "reach-v3", "near-optimal", 1), 1, std, prob)
    rows = slice(store.episode_starts[1], store.episode_starts[2])
    np.testing.assert_array_equal(store.actions[rows], ep["actions"])
    np.testing.assert_array_equal(store.observations[rows], ep["observations"][:-1])


def test_metadata_records_every_parameter(two_task_root):
    root, ids = two_task_root
    meta = json.loads((dataset_dir(ids[0], root) / "data" / "metadata.json").read_text())
    params = meta["orl_generation"]
    assert params["task"] == "reach-v3" and params["level"] == "near-optimal"
    assert params["seed"] == 0 and params["episodes"] == 2
    assert params["noise"]["std_start"] == 1.0 and len(params["noise_std_per_episode"]) == 2
    assert params["versions"]["metaworld"] == "3.1.1" and "mujoco" in params["versions"]
    assert json.loads(meta["env_spec"])["entry_point"] == "orl.envs.metaworld:make_env"


def test_existing_dataset_is_never_silently_overwritten(two_task_root):
    root, ids = two_task_root
    before = (dataset_dir(ids[0], root) / "data" / "main_data.hdf5").read_bytes()
    cfg = GenerationConfig(tasks=["reach-v3"], levels=["near-optimal"], episodes=1, workers=1)
    with pytest.raises(DatasetExistsError, match="--overwrite"):
        generate(cfg, root=root, progress=False)
    assert generate(cfg, root=root, exist_ok=True, progress=False) == [ids[0]]
    assert (dataset_dir(ids[0], root) / "data" / "main_data.hdf5").read_bytes() == before


def test_interrupted_run_leaves_no_dataset_and_resumes(tmp_path, monkeypatch):
    cfg = GenerationConfig(tasks=["reach-v3"], levels=["expert"], episodes=2,
                           episodes_per_shard=1, workers=1)
    real = gen.run_shard
    calls = []

    def dies_on_second_shard(*args):
        calls.append(args[2])
        if len(calls) == 2:
            raise KeyboardInterrupt  # stands for a kill in the middle of the run
        return real(*args)

    monkeypatch.setattr(gen, "run_shard", dies_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        generate(cfg, root=tmp_path / "a", progress=False)
    assert list_local(tmp_path / "a") == []
    monkeypatch.setattr(gen, "run_shard", lambda *a: calls.append(a[2]) or real(*a))
    generate(cfg, root=tmp_path / "a", progress=False)
    assert calls == [[0], [1], [1]]  # the finished shard was reused, not rolled out again
    monkeypatch.setattr(gen, "run_shard", real)
    generate(cfg, root=tmp_path / "b", progress=False)
    resumed, fresh = load(list_local(tmp_path / "a"), tmp_path / "a"), load(
        list_local(tmp_path / "b"), tmp_path / "b")
    np.testing.assert_array_equal(resumed.observations, fresh.observations)
    np.testing.assert_array_equal(resumed.actions, fresh.actions)
    assert not any((tmp_path / "a" / gen.STAGING).rglob("*.npz"))


def test_concurrent_generation_of_a_dataset_waits_for_the_first(tmp_path):
    import threading

    cfg = GenerationConfig(tasks=["reach-v3"], levels=["expert"], episodes=1, workers=1)
    dataset_id = "metaworld/reach-v3/expert-v0"
    results = []
    with gen.dataset_locks(tmp_path, [dataset_id]):  # stands for another process generating it
        second = threading.Thread(target=lambda: results.append(
            generate(cfg, root=tmp_path, exist_ok=True, progress=False)))
        second.start()
        second.join(timeout=0.5)
        assert second.is_alive() and not (tmp_path / gen.STAGING / "metaworld").exists()
        generate(cfg, root=tmp_path.parent / f"{tmp_path.name}-other", progress=False)  # no wait
    second.join(timeout=120)
    assert results == [[dataset_id]] and list_local(tmp_path) == [dataset_id]


def test_schedules():
    std, prob = LEVEL_SCHEDULES["near-optimal"].per_episode(5)
    assert std[0] > std[-1] and prob[0] > prob[-1] == 0.0
    sub_std, sub_prob = LEVEL_SCHEDULES["sub-optimal"].per_episode(5)
    assert sub_std[-1] == pytest.approx((std[0] + std[-1]) / 2)
    assert sub_prob[-1] == pytest.approx((prob[0] + prob[-1]) / 2)
    assert LEVEL_SCHEDULES["random"].per_episode(3)[1].tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"tasks": ["reech-v3"]}, "reach-v3"),
        ({"tasks": ["MT11"]}, "MT10"),
        ({"tasks": ["reach-v3"], "levels": ["expret"]}, "expert"),
        ({"tasks": ["reach-v3"], "episodes": 0}, "episodes"),
        ({"tasks": ["reach-v3"], "workers": -1}, r"workers must be >= 0 \(0: one per CPU core\), got -1"),
    ],
)
def test_bad_generation_input(kwargs, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        generate(GenerationConfig(**kwargs), root=tmp_path, progress=False)
    assert not any(tmp_path.iterdir())


def test_no_bar_when_nothing_is_generated(two_task_root, capsys):
    root, ids = two_task_root
    cfg = GenerationConfig(tasks=["reach-v3", "drawer-close"], levels=["near-optimal"], episodes=2)
    assert generate(cfg, root=root, exist_ok=True) == ids  # e.g. a resumed run's data check
    assert "generate" not in capsys.readouterr().err


@pytest.mark.parametrize("workers", ["1", "2"])  # in the CLI's process; in the pool's workers
def test_cli_hides_the_scripted_policies_warning(tmp_path, capfd, recwarn, workers):
    from orl.cli import main as orl_main

    args = ["data", "generate", "reach-v3", "--episodes", "2", "--episodes-per-shard", "1",
            "--workers", workers, "--root", str(tmp_path)]
    assert orl_main(args) == 0
    assert "Constant(s) may be too high" not in capfd.readouterr().err
    assert not [w for w in recwarn if "Constant(s)" in str(w.message)]


def test_cli_rejects_negative_workers(tmp_path, capsys):
    from orl.cli import main as orl_main

    assert orl_main(["data", "generate", "reach-v3", "--workers", "-1", "--root", str(tmp_path)]) == 2
    assert "workers must be >= 0" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("dataset_id, hint", [
    ("metaworld/reach-v3/exprt-v0", "Did you mean 'metaworld/reach-v3/expert-v0'? Generate it "
                                    "with: orl data generate reach-v3 --level expert"),
    ("metaworld/rech-v3/expert-v2", "orl data generate reach-v3 --level expert --version 2"),
    ("metaworld/xyzzy/expert-v0", "a task of orl.envs.metaworld.MT50_TASKS"),
    ("metaworld/nope-v3/expert-v0", "a task of orl.envs.metaworld.MT50_TASKS"),  # no 'window-open'
    ("metaworld/pick-plce-v3/expert-v0", "Did you mean 'metaworld/pick-place-v3/expert-v0'?"),
])
def test_missing_dataset_hint_corrects_task_and_level(tmp_path, dataset_id, hint):
    from orl.datasets.registry import DatasetNotFoundError, require_dataset

    with pytest.raises(DatasetNotFoundError) as err:
        require_dataset(dataset_id, tmp_path)
    assert hint in str(err.value)


def test_missing_dataset_lists_the_tasks_local_datasets_not_other_tasks(tmp_path):
    from orl.datasets.registry import DatasetNotFoundError, require_dataset

    for dataset_id in ("metaworld/reach-v3/expert-v1", "metaworld/push-v3/expert-v0", "mine/x-v0"):
        (tmp_path / dataset_id / "data").mkdir(parents=True)
        (tmp_path / dataset_id / "data" / "metadata.json").write_text("{}")
    with pytest.raises(DatasetNotFoundError) as err:
        require_dataset("metaworld/reach-v3/expert-v0", tmp_path)
    message = str(err.value)
    assert "Local datasets of this task: metaworld/reach-v3/expert-v1." in message
    assert "push-v3" not in message  # a few letters apart, yet another task
    with pytest.raises(DatasetNotFoundError, match=r"Close matches: mine/x-v0\. List local"):
        require_dataset("mine/x-v1", tmp_path)
