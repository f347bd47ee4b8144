"""DiSF, DATAMASK and the selection interface against slow, obvious references."""

import itertools
import math

import numpy as np
import pytest
import torch

from orl.datasets.select import (
    DataMaskConfig,
    budget_count,
    datamask_select,
    disf_select,
    dominance_score,
    greedy_incremental,
    greedy_naive,
    normalized_returns,
    offdiag_mass,
    raw_features,
    select,
)
from orl.datasets.select.datamask import (
    cosine_diversity,
    disf_diversity,
    gumbel_masks,
    mask_objective,
    ordered_log_prob,
)
from orl.datasets.select.disf import block_budgets, candidate_scores
from orl.datasets.store import TrajectoryStore


def correlated(n, d, seed=0, rank=3):
    """Features dominated by a few latent factors (strongly correlated dimensions)."""
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(n, rank, generator=g, dtype=torch.float64)
    mix = torch.randn(rank, d, generator=g, dtype=torch.float64)
    return latent @ mix + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64)


def mixed_store(episodes=24, tasks=2, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 9, size=episodes)
    n = int(lengths.sum())
    return TrajectoryStore(
        observations=rng.normal(size=(n, 3)), actions=rng.uniform(-1, 1, size=(n, 2)),
        rewards=rng.uniform(0, 1, n), terminals=np.zeros(n, bool), timeouts=np.zeros(n, bool),
        episode_starts=np.concatenate([[0], np.cumsum(lengths)]),
        episode_task=np.arange(episodes) % tasks, task_names=[f"t{i}" for i in range(tasks)],
        episode_success=rng.uniform(size=episodes) < 0.5, sources=["a/b-v0"],
    )


def correlation_offdiag(x):
    """The objective written the most obvious way (numpy corrcoef, loops)."""
    x = x.numpy()
    keep = x.std(0) > 1e-9
    c = np.corrcoef(x[:, keep], rowvar=False).reshape(keep.sum(), keep.sum())
    return sum(c[i, j] ** 2 for i in range(len(c)) for j in range(len(c)) if i != j)


# ----------------------------------------------------------------------------------- DiSF
def test_objective_matches_corrcoef():
    x = correlated(9, 5)
    x[:, 2] = 3.0  # a constant dimension correlates with nothing
    assert offdiag_mass(x).item() == pytest.approx(correlation_offdiag(x), rel=1e-10)


@pytest.mark.parametrize("factored", [False, True])
def test_candidate_scores_match_recomputing(factored):
    x = correlated(40, 8, seed=1)
    selected = [3, 17, 25]
    mean = x[selected].mean(0)
    centred = x[selected] - mean
    taken = torch.zeros(40, dtype=torch.bool)
    taken[selected] = True
    scores = candidate_scores(x, mean, centred.T @ centred, len(selected), taken,
                              centred if factored else None)
    for c in range(40):
        expected = math.inf if c in selected else offdiag_mass(x[[*selected, c]]).item()
        assert scores[c].item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_incremental_greedy_picks_what_the_naive_reference_picks(seed):
    x = correlated(60, 7, seed=seed)
    x[:, 0] = 1.0
    fast = disf_select(x, 14, block_size=30, seed=seed, greedy=greedy_incremental)
    slow = disf_select(x, 14, block_size=30, seed=seed, greedy=greedy_naive)
    np.testing.assert_array_equal(fast, slow)
    assert len(set(fast.tolist())) == 14


def test_scoring_in_pieces_picks_the_same(monkeypatch):
    from orl.datasets.select import disf

    x = correlated(50, 5, seed=6)
    whole = greedy_incremental(x, 3, 8)
    monkeypatch.setattr(disf, "CPU_SCORE_ROWS", 7)
    assert greedy_incremental(x, 3, 8) == whole == greedy_naive(x, 3, 8)


def test_disf_decorrelates_versus_random():
    x = correlated(300, 8, seed=3)
    chosen = disf_select(x, 30, block_size=300, seed=0)
    rng = np.random.default_rng(0)
    random_mass = [offdiag_mass(x[rng.choice(300, 30, replace=False)]).item() for _ in range(20)]
    assert offdiag_mass(x[chosen]).item() < min(random_mass)
    assert offdiag_mass(x[chosen]).item() < 0.7 * np.mean(random_mass)


def test_block_budgets_split_the_count():
    budgets = block_budgets(np.array([10, 10, 5]), 7)
    assert budgets.sum() == 7 and budgets.tolist() == [3, 3, 1]
    with pytest.raises(ValueError, match="pool size"):
        disf_select(correlated(5, 2), 6)


# -------------------------------------------------------------------------------- DATAMASK
def test_ordered_log_prob_matches_sequential_softmax():
    logits = torch.tensor([0.3, -1.0, 2.0, 0.5, 0.0], dtype=torch.float64)
    masks = torch.tensor([[2, 0, 4], [1, 3, 2]])
    expected = []
    for mask in masks.tolist():
        left, logp = list(range(5)), 0.0
        for item in mask:
            logp += logits[item].item() - math.log(sum(math.exp(logits[j]) for j in left))
            left.remove(item)
        expected.append(logp)
    np.testing.assert_allclose(ordered_log_prob(logits, masks).numpy(), expected, rtol=1e-12)


def test_gumbel_masks_follow_the_softmax():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    masks = gumbel_masks(logits, 4000, 1, torch.Generator().manual_seed(0))
    frequency = torch.bincount(masks[:, 0], minlength=4) / 4000
    torch.testing.assert_close(frequency, torch.softmax(logits, 0), atol=0.03, rtol=0)
    pairs = gumbel_masks(logits, 100, 3, torch.Generator().manual_seed(1))
    assert all(len(set(row)) == 3 for row in pairs.tolist())  # without replacement


def test_diversities_match_pairwise_loops():
    x = correlated(6, 4, seed=4).float()
    cos = [torch.nn.functional.cosine_similarity(x[i], x[j], dim=0).item()
           for i, j in itertools.permutations(range(6), 2)]
    assert cosine_diversity(x[None]).item() == pytest.approx(0.5 * (1 - np.mean(cos)), rel=1e-5)
    expected = 1 - offdiag_mass(x.double()).item() / (4 * 3)
    assert disf_diversity(x[None].double()).item() == pytest.approx(expected, rel=1e-9)


def test_datamask_logits_move_to_high_quality_items():
    g = torch.Generator().manual_seed(0)
    quality = torch.rand(40, generator=g, dtype=torch.float64)
    features = torch.randn(40, 4, generator=g, dtype=torch.float64)
    cfg = DataMaskConfig(lam=1.0, prefilter=0.0, init_scale=0.0, steps=150, group_size=64,
                         block_size=40, update_frac=1.0)
    chosen, logits = datamask_select(features, quality, 10, cfg, seed=0)
    best = torch.topk(quality, 10).indices
    assert len(set(chosen.tolist()) & set(best.tolist())) >= 9
    assert logits[best].mean() > logits.mean() + 1.0  # started at 0 everywhere


def test_datamask_diversity_prefers_distinct_items():
    g = torch.Generator().manual_seed(1)
    features = torch.zeros(20, 10, dtype=torch.float64)
    features[:10, 0] = 1.0  # ten near-copies of one item ...
    features[:10] += 0.01 * torch.randn(10, 10, generator=g, dtype=torch.float64)
    features[10:] = torch.eye(10, dtype=torch.float64)  # ... and ten orthogonal items
    cfg = DataMaskConfig(lam=0.0, prefilter=0.0, init_scale=0.0, steps=100, group_size=64,
                         block_size=20, update_frac=0.5)
    chosen, logits = datamask_select(features, torch.full((20,), 0.5, dtype=torch.float64), 5, cfg)
    assert (chosen >= 10).sum() >= 4
    assert logits[10:].mean() > logits[:10].mean()


def test_datamask_prefilter_drops_low_quality():
    quality = torch.linspace(0, 1, 30)
    cfg = DataMaskConfig(prefilter=0.5, steps=5, group_size=8, block_size=16)
    chosen, logits = datamask_select(torch.randn(30, 3), quality, 6, cfg)
    assert chosen.min() >= 15 and torch.isinf(logits[:15]).all()


@pytest.mark.parametrize("field, value", [("lam", 1.5), ("diversity", "l2"), ("update_frac", 0.0),
                                          ("prefilter", 1.0), ("group_size", 1)])
def test_datamask_bad_config(field, value):
    with pytest.raises(ValueError, match=f"datamask.{field}"):
        DataMaskConfig(**{field: value})


# ------------------------------------------------------------------------------- interface
@pytest.mark.parametrize("budget, match", [(0.0, r"\(0, 1\]"), (1.5, r"\(0, 1\]"), (-3, ">= 1"),
                                           (25, "larger than the pool"), (True, "fraction")])
def test_budget_errors(budget, match):
    with pytest.raises(ValueError, match=match):
        budget_count(budget, 24)
    with pytest.raises(ValueError, match=match):
        select(mixed_store(), budget, "random")


def test_budget_fraction_and_count():
    assert budget_count(0.25, 24) == 6 and budget_count(1.0, 24) == 24 and budget_count(5, 24) == 5


def test_top_return_and_random():
    store = mixed_store()
    quality = normalized_returns(store)
    top = select(store, 6, "top-return")
    assert quality[top].min() >= np.sort(quality)[-6]
    rnd = select(store, 6, "random", seed=1)
    assert len(set(rnd.tolist())) == 6 and np.array_equal(rnd, select(store, 6, "random", seed=1))
    with pytest.raises(ValueError, match="method must be one of"):
        select(store, 6, "greedy")
    with pytest.raises(ValueError, match="needs a DT agent"):
        select(store, 6, "ntk")


def test_normalized_returns_are_per_task():
    store = mixed_store()
    quality = normalized_returns(store)
    for t in range(store.num_tasks):
        rows = store.task_episodes(t)
        assert quality[rows].min() == 0.0 and quality[rows].max() == 1.0


@pytest.mark.parametrize("method", ["disf", "datamask"])
def test_select_with_raw_features(method):
    store = mixed_store()
    chosen = select(store, 0.25, method, block_size=12, quality_filter=0.2,
                    datamask=DataMaskConfig(steps=5, group_size=8))
    assert len(chosen) == 6 and len(set(chosen.tolist())) == 6 and np.all(np.diff(chosen) > 0)


def test_raw_features_match_per_episode_loop():
    store = mixed_store()
    columns = []
    for lo, hi in zip(store.episode_starts[:-1], store.episode_starts[1:]):
        obs, act = store.observations[lo:hi], store.actions[lo:hi]
        columns.append(np.concatenate([obs.mean(0), obs.std(0), act.mean(0), act.std(0),
                                       [store.rewards[lo:hi].sum(), hi - lo]]))
    columns = np.array(columns)
    expected = (columns - columns.mean(0)) / columns.std(0)
    np.testing.assert_allclose(raw_features(store), expected, rtol=1e-4, atol=1e-4)


def test_dominance_score_extremes():
    rng = np.random.default_rng(0)
    independent = rng.normal(size=(5000, 10))
    assert dominance_score(independent, top=5) == pytest.approx(0.5, abs=0.03)
    collapsed = rng.normal(size=(100, 1)) * np.ones((1, 10)) + 1e-3 * rng.normal(size=(100, 10))
    assert dominance_score(collapsed, top=5) > 0.99


@pytest.mark.parametrize("diversity", ["cosine", "disf"])
def test_mask_objective_matches_per_mask_sets(diversity):
    features = correlated(12, 4, seed=5)
    quality = torch.rand(12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    masks = torch.tensor([[0, 3, 5], [11, 2, 7], [4, 9, 1]])
    reference = cosine_diversity if diversity == "cosine" else disf_diversity
    expected = 0.3 * quality[masks].mean(1) + 0.7 * reference(features[masks])
    torch.testing.assert_close(mask_objective(features, quality, masks, 0.3, diversity), expected)


def test_disf_quality_filter_drops_low_returns():
    store = mixed_store()
    quality = normalized_returns(store)
    chosen = select(store, 5, "disf", quality_filter=0.5)
    assert quality[chosen].min() >= np.sort(quality)[len(quality) // 2]  # the top half only
    with pytest.raises(ValueError, match="features must be"):
        select(store, 5, "disf", features=np.zeros((3, 2)))
