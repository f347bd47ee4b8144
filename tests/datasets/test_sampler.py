"""SegmentSampler against a slow per-sample reference, plus sampling statistics and resuming."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from orl.datasets.sampler import SamplerConfig, SegmentBatch, SegmentSampler
from orl.datasets.store import TrajectoryStore

OBS_DIM, ACT_DIM = 3, 2


def make_store(seed: int = 0, num_episodes: int = 16, num_tasks: int = 2,
               lengths: list[int] | None = None, tasks: list[int] | None = None) -> TrajectoryStore:
    """Random episodes of lengths 3..30; observations offset per task so normalising matters."""
    rng = np.random.default_rng(seed)
    lengths = np.array(lengths if lengths is not None else rng.integers(3, 31, size=num_episodes))
    tasks = np.array(tasks if tasks is not None else np.arange(len(lengths)) % num_tasks)
    n = int(lengths.sum())
    step_task = np.repeat(tasks, lengths)
    return TrajectoryStore(
        observations=rng.normal(size=(n, OBS_DIM)) * 2.0 + 5.0 * step_task[:, None],
        actions=rng.uniform(-1, 1, size=(n, ACT_DIM)),
        rewards=rng.uniform(0, 1, size=n),
        terminals=np.zeros(n, dtype=bool),
        timeouts=np.zeros(n, dtype=bool),
        episode_starts=np.concatenate([[0], np.cumsum(lengths)]),
        episode_task=tasks,
        task_names=[f"task-{t}" for t in range(num_tasks)],
    )


def reference_segment(store, start, length, gamma=1.0, rtg_scale=1.0, normalize=True):
    """One segment the obvious way: find the episode, slice, sum the rewards, left-pad."""
    for e in range(store.num_episodes):
        if store.episode_starts[e] <= start < store.episode_starts[e + 1]:
            break
    first, end, task = store.episode_starts[e], store.episode_starts[e + 1], store.episode_task[e]
    mean, std = store.state_stats()
    n_real = min(length, end - start)
    out = {
        "states": np.zeros((length, OBS_DIM)),
        "actions": np.zeros((length, ACT_DIM)),
        "rewards": np.zeros(length),
        "returns_to_go": np.zeros(length),
        "timesteps": np.zeros(length, dtype=np.int64),
        "mask": np.zeros(length, dtype=bool),
    }
    for p in range(length - n_real, length):
        i = start + p - (length - n_real)
        obs = store.observations[i]
        out["states"][p] = (obs - mean[task]) / std[task] if normalize else obs
        out["actions"][p] = store.actions[i]
        out["rewards"][p] = store.rewards[i]
        out["returns_to_go"][p] = sum(
            gamma ** (j - i) * float(store.rewards[j]) for j in range(i, end)
        ) / rtg_scale
        out["timesteps"][p] = i - first
        out["mask"][p] = True
    return out, task


def assert_matches_reference(batch: SegmentBatch, store, starts, config: SamplerConfig):
    for b, start in enumerate(starts):
        ref, task = reference_segment(
            store, start, config.context_len, config.gamma, config.rtg_scale,
            config.normalize_states,
        )
        assert batch.task[b].item() == task
        for name, expected in ref.items():
            got = getattr(batch, name)[b].numpy()
            if expected.dtype == np.float64:
                np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5, err_msg=name)
            else:
                np.testing.assert_array_equal(got, expected, err_msg=name)


def assert_batches_equal(a: SegmentBatch, b: SegmentBatch):
    for name in SegmentBatch.__dataclass_fields__:
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if isinstance(x, torch.Tensor):
            assert torch.equal(x, y), name
        else:
            assert x == y, name


@pytest.mark.parametrize(
    "gamma, rtg_scale, normalize, context_len",
    [(1.0, 1.0, True, 8), (0.9, 1.0, True, 8), (0.97, 10.0, False, 5), (1.0, 100.0, False, 40)],
)
@pytest.mark.parametrize("first_len", [3, 45])  # a first episode shorter than K, or longer
def test_every_start_matches_reference(gamma, rtg_scale, normalize, context_len, first_len):
    lengths = [first_len, *np.random.default_rng(1).integers(3, 31, size=15)]
    store = make_store(lengths=lengths)
    config = SamplerConfig(context_len=context_len, gamma=gamma, rtg_scale=rtg_scale,
                           normalize_states=normalize)
    starts = np.arange(store.num_steps)
    batch = SegmentSampler(store, config).segments(starts)
    assert_matches_reference(batch, store, starts, config)


def test_one_step_episodes():
    store = make_store(lengths=[1, 2, 1, 7, 1], tasks=[0, 1, 1, 0, 0])
    config = SamplerConfig(context_len=5, gamma=0.8, prompt_len=1, prompt_source="random")
    starts = np.arange(store.num_steps)
    prompt_episodes = store.step_episode  # each step's own episode as its prompt
    batch = SegmentSampler(store, config).segments(starts, prompt_episodes)
    assert_matches_reference(batch, store, starts, config)
    for b, episode in enumerate(prompt_episodes):
        assert_prompt_matches(batch, b, store, episode, config, store)


def test_sample_shapes_dtypes_and_drawn_starts():
    store = make_store()
    config = SamplerConfig(context_len=10, batch_size=32, gamma=0.95, rtg_scale=5.0)
    drawer, sampler = SegmentSampler(store, config, seed=3), SegmentSampler(store, config, seed=3)
    starts = drawer.draw_starts()
    batch = sampler.sample()
    assert_matches_reference(batch, store, starts, config)
    assert batch.states.shape == (32, 10, OBS_DIM) and batch.states.dtype == torch.float32
    assert batch.actions.shape == (32, 10, ACT_DIM) and batch.actions.dtype == torch.float32
    for name in ("rewards", "returns_to_go"):
        assert getattr(batch, name).shape == (32, 10), name
        assert getattr(batch, name).dtype == torch.float32, name
    assert batch.timesteps.dtype == torch.int64 and batch.mask.dtype == torch.bool
    assert batch.task.shape == (32,) and batch.task.dtype == torch.int64
    assert batch.start.tolist() == starts.tolist()  # each segment's identity: its start step
    assert batch.prompt_states is None and batch.prompt_mask is None
    assert_batches_equal(batch.to("cpu"), batch)


def test_store_arrays_are_shared_not_copied():
    """Only the normalised observations are a copy (made once, at init)."""
    store = make_store()
    steps = SegmentSampler(store, SamplerConfig(normalize_states=False)).steps
    for name in ("observations", "actions", "rewards"):
        assert np.shares_memory(getattr(steps, name).numpy(), getattr(store, name)), name
    steps = SegmentSampler(store).steps
    assert not np.shares_memory(steps.observations.numpy(), store.observations)
    assert np.shares_memory(steps.actions.numpy(), store.actions)


def test_padding_is_left_and_exactly_zero():
    store = make_store(lengths=[3, 25], tasks=[0, 1])
    sampler = SegmentSampler(store, SamplerConfig(context_len=6))
    batch = sampler.segments(np.array([1, 26]))  # 2 steps left of episode 0, 2 of episode 1
    expected_mask = torch.tensor([[False] * 4 + [True] * 2] * 2)
    assert torch.equal(batch.mask, expected_mask)
    assert torch.equal(batch.timesteps, torch.tensor([[0, 0, 0, 0, 1, 2], [0, 0, 0, 0, 23, 24]]))
    pad = ~batch.mask
    for name in ("states", "actions", "rewards", "returns_to_go"):
        assert torch.all(getattr(batch, name)[pad] == 0), name
    assert torch.all(batch.states[batch.mask].abs().sum(-1) > 0)


def test_normalisation_uses_per_task_stats():
    store = make_store(num_tasks=3, num_episodes=12)
    batch = SegmentSampler(store, SamplerConfig(context_len=1)).segments(np.arange(store.num_steps))
    states, task = batch.states[:, 0].double(), batch.task
    for t in range(3):
        np.testing.assert_allclose(states[task == t].mean(0).numpy(), 0.0, atol=1e-5)
        np.testing.assert_allclose(states[task == t].std(0, correction=0).numpy(), 1.0, atol=1e-4)
    raw = SegmentSampler(store, SamplerConfig(context_len=1, normalize_states=False))
    first_states = raw.segments(np.arange(5)).states[:, 0]
    assert torch.equal(first_states, torch.from_numpy(store.observations[:5]))


def test_start_steps_are_length_weighted():
    store = make_store(num_tasks=1, lengths=[3, 5, 10, 20, 30, 4, 28])
    sampler = SegmentSampler(store, SamplerConfig(batch_size=1000), seed=1)
    starts = np.concatenate([sampler.draw_starts() for _ in range(100)])
    frequency = np.bincount(store.step_episode[starts]) / len(starts)
    np.testing.assert_allclose(frequency, store.episode_lengths / store.num_steps, atol=0.01)
    steps = np.bincount(starts, minlength=store.num_steps)
    expected = len(starts) / store.num_steps
    chi2 = ((steps - expected) ** 2 / expected).sum()  # uniform over all steps
    assert chi2 < store.num_steps + 6 * np.sqrt(2 * store.num_steps)


def test_round_robin_cycles_tasks_with_episodes():
    store = make_store(num_tasks=4, lengths=[5, 9, 12, 7, 20, 4], tasks=[0, 1, 3, 0, 1, 3])
    sampler = SegmentSampler(store, SamplerConfig(task_mode="round_robin", batch_size=16))
    seen = []
    for _, batch in zip(range(7), sampler):
        assert len(batch.task.unique()) == 1 and batch.tasks == batch.task_id == batch.task[0]
        seen.append(batch.task_id)
    assert seen == [0, 1, 3, 0, 1, 3, 0]  # task 2 has no episodes


def test_sample_given_task():
    store = make_store(num_tasks=3)
    for mode in ("mixed", "round_robin"):
        sampler = SegmentSampler(store, SamplerConfig(task_mode=mode, batch_size=64))
        for t in (2, 0, 1):
            batch = sampler.sample(task=t)
            assert torch.all(batch.task == t) and batch.task_id == t
        assert sampler.state_dict()["round_robin"] == 0  # an explicit task leaves the cycle
    mixed = SegmentSampler(store, SamplerConfig(batch_size=256)).sample()
    assert set(mixed.task.tolist()) == {0, 1, 2}
    assert mixed.task_id is None and mixed.tasks is mixed.task and mixed.to("cpu").task_id is None


def test_same_seed_same_batches_other_seed_differs():
    store = make_store()
    config = SamplerConfig(batch_size=16, prompt_len=3, prompt_source="random")
    a, b, c = (SegmentSampler(store, config, seed=s) for s in (7, 7, 8))
    for _ in range(3):
        batch_a, batch_b, batch_c = a.sample(), b.sample(), c.sample()
        assert_batches_equal(batch_a, batch_b)
        assert not torch.equal(batch_a.states, batch_c.states)


@pytest.mark.parametrize("task_mode", ["mixed", "round_robin"])
def test_resume_gives_the_same_next_batches(task_mode):
    store = make_store(num_tasks=3)
    config = SamplerConfig(batch_size=8, task_mode=task_mode, prompt_len=3, prompt_source="random")
    original = SegmentSampler(store, config, seed=11)
    for _ in range(4):
        original.sample()
    state = json.loads(json.dumps(original.state_dict()))
    expected = [original.sample() for _ in range(5)]
    resumed = SegmentSampler(store, config, seed=999)
    resumed.load_state_dict(state)
    for batch in expected:
        assert_batches_equal(resumed.sample(), batch)


def released_prompt_first(store, episode, prompt_len):
    """First step of an episode's prompt as the released ``get_prompt`` slices it."""
    length = store.episode_lengths[episode]
    si = max(0, length - prompt_len - 1)  # "select the last traj with length max_len"
    return store.episode_starts[episode] + si


def released_prompt_episode(store, task, row):
    """The episode the released ``get_prompt`` (stochastic_prompt off) gives batch row ``row``
    of ``task``: its loop over ``i``, verbatim, on the task's episodes sorted by return."""
    episodes = store.task_episodes(task)
    sorted_inds = np.argsort(store.episode_returns[episodes])  # lowest to highest
    i = row
    if i > len(sorted_inds):
        i = 1
    return episodes[int(sorted_inds[(-i)])]


def assert_prompt_matches(batch, b, prompt_store, episode, config, normalize_store):
    """Sample b's prompt is `episode`'s window as the released code cuts it."""
    first = released_prompt_first(prompt_store, episode, config.prompt_len)
    ref, _ = reference_segment(prompt_store, first, config.prompt_len, config.gamma,
                               config.rtg_scale, normalize=False)
    mean, std = normalize_store.state_stats()
    task = prompt_store.episode_task[episode]
    states = np.where(ref["mask"][:, None], (ref["states"] - mean[task]) / std[task], 0.0)
    np.testing.assert_allclose(batch.prompt_states[b].numpy(), states, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(batch.prompt_actions[b].numpy(), ref["actions"], atol=1e-6)
    np.testing.assert_allclose(batch.prompt_returns_to_go[b].numpy(), ref["returns_to_go"],
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(batch.prompt_timesteps[b].numpy(), ref["timesteps"])
    np.testing.assert_array_equal(batch.prompt_mask[b].numpy(), ref["mask"])


def known_returns_store():
    """Task 0: five episodes with returns 3, 9, 1, 7, 5 (in episode order); task 1: three with
    returns 4, 2, 6; lengths 4..9 (one of exactly the prompt length 4)."""
    lengths = [6, 9, 4, 7, 5, 8, 6, 5]
    tasks = [0, 0, 0, 0, 0, 1, 1, 1]
    returns = [3.0, 9.0, 1.0, 7.0, 5.0, 4.0, 2.0, 6.0]
    store = make_store(lengths=lengths, tasks=tasks)
    store.rewards = np.repeat(np.array(returns) / np.array(lengths), lengths)
    np.testing.assert_allclose(store.episode_returns, returns)
    return store


@pytest.mark.parametrize("batch_size", [8, 3])
def test_ranked_prompts_are_the_released_rows_of_known_returns(batch_size):
    store = known_returns_store()
    config = SamplerConfig(batch_size=batch_size, task_mode="round_robin", prompt_len=4,
                           gamma=0.9, rtg_scale=2.0)
    sampler = SegmentSampler(store, config, seed=0)
    for task in (0, 1, 0):
        batch = sampler.sample()
        assert batch.task_id == task
        for row in range(batch_size):
            episode = released_prompt_episode(store, task, row)
            assert_prompt_matches(batch, row, store, episode, config, store)
    # task 0 by hand: row 0 the lowest return (episode 2), then best first: 1, 3, 4, 0; row 5
    # (= the episode count) the lowest again; past it the best
    rows = sampler.draw_prompt_episodes(np.zeros(8, dtype=np.int64))
    assert rows.tolist() == ([2, 1, 3, 4, 0, 2, 1, 1] if batch_size == 8 else [2, 1, 3] * 2 + [2, 1])


def test_best_prompt_source_gives_every_row_the_best_episode():
    config = SamplerConfig(batch_size=4, prompt_len=4, prompt_source="best")
    sampler = SegmentSampler(known_returns_store(), config)
    assert sampler.draw_prompt_episodes(np.array([0, 1, 1, 0, 0])).tolist() == [1, 7, 7, 1, 1]


def test_ranked_prompts_rank_each_batch_size_block_alike():
    """The mask update's batch (one batch_size block per task, task-major) gets every task the
    prompts of its own round-robin batch."""
    sampler = SegmentSampler(known_returns_store(), SamplerConfig(batch_size=4, prompt_len=4))
    tasks = np.repeat([0, 1], 4)
    together = sampler.draw_prompt_episodes(tasks)
    alone = [sampler.draw_prompt_episodes(tasks[:4]), sampler.draw_prompt_episodes(tasks[4:])]
    assert together.tolist() == np.concatenate(alone).tolist() == [2, 1, 3, 4, 6, 7, 5, 6]


def test_evaluation_prompt_is_the_best_episode_as_released():
    store = known_returns_store()
    config = SamplerConfig(prompt_len=4, gamma=0.9, rtg_scale=2.0)
    prompts = SegmentSampler(store, config).best_prompts()
    best = {0: 1, 1: 7}  # released: get_prompt(index=-1), the highest return
    for task, episode in best.items():
        assert released_prompt_episode(store, task, len(store.task_episodes(task)) + 1) == episode
        batch = SimpleNamespace(**{f"prompt_{k}": v[task:task + 1] for k, v in prompts.items()})
        assert_prompt_matches(batch, 0, store, episode, config, store)
    # an episode of exactly prompt_len steps is the whole prompt; longer ones stop one step short
    assert released_prompt_first(store, 2, 4) == store.episode_starts[2]
    assert released_prompt_first(store, 1, 4) == store.episode_starts[2] - 5


@pytest.mark.parametrize("prompt_store", [False, True])
def test_prompt_longer_than_the_shortest_episode_is_an_error(prompt_store):
    store = known_returns_store()  # shortest: 4 steps (episode 2, task-0)
    config = SamplerConfig(prompt_len=5)
    if prompt_store:
        with pytest.raises(ValueError, match=r"prompt_len=5 is longer than the shortest prompt "
                                             r"episode \(4 steps: episode 2, task 'task-0'"):
            SegmentSampler(make_store(lengths=[9, 9]), config, prompt_store=store)
    else:
        with pytest.raises(ValueError, match=r"sampler.prompt_len <= 4"):
            SegmentSampler(store, config)


def test_prompts_from_a_separate_store():
    store, prompts = make_store(seed=0), make_store(seed=5, num_episodes=6)
    config = SamplerConfig(batch_size=32, prompt_len=3, prompt_source="random")
    batch = SegmentSampler(store, config, prompt_store=prompts).sample()
    used = set()
    for b in range(32):
        task = batch.task[b].item()
        candidates = prompts.task_episodes(task)
        last = [released_prompt_first(prompts, e, 3) + 2 for e in candidates]
        matching = [e for e, i in zip(candidates, last)
                    if np.allclose(batch.prompt_actions[b, -1].numpy(), prompts.actions[i])]
        assert len(matching) == 1
        assert_prompt_matches(batch, b, prompts, matching[0], config, store)
        used.add(matching[0])
    assert len(used) > 2  # random prompts vary


def test_prompt_store_must_fit():
    store = make_store(num_tasks=2)
    config = SamplerConfig(prompt_len=4)
    renamed = make_store(num_tasks=2)
    renamed.task_names = ["x", "y"]
    with pytest.raises(ValueError, match="task_names"):
        SegmentSampler(store, config, prompt_store=renamed)
    only_task_0 = make_store(num_tasks=2, lengths=[5, 6], tasks=[0, 0])
    with pytest.raises(ValueError, match="task-1"):
        SegmentSampler(store, config, prompt_store=only_task_0)


@pytest.mark.parametrize(
    "field, value",
    [("context_len", 0), ("context_len", -3), ("batch_size", 0), ("rtg_scale", 0.0),
     ("rtg_scale", -1.0), ("gamma", 0.0), ("gamma", 1.5), ("task_mode", "sequential"),
     ("prompt_len", -1), ("prompt_source", "worst")],
)
def test_bad_config_values(field, value):
    with pytest.raises(ValueError, match=rf"{field}.*{value}"):
        SamplerConfig(**{field: value})


def test_errors():
    empty = TrajectoryStore(
        observations=np.zeros((0, OBS_DIM)), actions=np.zeros((0, ACT_DIM)), rewards=np.zeros(0),
        terminals=np.zeros(0), timeouts=np.zeros(0), episode_starts=np.array([0]),
        episode_task=np.zeros(0, dtype=np.int64), task_names=["a"],
    )
    with pytest.raises(ValueError, match="empty"):
        SegmentSampler(empty)
    sampler = SegmentSampler(make_store(num_tasks=3, lengths=[4, 6], tasks=[0, 1]))
    for task in (3, -1):
        with pytest.raises(ValueError, match="out of range"):
            sampler.sample(task=task)
    with pytest.raises(ValueError, match="no episodes"):
        sampler.sample(task=2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_equal_cpu_batches():
    store = make_store()
    config = SamplerConfig(batch_size=32, prompt_len=3, prompt_source="random", gamma=0.9)
    cpu, cuda = SegmentSampler(store, config, seed=2), SegmentSampler(store, config, 2, "cuda")
    for _ in range(3):
        batch = cuda.sample()
        assert batch.states.is_cuda and batch.prompt_mask.is_cuda
        expected = cpu.sample()
        for name in SegmentBatch.__dataclass_fields__:
            torch.testing.assert_close(getattr(batch, name).cpu(), getattr(expected, name))
