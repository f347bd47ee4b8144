"""G-HarmoDT's task grouping: tasks whose gradients agree share one group mask.

The extension paper clusters tasks "by gradient information" without public code; our choice,
documented here: the cosine similarity of the tasks' gradients over the masked weights, then
average-linkage agglomerative clustering into ``num_groups`` groups (deterministic; ties merge
the lowest group indices first). Groups are numbered by their lowest task index.
"""

from __future__ import annotations

import torch


def gradient_similarity(grads: torch.Tensor) -> torch.Tensor:
    """(T, T) cosine similarity of per-task gradients ``grads`` (T, P)."""
    unit = grads / grads.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return unit @ unit.T


def cluster_tasks(similarity: torch.Tensor, num_groups: int) -> torch.Tensor:
    """(T,) group index of every task: average-linkage agglomerative clustering of a (T, T)
    similarity matrix, merging the two most similar groups until ``num_groups`` remain."""
    num_tasks = similarity.shape[0]
    if similarity.shape != (num_tasks, num_tasks):
        raise ValueError(f"similarity must be square, got shape {tuple(similarity.shape)}")
    if not 1 <= num_groups <= num_tasks:
        raise ValueError(f"harmodt.num_groups must be in [1, {num_tasks}], got {num_groups}")
    sim = similarity.double()
    groups = [[t] for t in range(num_tasks)]
    while len(groups) > num_groups:
        best, pair = None, (0, 1)
        for i in range(len(groups)):
            for j in range(i + 1, len(groups)):
                link = sim[groups[i]][:, groups[j]].mean().item()
                if best is None or link > best:
                    best, pair = link, (i, j)
        i, j = pair
        groups[i] = sorted(groups[i] + groups[j])
        del groups[j]
    labels = torch.empty(num_tasks, dtype=torch.long)
    for index, members in enumerate(sorted(groups)):
        labels[members] = index
    return labels
