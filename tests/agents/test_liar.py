"""LIAR: reconstruction math against slow references, physical removal, criteria, selection."""

import copy
import dataclasses

import numpy as np
import pytest
import torch

from orl.agents import DataSpec, build_agent
from orl.agents.liar import (
    ActivationStats,
    PruneConfig,
    liar_reconstruction,
    prune_agent,
    relative_output_error,
    select_units,
    unit_scores,
)
from orl.agents.liar.units import block_sites
from orl.config.experiment import AgentConfig, ModelConfig
from orl.datasets.sampler import SamplerConfig, SegmentSampler
from orl.datasets.store import TrajectoryStore
from orl.model.layers import Route


# ----------------------------------------------------------------------------- the math
def stats_of(a: torch.Tensor) -> ActivationStats:
    stats = ActivationStats.zeros(a.shape[1])
    stats.update(a[: len(a) // 2])
    stats.update(a[len(a) // 2:])  # accumulation over two batches
    return stats


def reference_reconstruction(w, b, a, keep, ridge):
    """Slow and obvious: ridge regression with an intercept by augmented least squares on the
    raw activations (numpy), then fold the pruned columns into the kept ones."""
    w, b, a = w.double().numpy(), b.double().numpy(), a.double().numpy()
    keep = keep.numpy()
    drop = np.setdiff1d(np.arange(a.shape[1]), keep)
    a_k, a_p = a[:, keep], a[:, drop]
    centred = a_k - a_k.mean(0)
    lam = ridge * centred.var(0).mean()
    lhs = np.vstack([centred, np.sqrt(lam * len(a)) * np.eye(len(keep))])
    rhs = np.vstack([a_p - a_p.mean(0), np.zeros((len(keep), len(drop)))])
    q = np.linalg.lstsq(lhs, rhs, rcond=None)[0].T  # (|P|, |K|)
    intercept = a_p.mean(0) - q @ a_k.mean(0)
    return w[:, keep] + w[:, drop] @ q, b + w[:, drop] @ intercept


def test_reconstruction_matches_slow_least_squares():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 10, generator=g) @ torch.randn(10, 10, generator=g) + 0.5
    w, b = torch.randn(6, 10, generator=g), torch.randn(6, generator=g)
    keep = torch.tensor([0, 2, 3, 7, 9])
    new_w, new_b = liar_reconstruction(w.double(), b.double(), stats_of(a), keep, ridge=0.1)
    ref_w, ref_b = reference_reconstruction(w, b, a, keep, ridge=0.1)
    np.testing.assert_allclose(new_w.numpy(), ref_w, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(new_b.numpy(), ref_b, rtol=1e-8, atol=1e-10)


def test_exact_linear_combination_is_recovered_to_precision():
    g = torch.Generator().manual_seed(1)
    a_k = torch.randn(200, 5, generator=g, dtype=torch.float64)
    a_p = a_k @ torch.randn(5, 3, generator=g, dtype=torch.float64) + 2.0  # affine in a_K
    a = torch.cat([a_k, a_p], 1)
    w, b = torch.randn(4, 8, generator=g, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    keep, stats = torch.arange(5), stats_of(a)
    new_w, new_b = liar_reconstruction(w, b, stats, keep, ridge=1e-12)
    torch.testing.assert_close(a_k @ new_w.T + new_b, a @ w.T + b, rtol=1e-9, atol=1e-9)
    assert relative_output_error(w, b, new_w, new_b, keep, stats) < 1e-12
    assert relative_output_error(w, b, w[:, keep], b, keep, stats) > 0.1  # dropping alone hurts


def test_relative_output_error_matches_direct_computation():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(100, 6, generator=g, dtype=torch.float64) + 1.0
    w, b = torch.randn(3, 6, generator=g, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    keep = torch.tensor([1, 4])
    new_w, new_b = torch.randn(3, 2, generator=g, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    y = a @ w.T + b
    direct = ((y - (a[:, keep] @ new_w.T + new_b)) ** 2).sum(1).mean() / ((y - y.mean(0)) ** 2).sum(1).mean()
    assert relative_output_error(w, b, new_w, new_b, keep, stats_of(a)) == pytest.approx(float(direct))


def test_ridge_solve_is_stable_on_rank_deficient_data():
    g = torch.Generator().manual_seed(3)
    base = torch.randn(50, 3, generator=g, dtype=torch.float64)
    # kept features: duplicated columns, a constant and an all-zero (dead) one -> singular C_KK
    a_k = torch.cat([base, base, torch.ones(50, 1), torch.zeros(50, 1)], 1).double()
    a = torch.cat([a_k, base @ torch.randn(3, 2, generator=g, dtype=torch.float64)], 1)
    w, b = torch.randn(4, 10, generator=g, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    keep = torch.arange(8)
    new_w, new_b = liar_reconstruction(w, b, stats_of(a), keep, ridge=1e-6)
    assert torch.isfinite(new_w).all() and torch.isfinite(new_b).all()
    assert relative_output_error(w, b, new_w, new_b, keep, stats_of(a)) < 1e-8
    with pytest.raises(ValueError, match="ridge"):
        liar_reconstruction(w, b, stats_of(a), keep, ridge=0.0)


# ----------------------------------------------------------------------- tiny models
def make_agent(name="mtdt", n_head=2, embed_dim=8, n_layer=2):
    rng = np.random.default_rng(0)
    n, length = 2 * 4 * 10, 10
    obs = rng.normal(size=(n, 3))
    store = TrajectoryStore(
        observations=obs, actions=np.tanh(obs[:, 1:]), rewards=rng.uniform(size=n),
        terminals=np.zeros(n, bool), timeouts=np.zeros(n, bool),
        episode_starts=np.arange(n // length + 1) * length,
        episode_task=np.repeat([0, 1], 4), task_names=["a", "b"],
    )
    sampler_cfg = SamplerConfig(context_len=4, batch_size=32)
    sampler = SegmentSampler(store, sampler_cfg, seed=0)
    spec = DataSpec(obs_dim=3, act_dim=2, task_names=["a", "b"], rtg_scale=1.0,
                    target_returns=[3.0, 3.0])
    torch.manual_seed(0)
    model_cfg = ModelConfig(embed_dim=embed_dim, n_layer=n_layer, n_head=n_head, mlp_ratio=2,
                            dropout=0.0, max_timestep=12)
    agent = build_agent(AgentConfig(name=name), model_cfg, sampler_cfg, spec, *sampler.state_stats)
    with torch.no_grad():  # trained-looking biases, so intercepts matter
        for _, lin in agent.model.transformer.linears():
            lin.bias.normal_(0, 0.1)
    return agent.eval(), [sampler.sample() for _ in range(3)]


def outputs(agent, batches, route=None):
    with torch.no_grad():
        return torch.cat([agent.forward_batch(b, route) for b in batches])


def duplicate_half_of_the_units(agent, shrink=0.05):
    """Units of the second half copy the first half (same inputs, so same activations) and read
    out with ``shrink`` times the weights: exact linear combinations that Wanda ranks last."""
    with torch.no_grad():
        for block in agent.model.transformer.blocks:
            fc, proj = block.mlp.fc, block.mlp.proj
            half = fc.out_features // 2
            fc.weight[half:], fc.bias[half:] = fc.weight[:half], fc.bias[:half]
            proj.weight[:, half:] = shrink * proj.weight[:, :half]
            qkv, attn = block.attn.qkv.weight.view(3, 2, block.attn.head_dim, -1), block.attn
            qkv[:, 1] = qkv[:, 0]
            bias = block.attn.qkv.bias.view(3, 2, -1)
            bias[:, 1] = bias[:, 0]
            cols = attn.proj.weight.view(attn.proj.out_features, 2, -1)
            cols[:, 1] = shrink * cols[:, 0]


def test_liar_recovers_a_model_whose_pruned_units_duplicate_kept_ones():
    agent, batches = make_agent()
    duplicate_half_of_the_units(agent)
    before = outputs(agent, batches)
    dropped = copy.deepcopy(agent)
    prune_agent(dropped, batches, PruneConfig(ratio=0.5, reconstruct="none"))
    report = prune_agent(agent, batches, PruneConfig(ratio=0.5, criterion="wanda", ridge=1e-9))
    assert agent.model.transformer.structure() == {"heads": [1, 1], "hidden": [8, 8]}
    liar_diff = (outputs(agent, batches) - before).abs().max()
    dropped_diff = (outputs(dropped, batches) - before).abs().max()
    assert liar_diff < 1e-6 and dropped_diff > 100 * liar_diff  # float32 precision vs real loss
    assert all(s.error < 1e-10 and s.error_dropped > 1e-3 for s in report.sites)


@pytest.mark.parametrize("criterion", ["magnitude", "wanda", "taylor"])
@pytest.mark.parametrize("reconstruct", ["none", "liar"])
def test_pruning_zero_percent_changes_nothing(criterion, reconstruct):
    agent, batches = make_agent()
    before, state = outputs(agent, batches), copy.deepcopy(agent.state_dict())
    report = prune_agent(agent, batches, PruneConfig(ratio=0.0, criterion=criterion,
                                                     reconstruct=reconstruct))
    assert report.params_after == report.params_before
    assert all(torch.equal(v, agent.state_dict()[k]) for k, v in state.items())
    assert torch.equal(outputs(agent, batches), before)


def test_removed_units_shrink_tensors_and_match_the_masked_unremoved_model():
    agent, batches = make_agent()
    g = torch.Generator().manual_seed(0)
    for _, lin in agent.model.transformer.linears():  # per-task masks (HarmoDT-style) follow
        lin.set_masks(torch.rand(2, *lin.weight.shape, generator=g) > 0.2)
    masked = copy.deepcopy(agent)
    with pytest.raises(ValueError, match="reconstruct none"):
        prune_agent(agent, batches, PruneConfig(ratio=0.5, reconstruct="liar"))
    report = prune_agent(agent, batches, PruneConfig(ratio=0.5, criterion="magnitude",
                                                     reconstruct="none"))
    for block in agent.model.transformer.blocks:
        head_dim = block.attn.head_dim
        assert block.attn.n_head == 1 and block.attn.qkv.weight.shape == (3 * head_dim, 8)
        assert block.attn.proj.weight.shape == (8, head_dim)
        assert block.mlp.fc.weight.shape == (8, 8) and block.mlp.proj.weight.shape == (8, 8)
        assert block.mlp.proj.masks.shape == (2, 8, 8)
    # the same units kept but not removed: the pruned units' proj columns masked out
    for site, pruned in zip(block_sites(masked.model.transformer), report.sites):
        dropped = torch.ones(site.proj.in_features, dtype=torch.bool)
        dropped[site.columns(torch.tensor(pruned.kept))] = False
        site.proj.masks[:, :, dropped] = False
    for task in (0, 1):
        torch.testing.assert_close(outputs(agent, batches, Route(mask=task)),
                                   outputs(masked, batches, Route(mask=task)))


def test_taylor_score_is_the_squared_loss_derivative_of_a_unit_scale():
    agent, batches = make_agent()
    agent.double()  # float64, so central differences are exact enough to compare with
    batch = batches[0]
    batch = dataclasses.replace(batch, states=batch.states.double(), actions=batch.actions.double(),
                                returns_to_go=batch.returns_to_go.double())
    scores = unit_scores(agent, block_sites(agent.model.transformer), [batch], "taylor")
    eps = 1e-5
    for site_index, unit in [(1, 0), (1, 13), (2, 1)]:  # neurons of block 0, a head of block 1
        losses = []
        for sign in (1, -1):
            probe = copy.deepcopy(agent)
            site = block_sites(probe.model.transformer)[site_index]
            with torch.no_grad():
                site.proj.weight[:, site.columns(torch.tensor([unit]))] *= 1 + sign * eps
                losses.append(float(probe.loss(batch)[0]))
        derivative = (losses[0] - losses[1]) / (2 * eps)
        assert float(scores[site_index][unit]) == pytest.approx(derivative**2, rel=1e-4)


def test_select_units_per_layer_and_global():
    scores = [torch.tensor([3.0, 1.0, 2.0, 4.0]), torch.tensor([0.1, 0.2])]
    assert [k.tolist() for k in select_units(scores, 0.5, "per-layer")] == [[0, 3], [1]]
    # global: the 3 lowest overall are 0.1, 0.2 (site 1) and 1.0, but site 1 keeps one unit
    assert [k.tolist() for k in select_units(scores, 0.5, "global")] == [[0, 3], [1]]
    assert [k.tolist() for k in select_units(scores, 0.0, "global")] == [[0, 1, 2, 3], [0, 1]]
    assert [len(k) for k in select_units(scores, 0.99, "per-layer")] == [1, 1]


@pytest.mark.parametrize("field, value, message", [
    ("ratio", 1.0, "ratio must be in"), ("ratio", -0.1, "ratio must be in"),
    ("criterion", "l1", "criterion must be one of magnitude, wanda, taylor"),
    ("reconstruct", "sparsegpt", "reconstruct must be one of"), ("scope", "block", "scope"),
    ("ridge", 0.0, "ridge"),
])
def test_bad_config_is_an_error_naming_it(field, value, message):
    with pytest.raises(ValueError, match=message):
        PruneConfig(**{field: value})


def test_global_scope_has_one_budget_per_unit_kind():
    agent, batches = make_agent(n_head=4, n_layer=3)
    report = prune_agent(agent, batches, PruneConfig(ratio=0.5, scope="global"))
    heads = agent.model.transformer.structure()["heads"]
    hidden = agent.model.transformer.structure()["hidden"]
    assert sum(heads) == 6 and sum(hidden) == 24 and min(heads) >= 1
    assert [s.units_after for s in report.sites] == [n for pair in zip(heads, hidden) for n in pair]


def test_data_dependent_pruning_needs_calibration_batches():
    agent, _ = make_agent()
    with pytest.raises(ValueError, match="calibration data"):
        prune_agent(agent, None, PruneConfig(criterion="wanda"))
    report = prune_agent(agent, None, PruneConfig(criterion="magnitude", reconstruct="none"))
    assert report.block_fraction_removed > 0.4 and report.sites[0].error is None


def test_bad_kept_units_and_structures_are_errors():
    agent, _ = make_agent()
    attn, transformer = agent.model.transformer.blocks[0].attn, agent.model.transformer
    with pytest.raises(ValueError, match="sorted, distinct"):
        attn.keep_heads(torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="keep 1 to 2 heads"):
        attn.keep_heads(torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match="one entry per layer"):
        transformer.resize(heads=[1], hidden=[4])
    transformer.resize(heads=[1, 2], hidden=[4, 16])
    assert transformer.structure() == {"heads": [1, 2], "hidden": [4, 16]}
