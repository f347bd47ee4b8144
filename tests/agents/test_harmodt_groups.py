import itertools

import pytest
import torch

from orl.agents.harmodt.groups import cluster_tasks, gradient_similarity


def test_similarity_is_cosine():
    grads = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    expected = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(gradient_similarity(grads), expected)


def test_clusters_follow_gradient_directions():
    torch.manual_seed(0)
    directions = torch.randn(3, 50)
    grads = torch.cat([directions[g] + 0.05 * torch.randn(4, 50) for g in range(3)])
    order = torch.randperm(12)
    labels = cluster_tasks(gradient_similarity(grads[order]), 3)
    truth = (torch.arange(12) // 4)[order]
    for a, b in itertools.combinations(range(12), 2):
        assert (labels[a] == labels[b]) == (truth[a] == truth[b])
    assert labels[0] == 0  # groups numbered by their lowest task


def _average_linkage_reference(sim, k):
    """Brute force: every merge sequence step picks the max mean pairwise similarity."""
    clusters = [frozenset([t]) for t in range(len(sim))]
    while len(clusters) > k:
        scored = [(sum(sim[a][b] for a in ci for b in cj) / (len(ci) * len(cj)), -i, -j)
                  for i, ci in enumerate(clusters) for j, cj in enumerate(clusters) if i < j]
        _, i, j = max(scored)
        merged = clusters[-i] | clusters[-j]
        clusters = [c for n, c in enumerate(clusters) if n not in (-i, -j)]
        clusters.insert(-i, merged)
        clusters.sort(key=min)
    return sorted(sorted(c) for c in clusters)


@pytest.mark.parametrize("seed", range(5))
def test_matches_brute_force_average_linkage(seed):
    g = torch.Generator().manual_seed(seed)
    sim = gradient_similarity(torch.randn(7, 5, generator=g))
    for k in (1, 2, 3, 5, 7):
        labels = cluster_tasks(sim, k)
        got = sorted(sorted(torch.nonzero(labels == c).flatten().tolist()) for c in labels.unique())
        assert got == _average_linkage_reference(sim.tolist(), k)


def test_bad_group_counts():
    sim = torch.eye(3)
    with pytest.raises(ValueError, match="num_groups"):
        cluster_tasks(sim, 4)
    with pytest.raises(ValueError, match="square"):
        cluster_tasks(torch.ones(2, 3), 1)
