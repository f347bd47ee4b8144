import numpy as np
import pytest

from orl.datasets.store import TrajectoryStore


def make_store(lengths, tasks, names=("a", "b"), seed=0, obs_dim=3, act_dim=2):
    rng = np.random.default_rng(seed)
    n = sum(lengths)
    return TrajectoryStore(
        observations=rng.normal(size=(n, obs_dim)),
        actions=rng.uniform(-1, 1, size=(n, act_dim)),
        rewards=rng.normal(size=n),
        terminals=np.zeros(n, bool),
        timeouts=np.zeros(n, bool),
        episode_starts=np.concatenate([[0], np.cumsum(lengths)]),
        episode_task=np.array(tasks),
        task_names=list(names),
        episode_success=np.arange(len(lengths)) % 2 == 0,
    )


def test_derived_arrays_match_slow_reference():
    store = make_store([3, 5, 2, 4], [0, 1, 0, 1])
    starts = store.episode_starts
    for e in range(store.num_episodes):
        assert store.episode_returns[e] == pytest.approx(
            sum(float(store.rewards[i]) for i in range(starts[e], starts[e + 1])))
        for i in range(starts[e], starts[e + 1]):
            assert store.step_episode[i] == e and store.step_task[i] == store.episode_task[e]
    mean, std = store.state_stats()
    rows_a = np.concatenate([store.observations[0:3], store.observations[8:10]])
    np.testing.assert_allclose(mean[0], rows_a.mean(0), rtol=1e-5)
    np.testing.assert_allclose(std[1], np.concatenate(
        [store.observations[3:8], store.observations[10:14]]).std(0), rtol=1e-4)
    assert store.observations.dtype == np.float32 and store.rewards.dtype == np.float32


def test_select_episodes_copies_the_right_rows():
    store = make_store([3, 5, 2, 4], [0, 1, 0, 1])
    sub = store.select_episodes(np.array([3, 0]))
    np.testing.assert_array_equal(sub.observations,
                                  np.concatenate([store.observations[10:14], store.observations[0:3]]))
    assert sub.episode_starts.tolist() == [0, 4, 7]
    assert sub.episode_task.tolist() == [1, 0] and sub.episode_success.tolist() == [False, True]
    with pytest.raises(ValueError, match="out of range"):
        store.select_episodes(np.array([4]))


def test_concatenate_merges_tasks_by_name():
    first = make_store([3, 2], [0, 1], names=("a", "b"))
    second = make_store([4], [0], names=("b",), seed=1)
    joined = TrajectoryStore.concatenate([first, second])
    assert joined.task_names == ["a", "b"] and joined.episode_task.tolist() == [0, 1, 1]
    assert joined.episode_starts.tolist() == [0, 3, 5, 9]
    with pytest.raises(ValueError, match="dims"):
        TrajectoryStore.concatenate([first, make_store([2], [0], obs_dim=4)])


@pytest.mark.parametrize(
    "change, match",
    [
        ({"episode_starts": np.array([0, 3, 3, 5])}, "strictly increasing"),
        ({"episode_starts": np.array([0, 4])}, "from 0 to 5"),
        ({"rewards": np.zeros(4)}, "rewards has 4 rows"),
        ({"episode_task": np.array([0, 2])}, "outside task_names"),
    ],
)
def test_inconsistent_arrays_are_rejected(change, match):
    store = make_store([3, 2], [0, 1])
    fields = {k: getattr(store, k) for k in (
        "observations", "actions", "rewards", "terminals", "timeouts", "episode_starts",
        "episode_task", "task_names")}
    fields.update(change)
    if "episode_starts" in change and len(change["episode_starts"]) != 3:
        fields["episode_task"] = np.zeros(len(change["episode_starts"]) - 1, dtype=np.int64)
    with pytest.raises(ValueError, match=match):
        TrajectoryStore(**fields)
