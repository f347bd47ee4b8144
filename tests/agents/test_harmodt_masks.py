import copy
import math

import numpy as np
import pytest
import torch

from orl.agents.harmodt.masks import (
    apply_masks,
    change_count,
    erk_densities,
    mask_shapes,
    merged_mask,
    prune_scores,
    random_masks,
    update_mask,
    update_task_masks,
)
from orl.model.layers import Route
from orl.model.transformer import Transformer

# ------------------------------------------------------------------ references (slow, obvious)


def erk_reference(shapes, sparsity, dense=()):
    """ERK by fixed point: grow the dense set until no sparse layer's density exceeds 1."""
    numel = {n: math.prod(s) for n, s in shapes.items()}
    raw = {n: sum(s) / numel[n] for n, s in shapes.items()}
    target = (1 - sparsity) * sum(numel.values())
    dense_set = set(dense) | {n for n, s in shapes.items() if len(s) == 1}
    while True:
        sparse = [n for n in shapes if n not in dense_set]
        eps = (target - sum(numel[n] for n in dense_set)) / sum(raw[n] * numel[n] for n in sparse)
        over = {n for n in sparse if raw[n] * eps > 1}
        if not over:
            return {n: 1.0 if n in dense_set else raw[n] * eps for n in shapes}
        dense_set |= over


def update_reference(mask, prune, regrow, count):
    """Prune/regrow with Python loops over sorted (score, index) lists."""
    m, p, r = mask.flatten().tolist(), prune.flatten().tolist(), regrow.flatten().tolist()
    active = [i for i, on in enumerate(m) if on]
    inactive = [i for i, on in enumerate(m) if not on]
    count = min(count, len(active), len(inactive))
    off = [i for _, i in sorted((p[i], i) for i in active)[:count]]
    on = [i for _, i in sorted((-r[i], i) for i in inactive)[:count]]
    for i in off:
        m[i] = False
    for i in on:
        m[i] = True
    return torch.tensor(m).view_as(mask)


def tie_heavy(shape, gen):
    """Scores with many equal values (integers 0..3, signed)."""
    return torch.randint(-3, 4, shape, generator=gen).float()


# ------------------------------------------------------------------------------- ERK


def test_erk_matches_hand_computed_case_with_saturated_layer():
    shapes = {"a": (4, 4), "b": (100, 100), "c": (8,)}
    d = erk_densities(shapes, 0.5)
    # c is 1-D (dense); a would get 0.5 * 24.06 > 1 (dense); b takes the rest: 4988 / 10000.
    assert d["a"] == 1.0 and d["c"] == 1.0
    assert d["b"] == pytest.approx(0.4988)
    assert d == pytest.approx(erk_reference(shapes, 0.5))


@pytest.mark.parametrize(("sparsity", "dense"), [
    (0.0, ()), (0.2, ()), (0.5, ()), (0.9, ()), (0.0, ("q",)), (0.2, ("q",)), (0.5, ("q",)),
])  # at 0.9, q alone exceeds the budget: see the error test
def test_erk_matches_reference_and_keeps_budget(sparsity, dense):
    shapes = {"q": (48, 16), "p": (16, 16), "fc": (64, 16), "out": (16, 64), "tiny": (2, 3),
              "bias": (16,), "conv": (8, 4, 3, 3)}
    d = erk_densities(shapes, sparsity, dense=set(dense))
    assert d == pytest.approx(erk_reference(shapes, sparsity, dense))
    assert all(0.0 < v <= 1.0 for v in d.values())
    assert d["bias"] == 1.0 and all(d[n] == 1.0 for n in dense)
    total = sum(math.prod(s) for s in shapes.values())
    active = sum(round(d[n] * math.prod(s)) for n, s in shapes.items())
    assert abs(active - (1 - sparsity) * total) <= len(shapes) / 2


def test_erk_one_dimensional_only_is_dense():
    assert erk_densities({"ln": (8,), "b": (3,)}, 0.5) == {"ln": 1.0, "b": 1.0}


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5])
def test_erk_rejects_bad_sparsity(sparsity):
    with pytest.raises(ValueError, match=r"harmodt\.sparsity"):
        erk_densities({"a": (4, 4)}, sparsity)


def test_erk_rejects_infeasible_dense_and_unknown_dense():
    with pytest.raises(ValueError, match=r"harmodt\.sparsity"):
        erk_densities({"a": (40, 40), "b": (4, 4)}, 0.9, dense={"a"})
    with pytest.raises(ValueError, match="nope"):
        erk_densities({"a": (4, 4)}, 0.5, dense={"nope"})


# ----------------------------------------------------------------------- random masks


def test_random_masks_exact_counts_and_differ_across_tasks():
    shapes = {"a": (12, 8), "b": (5, 7), "c": (6,)}
    densities = {"a": 0.8, "b": 0.33, "c": 1.0}
    masks = random_masks(shapes, densities, 4, torch.Generator().manual_seed(0))
    for name, shape in shapes.items():
        m = masks[name]
        assert m.dtype == torch.bool and m.shape == (4, *shape)
        counts = m.flatten(1).sum(1).tolist()
        assert counts == [round(densities[name] * math.prod(shape))] * 4
    for name in ("a", "b"):
        assert all(not torch.equal(masks[name][0], masks[name][i]) for i in range(1, 4))
    again = random_masks(shapes, densities, 4, torch.Generator().manual_seed(0))
    assert all(torch.equal(masks[n], again[n]) for n in shapes)


def test_random_masks_bad_inputs():
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="num_tasks"):
        random_masks({"a": (2, 2)}, {"a": 0.5}, 0, gen)
    with pytest.raises(ValueError, match="'a'"):
        random_masks({"a": (2, 2)}, {}, 2, gen)
    with pytest.raises(ValueError, match="density"):
        random_masks({"a": (2, 2)}, {"a": 1.5}, 2, gen)


# ----------------------------------------------------------------------- change count


def released_cosine_annealing(alpha_t, eta_max=100, eta_min=0):
    """``cosine_annealing`` of the released ``main.py``, verbatim."""
    return int(eta_max + 0.5 * (eta_min - eta_max) * (1 + np.cos(2 * np.pi * alpha_t)))


def test_change_count_raised_cosine_as_released():
    total, eta = 1000, 100
    # the update after 1-based step s runs in the released loop at iter = s - 1
    assert [change_count(s, total, eta) for s in range(1, total + 1)] == [
        released_cosine_annealing((s - 1) / total, eta) for s in range(1, total + 1)]
    assert change_count(1, total, eta) == 0
    assert change_count(total // 4 + 1, total, eta) == 50
    assert change_count(total // 2 + 1, total, eta) == eta
    assert change_count(total // 4, total, eta) == 49  # truncated, not rounded
    with pytest.raises(ValueError, match="total_steps"):
        change_count(0, 0, eta)


# ------------------------------------------------------------------------ scores


def test_prune_scores_variants():
    gen = torch.Generator().manual_seed(0)
    w, g, h = (torch.randn(3, 4, generator=gen) for _ in range(3))
    torch.testing.assert_close(prune_scores(w, g, h, 10.0, "F"), 10.0 * h * g + g * g)
    torch.testing.assert_close(prune_scores(w, g, h, 10.0, "M"), 10.0 * h * g + w.abs())
    for bad in ("R", "X", "f"):
        with pytest.raises(ValueError, match=r"harmodt\.variant"):
            prune_scores(w, g, h, 10.0, bad)


# ------------------------------------------------------------------- prune / regrow


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("count", [0, 1, 3, 7])
def test_update_mask_matches_brute_force_with_ties(seed, count):
    gen = torch.Generator().manual_seed(seed)
    shape = (5, 6) if seed % 2 else (30,)
    mask = torch.rand(shape, generator=gen) < 0.6
    prune, regrow = tie_heavy(shape, gen), tie_heavy(shape, gen)
    before = mask.clone()
    new = update_mask(mask, prune, regrow, count)
    assert torch.equal(new, update_reference(mask, prune, regrow, count))
    assert torch.equal(mask, before)
    assert new.sum() == mask.sum()
    # Exactly min(count, active, inactive) swapped: no pruned entry is regrown in the same call.
    expected = min(count, int(mask.sum()), int((~mask).sum()))
    assert (mask & ~new).sum() == expected and (new & ~mask).sum() == expected


def test_update_mask_ties_lowest_index_first():
    mask = torch.tensor([True, True, True, False, False, False])
    zeros = torch.zeros(6)
    # All scores equal: prune index 0, regrow index 3.
    assert update_mask(mask, zeros, zeros, 1).tolist() == [False, True, True, True, False, False]
    # -0.0 equals 0.0 (a sort on the float bits would put it first)
    signed = torch.tensor([0.0, -0.0, 0.0, 0.0, -0.0, 0.0])
    assert update_mask(mask, signed, -signed, 2).tolist() == [False, False, True, True, True,
                                                              False]


@pytest.mark.parametrize("count", [4, 10, 100])
def test_update_mask_count_clipped(count):
    gen = torch.Generator().manual_seed(3)
    mask = torch.zeros(3, 4, dtype=torch.bool)
    mask[0, :3] = True  # 3 active, 9 inactive
    prune, regrow = tie_heavy((3, 4), gen), tie_heavy((3, 4), gen)
    new = update_mask(mask, prune, regrow, count)
    assert torch.equal(new, update_reference(mask, prune, regrow, count))
    assert new.sum() == 3 and not (new & mask).any()  # all 3 swapped out
    full = torch.ones(3, 4, dtype=torch.bool)
    assert torch.equal(update_mask(full, prune, regrow, count), full)


def test_update_mask_bad_inputs():
    mask = torch.ones(2, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="count"):
        update_mask(mask, torch.zeros(2, 2), torch.zeros(2, 2), -1)
    with pytest.raises(ValueError, match="shape"):
        update_mask(mask, torch.zeros(4), torch.zeros(2, 2), 1)


def whole_vector_reference(masks, weights, masked, full, count, gamma, variant):
    """The released rule with Python loops: per task, every masked layer flattened (row-major,
    in dict order) into one list of entries; one ranking over that list picks the ``count``
    active entries to prune (lowest ``gamma*h*g + g**2`` or ``+ |w|``) and the ``count``
    inactive ones to regrow (highest ``h*G``); ties go to the lower position in the list."""
    names = list(masks)
    tasks = masks[names[0]].shape[0]
    entries = [(n, j) for n in names for j in range(masks[n][0].numel())]
    flat = {n: (masks[n].flatten(1).tolist(), masked[n].flatten(1).tolist(),
                full[n].flatten(1).tolist(), weights[n].flatten().tolist()) for n in names}
    new = {n: masks[n].clone() for n in names}
    for t in range(tasks):
        prune, regrow = [], []
        for pos, (n, j) in enumerate(entries):
            m, g, big_g, w = flat[n]
            h = sum(g[i][j] for i in range(tasks)) / tasks
            second = g[t][j] ** 2 if variant == "F" else abs(w[j])
            if m[t][j]:
                prune.append((gamma * h * g[t][j] + second, pos))
            else:
                regrow.append((-h * big_g[t][j], pos))
        k = min(count, len(prune), len(regrow))
        for keep, picked in ((False, sorted(prune)[:k]), (True, sorted(regrow)[:k])):
            for _, pos in picked:
                n, j = entries[pos]
                new[n][t].view(-1)[j] = keep
    return new


def dyadic(shape, gen):
    """Tie-heavy values that float32 and Python floats add and multiply exactly (multiples of
    1/4), so the reference's ranking is the one to expect, ties included."""
    return torch.randint(-12, 13, shape, generator=gen).float() / 4


@pytest.mark.parametrize("variant", ["F", "M"])
@pytest.mark.parametrize("count", [0, 1, 5, 17, 1000])
@pytest.mark.parametrize("seed", range(3))
def test_update_task_masks_whole_vector_matches_one_ranking_per_task(variant, count, seed):
    gen = torch.Generator().manual_seed(seed)
    shapes, tasks, gamma = {"l0": (4, 5), "l1": (6, 3), "l2": (3, 3)}, 4, 10.0
    masks = random_masks(shapes, {"l0": 0.6, "l1": 0.5, "l2": 0.8}, tasks, gen)
    weights = {n: dyadic(s, gen) for n, s in shapes.items()}
    full = {n: dyadic((tasks, *s), gen) for n, s in shapes.items()}
    masked = {n: full[n] * masks[n] for n in shapes}
    before = {n: m.clone() for n, m in masks.items()}
    new = update_task_masks(masks, weights, masked, full, count, gamma, variant)
    expected = whole_vector_reference(masks, weights, masked, full, count, gamma, variant)
    for n in shapes:
        assert torch.equal(masks[n], before[n])
        assert torch.equal(new[n], expected[n]), n
    total = sum(new[n].flatten(1).sum(1) for n in shapes)
    assert torch.equal(total, sum(masks[n].flatten(1).sum(1) for n in shapes))
    flips = sum((new[n] ^ masks[n]).flatten(1).sum(1) for n in shapes)
    assert flips.max() <= 2 * count


def test_whole_vector_moves_density_between_layers():
    # Task 0 has one active and one inactive entry in layers a and b; task 1 is dense (nothing
    # to change). Task 0 prunes a's active entry (|w| 0 < 5) and regrows b's inactive one
    # (h*G 2 > 0.125): layer a loses its density to b. Per layer, each swaps its own pair.
    masks = {"a": torch.tensor([[[True, False]], [[True, True]]]),
             "b": torch.tensor([[[True, False]], [[True, True]]])}
    weights = {"a": torch.tensor([[0.0, 0.0]]), "b": torch.tensor([[5.0, 0.0]])}
    full = {"a": torch.tensor([[[1.0, 0.5]]] * 2), "b": torch.tensor([[[1.0, 2.0]]] * 2)}
    masked = {n: full[n] * masks[n] for n in masks}
    whole = update_task_masks(masks, weights, masked, full, 1, 0.0, "M")
    assert whole["a"][0].tolist() == [[False, False]] and whole["b"][0].tolist() == [[True, True]]
    layer = update_task_masks(masks, weights, masked, full, 1, 0.0, "M", scope="layer")
    assert layer["a"][0].tolist() == [[False, True]] and layer["b"][0].tolist() == [[False, True]]
    for new in (whole, layer):
        assert all(bool(new[n][1].all()) for n in new)


@pytest.mark.parametrize("variant", ["F", "M"])
def test_update_task_masks_layer_scope_matches_loops(variant):
    gen = torch.Generator().manual_seed(7)
    shapes, tasks, gamma, count = {"l0": (4, 5), "l1": (6, 3)}, 3, 10.0, 2
    masks = random_masks(shapes, {"l0": 0.6, "l1": 0.5}, tasks, gen)
    weights = {n: torch.randn(s, generator=gen) for n, s in shapes.items()}
    full = {n: tie_heavy((tasks, *s), gen) for n, s in shapes.items()}
    masked = {n: full[n] * masks[n] for n in shapes}  # zero outside each task's mask
    before = {n: m.clone() for n, m in masks.items()}
    new = update_task_masks(masks, weights, masked, full, count, gamma, variant, scope="layer")
    for n in shapes:
        assert torch.equal(masks[n], before[n])
        assert torch.equal(new[n].flatten(1).sum(1), masks[n].flatten(1).sum(1))
        h = sum(masked[n][i] for i in range(tasks)) / tasks
        for i in range(tasks):
            g = masked[n][i]
            second = g * g if variant == "F" else weights[n].abs()
            expect = update_reference(masks[n][i], gamma * h * g + second, h * full[n][i], count)
            assert torch.equal(new[n][i], expect)


def test_update_task_masks_regrows_by_unmasked_gradient():
    # Complementary masks, same unmasked gradient G: h = G / 2 everywhere. The masked gradient
    # of a task is zero where its mask is off, so regrowing by it would tie (index 3 for task 0);
    # h * G picks task 0's largest agreement, index 4.
    masks = {"l": torch.tensor([[True, True, True, False, False, False],
                                [False, False, False, True, True, True]])}
    weights = {"l": torch.tensor([3.0, 1.0, 2.0, 0.0, 0.0, 0.0])}
    full = {"l": torch.tensor([[1.0, 1.0, 1.0, 0.5, 2.0, 1.0]] * 2)}
    masked = {"l": full["l"] * masks["l"]}
    new = update_task_masks(masks, weights, masked, full, 1, 1.0, "M")["l"]
    # Task 0 prunes index 1 (scores 3.5, 1.5, 2.5); task 1 prunes index 3 (0.125, 2, 0.5) and
    # regrows index 0 (all 0.5: a tie, lowest index).
    assert new[0].tolist() == [True, False, True, False, True, False]
    assert new[1].tolist() == [True, False, False, False, True, True]


def test_update_task_masks_r_keeps_masks_and_rejects_unknown():
    masks = {"l": torch.tensor([[True, False], [False, True]])}
    out = update_task_masks(masks, {}, {}, {}, 5, 10.0, "R")
    assert torch.equal(out["l"], masks["l"]) and out["l"] is not masks["l"]
    with pytest.raises(ValueError, match=r"harmodt\.variant"):
        update_task_masks(masks, {}, {}, {}, 5, 10.0, "Q")
    with pytest.raises(ValueError, match=r"harmodt\.mask_scope"):
        update_task_masks(masks, {}, {}, {}, 5, 10.0, "F", scope="model")


# --------------------------------------------------------------------------- merging


@pytest.mark.parametrize("thres", [1, 2, 3, 5])
def test_merged_mask_vote(thres):
    masks = torch.rand(5, 4, 3, generator=torch.Generator().manual_seed(thres)) < 0.5
    merged = merged_mask(masks, thres)
    for r in range(4):
        for c in range(3):
            votes = sum(bool(masks[t, r, c]) for t in range(5))
            assert bool(merged[r, c]) == (votes >= thres)


@pytest.mark.parametrize("thres", [0, 6])
def test_merged_mask_rejects_bad_threshold(thres):
    with pytest.raises(ValueError, match=r"harmodt\.merge_thres"):
        merged_mask(torch.ones(5, 2, 2, dtype=torch.bool), thres)


# ------------------------------------------------------------------ the transformer


def tiny_transformer() -> Transformer:
    torch.manual_seed(0)
    return Transformer(embed_dim=8, n_layer=2, n_head=2, mlp_ratio=2, dropout=0.0).eval()


def test_mask_shapes_names_every_block_linear():
    shapes = mask_shapes(tiny_transformer())
    assert shapes["blocks.0.attn.qkv"] == (24, 8)
    assert shapes["blocks.1.mlp.proj"] == (8, 16)
    assert len(shapes) == 8


def test_apply_masks_forward_equals_dense_with_masked_weights():
    model = tiny_transformer()
    shapes = mask_shapes(model)
    densities = erk_densities(shapes, 0.5)
    masks = random_masks(shapes, densities, 3, torch.Generator().manual_seed(1))
    apply_masks(model, masks)
    x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(2))

    def dense_reference(task: int) -> torch.Tensor:
        ref = copy.deepcopy(model)
        with torch.no_grad():
            for name, linear in ref.linears():
                linear.set_masks(None)
                linear.weight.mul_(masks[name][task])
        return ref(x)

    with torch.no_grad():
        refs = [dense_reference(t) for t in range(3)]
        for t in range(3):
            torch.testing.assert_close(model(x, route=Route(mask=t)), refs[t])
        mixed = model(x, route=Route(mask=torch.tensor([2, 0])))
        torch.testing.assert_close(mixed, torch.stack([refs[2][0], refs[0][1]]))
        assert not torch.allclose(refs[0], model(x))  # the masks do change the output


def test_apply_masks_reports_every_problem():
    model = tiny_transformer()
    good = torch.ones(2, 24, 8, dtype=torch.bool)
    bad = {"blocks.0.attn.qkv": good, "blocks.9.mlp.fc": good,
           "blocks.0.attn.proj": torch.ones(2, 8, 9, dtype=torch.bool),
           "blocks.0.mlp.fc": torch.ones(16, 8, dtype=torch.bool)}
    with pytest.raises(ValueError) as err:
        apply_masks(model, bad)
    text = str(err.value)
    assert "blocks.9.mlp.fc" in text and "blocks.0.attn.proj" in text and "blocks.0.mlp.fc" in text
    assert all(linear.masks is None for _, linear in model.linears())  # nothing applied
