"""The mask math of HarmoDT, as pure tensor functions.

Every task has one binary mask per masked weight (the ``OrlLinear`` weights of the transformer
blocks). Masks start random with Erdos-Renyi-Kernel densities (``erk_densities``,
``random_masks``); every ``mask_interval`` steps the upper level prunes the active entries with
the lowest score and regrows as many inactive entries with the highest agreement between the
harmony gradient and the task's gradient (``update_task_masks``), so each task's sparsity never
changes. As in the released code, the entries to change are picked over each task's whole mask
(all masked layers as one flat vector, so density moves between layers); ``scope="layer"``
picks that many in every layer instead. Masks are dicts ``name -> (num_tasks, *weight_shape)``
bool tensors, with names from ``Transformer.linears()`` (e.g. ``"blocks.0.attn.qkv"``).
"""

from __future__ import annotations

import math
from collections.abc import Collection

import torch

from orl.model.transformer import Transformer

VARIANTS = ("R", "M", "F")  # random (fixed masks), magnitude, Fisher
MASK_SCOPES = ("whole", "layer")  # one task's change count: over its whole mask, in each layer


def erk_densities(shapes: dict[str, tuple[int, ...]], sparsity: float,
                  dense: Collection[str] = frozenset()) -> dict[str, float]:
    """Per-layer densities of the Erdos-Renyi-Kernel rule (RigL, Evci et al. 2020).

    A sparse layer gets density ``eps * sum(shape) / prod(shape)``, with one ``eps`` for all
    layers chosen so that the active weights total ``(1 - sparsity) * sum(numel)``. Layers named
    in ``dense`` and 1-D layers have density 1 (and use their share of the budget); a layer whose
    density would exceed 1 is made dense and ``eps`` recomputed over the rest, one layer (the
    largest raw density) at a time, as RigL's ``sparse_utils.get_sparsities`` does.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"harmodt.sparsity must be in [0, 1), got {sparsity}")
    unknown = set(dense) - set(shapes)
    if unknown:
        raise ValueError(f"dense names layers that are not in shapes: {sorted(unknown)}")
    numel = {name: math.prod(shape) for name, shape in shapes.items()}
    raw = {name: sum(shape) / numel[name] for name, shape in shapes.items()}
    dense_layers = set(dense) | {name for name, shape in shapes.items() if len(shape) <= 1}
    while True:
        sparse = [name for name in shapes if name not in dense_layers]
        if not sparse:
            break
        # Active weights left for the sparse layers once the dense ones take all of theirs.
        budget = (1.0 - sparsity) * sum(numel.values()) - sum(numel[n] for n in dense_layers)
        if budget <= 0:
            raise ValueError(
                f"harmodt.sparsity={sparsity} leaves no weights for the sparse layers: the dense "
                f"layers {sorted(dense_layers)} alone exceed the budget"
            )
        eps = budget / sum(raw[n] * numel[n] for n in sparse)
        max_raw = max(raw[n] for n in sparse)
        if max_raw * eps <= 1.0:
            break
        dense_layers |= {n for n in sparse if raw[n] == max_raw}
    return {name: 1.0 if name in dense_layers else raw[name] * eps for name in shapes}


def random_masks(shapes: dict[str, tuple[int, ...]], densities: dict[str, float], num_tasks: int,
                 generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Per layer a (num_tasks, *shape) bool mask; each task keeps exactly
    ``round(density * numel)`` entries, drawn uniformly and independently per task."""
    if num_tasks < 1:
        raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
    missing = set(shapes) - set(densities)
    if missing:
        raise ValueError(f"no density for layers {sorted(missing)}")
    masks = {}
    for name, shape in shapes.items():
        numel = math.prod(shape)
        keep = round(densities[name] * numel)
        if not 0 <= keep <= numel:
            raise ValueError(f"density of {name!r} must be in [0, 1], got {densities[name]}")
        chosen = torch.rand(num_tasks, numel, generator=generator).topk(keep, dim=1).indices
        flat = torch.zeros(num_tasks, numel, dtype=torch.bool).scatter_(1, chosen, True)
        masks[name] = flat.view(num_tasks, *shape)
    return masks


def change_count(step: int, total_steps: int, eta_max: int) -> int:
    """Entries to change per task at the update after (1-based) step ``step``: a raised-cosine
    bump, as the released ``main.py`` computes it (``cosine_annealing`` with eta_min 0, at
    ``alpha = iter / max_iters`` with the 0-based ``iter = step - 1``, truncated by ``int``):

    ``int(eta_max - 0.5 * eta_max * (1 + cos(2 * pi * (step - 1) / total_steps)))``:
    0 at the start, ``eta_max`` half-way, 0 again at the end.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    alpha = (step - 1) / total_steps
    return int(eta_max - 0.5 * eta_max * (1.0 + math.cos(2.0 * math.pi * alpha)))


def prune_scores(weight: torch.Tensor, grad_task: torch.Tensor, harmony: torch.Tensor,
                 gamma: float, variant: str) -> torch.Tensor:
    """Importance of each entry for one task (the lowest active ones are pruned).

    ``"F"`` (Fisher): ``gamma * h * g + g**2``; ``"M"`` (magnitude): ``gamma * h * g + |w|``,
    with ``g`` the task's masked gradient and ``h`` the harmony gradient.
    """
    agreement = gamma * harmony * grad_task
    if variant == "F":
        return agreement + grad_task**2
    if variant == "M":
        return agreement + weight.abs()
    if variant == "R":
        raise ValueError("harmodt.variant='R' keeps its random masks fixed: it has no prune score")
    raise ValueError(f"harmodt.variant must be one of {list(VARIANTS)}, got {variant!r}")


def update_mask(mask: torch.Tensor, prune_score: torch.Tensor, regrow_score: torch.Tensor,
                count: int) -> torch.Tensor:
    """One task's mask of one layer after pruning and regrowing ``count`` entries.

    Switches off the ``count`` active entries with the lowest ``prune_score`` and switches on the
    ``count`` entries that were inactive before this call with the highest ``regrow_score``;
    ``count`` is clipped to the number of active and of inactive entries, so the number of active
    entries never changes. Equal scores are broken by flat index, lowest index first (a stable
    sort). Returns a new mask.
    """
    if prune_score.shape != mask.shape or regrow_score.shape != mask.shape:
        raise ValueError(
            f"scores must have the mask's shape {tuple(mask.shape)}, got "
            f"{tuple(prune_score.shape)} and {tuple(regrow_score.shape)}"
        )
    return update_masks(mask[None], prune_score[None], regrow_score[None], count)[0]


def update_masks(masks: torch.Tensor, prune_scores: torch.Tensor, regrow_scores: torch.Tensor,
                 count: int) -> torch.Tensor:
    """``update_mask`` for (num_tasks, ...) masks and scores at once, without a host sync.

    Inactive entries rank last for pruning (+inf) and active ones last for regrowing (-inf); the
    first ``min(count, active, inactive)`` of each task's ranking change (``first_in_order``).
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    flat = masks.flatten(1)
    if count == 0:
        return masks.clone()
    active = flat.sum(dim=1, keepdim=True)
    change = torch.minimum(active, flat.shape[1] - active).clamp_max(count)  # (T, 1)
    k = min(count, flat.shape[1])
    off = first_in_order(prune_scores.flatten(1).masked_fill(~flat, float("inf")), change, k)
    on = first_in_order(-regrow_scores.flatten(1).masked_fill(flat, float("-inf")), change, k)
    return ((flat & ~off) | on).view_as(masks)


def first_in_order(keys: torch.Tensor, change: torch.Tensor, k: int) -> torch.Tensor:
    """(T, n) bool: in each row of ``keys`` the ``change`` (T, 1) entries a stable ascending
    sort puts first (equal keys: lowest index first), for ``change <= k``.

    One top-k finds each row's ``change``-th smallest key; the keys below it are in, and so are
    the lowest-index keys equal to it, as many as are still missing (no full sort).
    """
    smallest = keys.topk(k, dim=1, largest=False).values  # (T, k), ascending
    last = smallest.gather(1, (change - 1).clamp_min(0))  # (T, 1); change 0: nothing is below
    # every key below `last` is among the `change - 1` smallest: count them there
    missing = (change - (smallest < last).sum(dim=1, keepdim=True)).to(torch.int32)
    ties = keys == last
    tie_rank = ties.to(torch.int32).cumsum(dim=1, dtype=torch.int32)
    return (keys < last) | (ties & (tie_rank <= missing))


@torch.no_grad()
def update_task_masks(masks: dict[str, torch.Tensor], weights: dict[str, torch.Tensor],
                      masked_grads: dict[str, torch.Tensor], full_grads: dict[str, torch.Tensor],
                      count: int, gamma: float, variant: str,
                      scope: str = "whole") -> dict[str, torch.Tensor]:
    """The upper-level step: new (num_tasks, ...) masks for every layer of ``masks``.

    The harmony gradient is ``h = mean_i g_i`` over the tasks' masked gradients ``g_i``; task
    ``i`` prunes by ``prune_scores(w, g_i, h, gamma, variant)`` and regrows by ``h * G_i``, with
    ``G_i`` its gradient without the mask (``g_i`` is zero at every inactive entry). ``scope``
    ``"whole"`` changes ``count`` entries of each task's mask over all layers at once (one
    ranking of the concatenated, row-major flattened layers, in the order of ``masks``);
    ``"layer"`` changes ``count`` in every layer. Variant ``"R"`` returns the masks unchanged.
    The inputs are not modified; no host sync.
    """
    if variant not in VARIANTS:
        raise ValueError(f"harmodt.variant must be one of {list(VARIANTS)}, got {variant!r}")
    if scope not in MASK_SCOPES:
        raise ValueError(f"harmodt.mask_scope must be one of {list(MASK_SCOPES)}, got {scope!r}")
    if variant == "R":
        return {name: mask.clone() for name, mask in masks.items()}

    def update(mask: torch.Tensor, weight: torch.Tensor, grads: torch.Tensor,
               full: torch.Tensor) -> torch.Tensor:
        harmony = grads.mean(dim=0)
        return update_masks(mask, prune_scores(weight.detach(), grads, harmony, gamma, variant),
                            harmony * full, count)

    names = list(masks)
    if scope == "layer":
        return {n: update(masks[n], weights[n], masked_grads[n], full_grads[n]) for n in names}

    def flat(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([tensors[n].flatten(1) for n in names], dim=1)

    weight = torch.cat([weights[n].flatten() for n in names])
    new = update(flat(masks), weight, flat(masked_grads), flat(full_grads))
    parts = new.split([masks[n][0].numel() for n in names], dim=1)
    return {n: part.view_as(masks[n]) for n, part in zip(names, parts)}


def merged_mask(masks: torch.Tensor, merge_thres: int) -> torch.Tensor:
    """One mask from (num_tasks, ...) task masks: an entry is kept where at least
    ``merge_thres`` of the tasks keep it."""
    num_tasks = masks.shape[0]
    if not 1 <= merge_thres <= num_tasks:
        raise ValueError(f"harmodt.merge_thres must be in [1, {num_tasks}] (the number of tasks), "
                         f"got {merge_thres}")
    return masks.sum(dim=0) >= merge_thres


def mask_shapes(transformer: Transformer) -> dict[str, tuple[int, ...]]:
    """The weight shape of every ``OrlLinear`` of the blocks, by name."""
    return {name: tuple(linear.weight.shape) for name, linear in transformer.linears()}


def apply_masks(transformer: Transformer, masks: dict[str, torch.Tensor]) -> None:
    """Attach ``masks[name]`` ((num_tasks, out, in) bool) to each named ``OrlLinear``.

    Checks every entry first and raises one ValueError listing all unknown names and wrong
    shapes; layers not named keep what they had.
    """
    linears = dict(transformer.linears())
    problems = []
    for name, mask in masks.items():
        if name not in linears:
            problems.append(f"unknown layer {name!r} (known: {sorted(linears)})")
        elif mask.dim() != 3 or mask.shape[1:] != linears[name].weight.shape:
            problems.append(f"{name!r}: mask shape {tuple(mask.shape)}, expected "
                            f"(num_tasks, {', '.join(map(str, linears[name].weight.shape))})")
    if problems:
        raise ValueError("cannot apply HarmoDT masks: " + "; ".join(problems))
    for name, mask in masks.items():
        linears[name].set_masks(mask)
