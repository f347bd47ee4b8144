"""DiSF: greedy selection of decorrelated items (diversified file selection, ICLR 2025).

For a selected feature set ``F`` (n x d) every dimension is standardised over the set and
``C = F_hat^T F_hat / (n - 1)`` is its correlation matrix; the objective is the squared
off-diagonal mass ``sum_{i != j} C_ij^2``. A dimension that is constant over the set has a zero
standardised column (it correlates with nothing). The pool is split into blocks (a seeded
permutation); in each block one item is picked at random, then the item that gives the lowest
objective is added greedily until the block's budget is met.

``greedy_incremental`` scores every candidate of a block at once from the running mean and
centred scatter matrix of the selection (a candidate is a rank-1 update of them, expanded in
closed form: no d x d matrix per candidate, one (b, d) x (d, d) product per step);
``greedy_naive`` recomputes the correlation matrix per candidate and is the test oracle.
Both break near-ties (relative ``TIE_RTOL``) towards the lowest index.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

TIE_RTOL = 1e-9
VAR_EPS = 1e-12  # a dimension whose variance over the set is below this (relative) is constant
CPU_SCORE_ROWS = 1024  # candidates scored at once on CPU

Greedy = Callable[[torch.Tensor, int, int], list[int]]


def offdiag_mass(features: torch.Tensor) -> torch.Tensor:
    """The DiSF objective of one set ``(n, d)``: squared off-diagonal correlation mass."""
    centred = features - features.mean(0)
    var = (centred**2).sum(0)
    scale = torch.where(var > VAR_EPS * var.max().clamp_min(1e-300), var.rsqrt(), 0.0)
    z = centred * scale
    corr = z.T @ z  # the (n - 1) factors cancel in the correlation
    return (corr**2).sum() - (torch.diagonal(corr) ** 2).sum()


def pick_min(scores: torch.Tensor) -> int:
    """Index of the smallest score; scores within ``TIE_RTOL`` of it count as ties (lowest wins)."""
    best = scores.min()
    tol = TIE_RTOL * max(1.0, abs(float(best)))
    return int(torch.nonzero(scores <= best + tol)[0])


def greedy_naive(features: torch.Tensor, first: int, k: int) -> list[int]:
    """Slow reference: recompute the objective of ``selected + [c]`` for every candidate ``c``."""
    selected = [first]
    while len(selected) < k:
        scores = torch.full((len(features),), float("inf"), dtype=features.dtype)
        for c in range(len(features)):
            if c not in selected:
                scores[c] = offdiag_mass(features[[*selected, c]])
        selected.append(pick_min(scores))
    return selected


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot products of two (b, d) matrices."""
    return torch.einsum("bd,bd->b", a, b)


def candidate_scores(x: torch.Tensor, mean: torch.Tensor, scatter: torch.Tensor, n: int,
                     taken: torch.Tensor, centred: torch.Tensor | None = None) -> torch.Tensor:
    """Objective of ``selected + [x_c]`` for every row ``x_c`` of ``x`` (b, d), at once.

    ``mean`` (d,) and ``scatter`` (d, d) are the mean and the centred scatter matrix of the
    ``n`` selected rows. Adding ``x_c`` is the rank-1 update ``A = scatter + c delta delta^T``
    with ``delta = x_c - mean`` and ``c = n / (n + 1)``; with ``q = 1 / diag(A)`` (0 for constant
    dimensions) the objective ``sum_ij q_i q_j A_ij^2 - sum_i q_i^2 A_ii^2`` expands into two
    batched (b, d) x (d, d) products and O(b d) terms. While the selection is small
    (``n (n + 1) < 2 d``) and its centred rows ``centred`` (n, d) are given, the scatter matrix
    ``Y^T Y`` is used through its factor instead: ``sum_ij q_i q_j S_ij^2 = sum_ac (q . (Y_a *
    Y_c))^2`` and ``sum_ij u_i u_j S_ij = |Y u|^2``, O(b d n^2) in all.
    """
    c = n / (n + 1)
    delta = x - mean
    d2 = delta * delta
    q = torch.add(torch.diagonal(scatter), d2, alpha=c).reciprocal_()  # 1 / diag(A), (b, d)
    q.masked_fill_(q >= q.amin(1, keepdim=True) / VAR_EPS, 0.0)  # var <= VAR_EPS * max var
    qd = q * delta
    if centred is not None and n * (n + 1) < 2 * x.shape[1]:
        pairs = (centred[:, None, :] * centred[None, :, :]).reshape(n * n, -1)  # Y_a * Y_c
        quad_s2 = (q @ pairs.T).pow(2).sum(1)  # sum q_i q_j S_ij^2
        quad_s = (qd @ centred.T).pow(2).sum(1)  # sum q_i q_j S_ij delta_i delta_j
    else:
        quad_s2 = _rowdot(q @ (scatter * scatter), q)
        quad_s = _rowdot(qd @ scatter, qd)
    full = quad_s2 + 2.0 * c * quad_s + (c * _rowdot(q, d2)) ** 2  # + c^2 (sum q_i delta_i^2)^2
    diag = (q > 0).sum(1)  # (q_i A_ii)^2: 1 per non-constant dimension, 0 otherwise
    return torch.where(taken, torch.inf, full - diag)


def greedy_incremental(features: torch.Tensor, first: int, k: int) -> list[int]:
    """Greedy from running statistics: every step scores all candidates in one vectorised pass.

    The mean and centred scatter of the selection are updated in place (Welford's rank-1 update)
    after each pick.
    """
    x = features
    taken = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    mean = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
    scatter = torch.zeros(x.shape[1], x.shape[1], dtype=x.dtype, device=x.device)
    selected: list[int] = []
    pick = first
    while True:
        n = len(selected)
        delta = x[pick] - mean
        mean += delta / (n + 1)
        scatter += (n / (n + 1)) * torch.outer(delta, delta)
        selected.append(pick)
        taken[pick] = True
        if len(selected) == k:
            return selected
        rows = len(x) if x.is_cuda else CPU_SCORE_ROWS  # CPU: cache-sized pieces are faster
        centred = x[selected] - mean
        pick = pick_min(torch.cat([
            candidate_scores(x[i : i + rows], mean, scatter, len(selected), taken[i : i + rows],
                             centred)
            for i in range(0, len(x), rows)
        ]))


def block_budgets(sizes: np.ndarray, count: int) -> np.ndarray:
    """Split ``count`` over blocks in proportion to their sizes (largest remainders first)."""
    share = count * sizes / sizes.sum()
    budgets = np.floor(share).astype(np.int64)
    order = np.argsort(-(share - budgets), kind="stable")
    budgets[order[: count - budgets.sum()]] += 1
    return np.minimum(budgets, sizes)


def disf_select(
    features: torch.Tensor,
    count: int,
    block_size: int = 1024,
    seed: int = 0,
    greedy: Greedy = greedy_incremental,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Indices of ``count`` rows of ``features`` (N, d) chosen block by block by DiSF.

    The pool is permuted with ``seed`` and cut into blocks of ``block_size``; each block gets a
    share of ``count`` proportional to its size, a random first pick and greedy additions.
    ``progress(items, n)`` is called after every block with the block's size and the pool size.
    """
    n = len(features)
    if not 0 < count <= n:
        raise ValueError(f"DiSF count must be in [1, {n}] (the pool size), got {count}")
    if block_size < 2:
        raise ValueError(f"DiSF block_size must be >= 2, got {block_size}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    blocks = [order[i : i + block_size] for i in range(0, n, block_size)]
    budgets = block_budgets(np.array([len(b) for b in blocks]), count)
    chosen = []
    for block, k in zip(blocks, budgets):
        first = int(rng.integers(len(block)))
        if k > 0:
            local = greedy(features[torch.as_tensor(block, device=features.device)], first, int(k))
            chosen.append(block[local])
        if progress is not None:
            progress(len(block), n)
    return np.concatenate(chosen)
