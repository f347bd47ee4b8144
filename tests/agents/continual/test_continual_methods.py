"""Baselines as plug-ins: penalties vs a slow reference, exact isolation, A-GEM projection."""

from dataclasses import replace

import pytest
import torch

from orl.agents.continual.agent import take_rows
from orl.agents.continual.runner import ReplaySampler
from orl.agents.dt import action_mse
from orl.datasets.sampler import SamplerConfig
from orl.datasets.store import TrajectoryStore
from orl.train import TrainConfig, Trainer

PLUS, MINUS = "ToySignPlus-v0", "ToySignMinus-v0"


class Fixed:
    """A sampler that always returns the same batch."""

    def __init__(self, batch):
        self.batch = batch

    def sample(self):
        return self.batch

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def train_stage(agent, sampler, stage, run_dir, steps=8):
    agent.start_stage(stage)
    cfg = TrainConfig(steps=steps, lr=0.02, warmup_steps=1, log_every=100, checkpoint_every=0,
                      device="cpu")
    Trainer(agent, sampler, cfg, run_dir / f"stage{stage}").fit()
    agent.method.end_stage(agent, stage, sampler)


def outputs(agent, batch, task):
    agent.eval()
    with torch.no_grad():
        out = agent.batch_actions(replace(batch, task=torch.full_like(batch.task, task)))
    agent.train()
    return out


@pytest.mark.parametrize("kind", ["l2", "ewc", "mas"])
def test_penalty_matches_a_slow_reference(toys, tmp_path, kind):
    cfg, agent, samplers = toys.tiny_agent(tmp_path, [PLUS, MINUS], kind, reg_coef=3.0)
    batch = samplers[0].sample()
    train_stage(agent, Fixed(batch), 0, tmp_path)
    shared = [(n, p) for n, p in agent.model.named_parameters() if not n.startswith("heads.")]
    anchor = {n: p.detach().clone() for n, p in shared}
    # reference importance: one sample at a time, mean over the 4 samples the method used
    agent.eval()
    omega = {n: torch.zeros_like(p) for n, p in shared}
    for i in range(4):
        one = take_rows(batch, torch.tensor([i]))
        pred = agent.batch_actions(one)
        if kind == "ewc":
            scalar = ((pred - one.actions) ** 2 * one.mask[..., None]).sum() / one.mask.sum()
        else:
            scalar = (pred ** 2 * one.mask[..., None]).sum() / one.mask.sum()
        grads = torch.autograd.grad(scalar, [p for _, p in shared], allow_unused=True)
        for (n, _), g in zip(shared, grads):
            if kind == "l2":
                omega[n] = torch.ones_like(omega[n])
            elif g is not None:
                omega[n] += (g ** 2 if kind == "ewc" else g.abs()) / 4
    agent.train()
    with torch.no_grad():
        for _, p in shared:
            p.add_(0.01 * torch.randn_like(p))
    expected = 3.0 / 2 * sum((omega[n] * (p - anchor[n]) ** 2).sum() for n, p in shared)
    assert float(expected.detach()) > 0
    torch.testing.assert_close(agent.method.penalty(agent), expected, rtol=1e-4, atol=1e-9)
    loss, metrics = agent.loss(samplers[1].sample())
    assert "penalty" in metrics


@pytest.mark.parametrize("kind, grows", [("l2", False), ("ewc", True), ("mas", True)])
def test_l2_weight_stays_one_while_importance_adds_up(toys, tmp_path, kind, grows):
    cfg, agent, samplers = toys.tiny_agent(tmp_path, [PLUS, MINUS, PLUS], kind)
    omegas = []
    for stage in range(2):
        train_stage(agent, samplers[stage], stage, tmp_path)
        omegas.append(torch.cat([getattr(agent.method, f"omega__{k}").flatten()
                                 for k in agent.method.names]))
    if grows:  # ewc, mas: the second stage's importance is added to the first's
        assert bool((omegas[1] >= omegas[0]).all()) and float(omegas[1].sum()) > float(omegas[0].sum())
    else:  # l2: one constant weight, however many stages
        assert bool((omegas[0] == 1).all()) and bool((omegas[1] == 1).all())


@pytest.mark.parametrize("method", ["packnet", "lora", "compoformer_grow", "compoformer_prune"])
def test_training_a_later_task_leaves_earlier_outputs_bit_identical(toys, tmp_path, method):
    cfg, agent, samplers = toys.tiny_agent(tmp_path, [PLUS, MINUS, PLUS], method)
    probe = samplers[0].sample()
    if method.startswith("compoformer"):
        agent.method.source[:] = torch.arange(3)  # every task grows
    train_stage(agent, samplers[0], 0, tmp_path)
    first = outputs(agent, probe, 0)
    train_stage(agent, samplers[1], 1, tmp_path)
    second = outputs(agent, probe, 1)
    assert torch.equal(outputs(agent, probe, 0), first)
    train_stage(agent, samplers[2], 2, tmp_path)
    assert torch.equal(outputs(agent, probe, 0), first)
    assert torch.equal(outputs(agent, probe, 1), second)
    assert not torch.equal(outputs(agent, probe, 2), second)  # the new task did learn


def test_packnet_masks_partition_the_weights(toys, tmp_path):
    cfg, agent, samplers = toys.tiny_agent(tmp_path, [PLUS, MINUS], "packnet", prune_keep=0.5)
    for stage in range(2):
        train_stage(agent, samplers[stage], stage, tmp_path)
    owners = agent.method.owners()
    total = sum(owner.numel() for owner in owners)
    assert sum(int((owner == 0).sum()) for owner in owners) == round(0.5 * total)
    for layer, owner in zip(agent.method.linears, owners):
        assert bool((owner >= 0).all())  # the last stage keeps every free weight
        assert torch.equal(layer.masks[0], owner == 0)
        assert bool(layer.masks[1].all())


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_packnet_keeps_the_largest_free_weights(toys, tmp_path, scope):
    cfg, agent, samplers = toys.tiny_agent(tmp_path, [PLUS, MINUS, PLUS], "packnet", prune_keep=0.3,
                                           prune_scope=scope)
    packnet = agent.method
    torch.manual_seed(1)
    with torch.no_grad():
        for k, layer in enumerate(packnet.linears):  # the layers' scales differ: a per-layer
            layer.weight.copy_(torch.randn_like(layer.weight) * (k + 1))  # rule would differ
    packnet.owners()[0][:2] = 0  # two weights an earlier stage owns
    before = [layer.weight.detach().clone() for layer in packnet.linears]
    packnet.prune(1)
    # slow reference: rank the free weights of all linears (global) or of each (layer) by
    # magnitude, keep the top 30%
    free = [(float(w.flatten()[i].abs()), k, i) for k, w in enumerate(before) for i in range(w.numel())
            if not (k == 0 and i < 2 * w.shape[1])]
    groups = [free] if scope == "global" else [[f for f in free if f[1] == k] for k in range(4)]
    expected = {(k, i) for group in groups
                for _, k, i in sorted(group, reverse=True)[:round(0.3 * len(group))]}
    got = {(k, i) for k, owner in enumerate(packnet.owners())
           for i in torch.nonzero(owner.flatten() == 1).flatten().tolist()}
    assert got == expected
    for layer, owner, w in zip(packnet.linears, packnet.owners(), before):
        assert torch.equal(layer.weight, torch.where(owner >= 0, w, torch.zeros_like(w)))


def test_replay_sampler_mixes_earlier_stages(toys, tmp_path):
    cfg, agent, samplers = toys.tiny_agent(tmp_path, [PLUS, MINUS, PLUS], "replay")
    store = TrajectoryStore.concatenate([s.store for s in samplers])
    sampler = ReplaySampler(store, SamplerConfig(context_len=3, batch_size=8), 0, 2, 0.25)
    task = sampler.sample().task
    assert task[:6].eq(2).all() and task[6:].lt(2).all()
    alone = ReplaySampler(samplers[0].store, SamplerConfig(context_len=3, batch_size=8), 0, 0, 0.5)
    assert alone.sample().task.eq(0).all()  # nothing to replay in the first stage


def test_agem_gradient_is_the_projection(toys, tmp_path):
    cfg, agent, samplers = toys.tiny_agent(tmp_path, [PLUS, MINUS], "agem")
    train_stage(agent, samplers[0], 0, tmp_path)
    agent.start_stage(1)
    store = TrajectoryStore.concatenate([s.store for s in samplers])
    batch = ReplaySampler(store, SamplerConfig(context_len=3, batch_size=8), 0, 1, 0.5).sample()
    params = [p for p in agent.parameters() if p.requires_grad]
    current, memory = take_rows(batch, batch.task == 1), take_rows(batch, batch.task == 0)
    g = torch.autograd.grad(action_mse(agent.batch_actions(current), current), params,
                            allow_unused=True)
    g_ref = torch.autograd.grad(action_mse(agent.batch_actions(memory), memory), params,
                                allow_unused=True)
    flat = lambda grads: torch.cat([(x if x is not None else torch.zeros_like(p)).flatten()
                                    for x, p in zip(grads, params)])
    g, g_ref = flat(g), flat(g_ref)
    expected = g - min(0.0, float(g @ g_ref)) / float(g_ref @ g_ref) * g_ref
    loss, metrics = agent.loss(batch)
    got = flat(torch.autograd.grad(loss, params, allow_unused=True))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(loss.detach(), metrics["action_mse"])



def kept_by_stage(stage, keep=0.5, stages=3):
    """Weights PackNet stage ``stage`` keeps in the tiny model's block linears (qkv 24 x 8,
    attention proj 8 x 8, MLP 32 x 8 and 8 x 32: 768): ``keep`` of the still-free ones, all of
    them in the last stage."""
    free = 192 + 64 + 256 + 256
    for s in range(stage + 1):
        kept = free if s == stages - 1 else round(keep * free)
        free -= kept
    return kept


@pytest.mark.parametrize("method", ["finetune", "ewc", "mtl", "packnet", "lora",
                                    "compoformer_grow", "compoformer_prune"])
def test_added_parameters_counted_by_hand(toys, tmp_path, method):
    """Tiny model (embed 8, one block, 1-d actions): a task's own action head has 8 + 1
    parameters, a LoRA adapter rank 2 x (8 + 24) on the qkv projection, a CompoFormer MLP head
    (16 -> 8, LayerNorm, -> 1) 161 and its query/key maps 2 x (384 x 8 + 8), counted from the third task on
    (the second has only one earlier policy to weigh); a composed task adds nothing."""
    cfg, agent, samplers = toys.tiny_agent(tmp_path, [PLUS, MINUS, PLUS], method)
    if method.startswith("compoformer"):
        agent.method.source[:] = torch.arange(3)  # every task grows
    for stage in range(3):
        train_stage(agent, samplers[stage], stage, tmp_path)
    head, adapter, mlp_head, query_key = 9, 2 * (8 + 24), 16 * 8 + 8 + 2 * 8 + 8 + 1, 2 * (384 * 8 + 8)
    expected = {
        "finetune": [head, head], "ewc": [head, head], "mtl": [head, head],
        "packnet": [head + kept_by_stage(1), head + kept_by_stage(2)],
        "lora": [head + adapter, head + adapter],
        "compoformer_grow": [adapter + mlp_head, adapter + mlp_head + query_key],
        "compoformer_prune": [kept_by_stage(1) + mlp_head, kept_by_stage(2) + mlp_head + query_key],
    }[method]
    assert [agent.method.added_parameters(agent, t) for t in (1, 2)] == expected
    if method.startswith("compoformer"):
        agent.method.source[2] = 0  # task 2 composed: it reuses task 0's policy
        assert agent.method.added_parameters(agent, 2) == 0
