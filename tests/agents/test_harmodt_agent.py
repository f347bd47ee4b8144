"""HarmoDT wired into the one Trainer: masked inner level, mask updates, checkpoints."""

from dataclasses import replace

import h5py
import numpy as np
import pytest
import torch

from orl.agents import DataSpec, build_agent
from orl.agents.dt import action_mse
from orl.agents.harmodt.agent import MaskUpdate
from orl.api import load_trained_agent
from orl.cli import train_agent_main
from orl.config import ConfigError, load_config
from orl.config.experiment import AgentConfig, ExperimentConfig, ModelConfig
from orl.datasets.sampler import SamplerConfig, SegmentSampler
from orl.datasets.store import TrajectoryStore
from orl.model.layers import Route
from orl.train import Callback, TrainConfig, Trainer


def two_task_store(seed=0, length=12, episodes=3):
    rng = np.random.default_rng(seed)
    n = 2 * episodes * length
    obs = rng.normal(size=(n, 4))
    return TrajectoryStore(
        observations=obs, actions=np.tanh(obs[:, :2]), rewards=rng.uniform(0, 1, n),
        terminals=np.zeros(n, bool), timeouts=np.zeros(n, bool),
        episode_starts=np.arange(2 * episodes + 1) * length,
        episode_task=np.repeat([0, 1], episodes), task_names=["a", "b"],
    )


def harmodt(variant="F", mask_interval=5, prompt_len=2):
    store = two_task_store()
    sampler_cfg = SamplerConfig(context_len=4, batch_size=8, task_mode="round_robin",
                                prompt_len=prompt_len)
    sampler = SegmentSampler(store, sampler_cfg, seed=0)
    spec = DataSpec(4, 2, store.task_names, 1.0, [5.0, 5.0])
    agent_cfg = AgentConfig(name="harmodt")
    agent_cfg.harmodt.variant, agent_cfg.harmodt.mask_interval = variant, mask_interval
    agent_cfg.harmodt.eta_max = 50
    torch.manual_seed(0)
    agent = build_agent(agent_cfg, ModelConfig(embed_dim=16, n_layer=1, n_head=2, max_timestep=20),
                        sampler_cfg, spec, *sampler.state_stats,
                        sampler.best_prompts() if prompt_len else None)
    return agent, sampler


class CheckMaskedOutUnchanged(Callback):
    """Snapshots weights and masks just before every optimizer step; after it, checks that
    no weight outside the trained task's mask moved."""

    every = 1

    def __init__(self, agent):
        self.agent, self.checked = agent, 0

    def on_train_start(self, trainer):
        trainer.optimizer.register_step_pre_hook(self.snapshot)

    def snapshot(self, *_):
        tasks = self.agent.last_task  # round robin: one task, known on the host
        tasks = torch.unique(tasks) if isinstance(tasks, torch.Tensor) else torch.tensor([tasks])
        self.before = {n: (lin.weight.detach().clone(), lin.masks[tasks].any(dim=0))
                       for n, lin in self.agent.masked_linears().items()}

    def on_step(self, trainer, step):
        for name, lin in self.agent.masked_linears().items():
            weight, mask = self.before[name]
            assert torch.equal(lin.weight[~mask], weight[~mask]), name
            assert not torch.equal(lin.weight[mask], weight[mask]), name  # inside: trained
        self.checked += 1


def test_weights_outside_the_task_mask_never_move(tmp_path):
    agent, sampler = harmodt(variant="F", mask_interval=4)
    check = CheckMaskedOutUnchanged(agent)
    cfg = TrainConfig(steps=12, lr=1e-2, weight_decay=0.1, warmup_steps=1, log_every=4,
                      checkpoint_every=0)
    Trainer(agent, sampler, cfg, tmp_path, callbacks=[check]).fit()
    assert check.checked == 12


def test_mixed_task_batches_move_only_weights_in_their_tasks_masks(tmp_path):
    agent, sampler = harmodt(variant="R")
    sampler.config.task_mode = "mixed"
    check = CheckMaskedOutUnchanged(agent)
    cfg = TrainConfig(steps=6, lr=1e-2, warmup_steps=1, log_every=3, checkpoint_every=0)
    Trainer(agent, sampler, cfg, tmp_path, callbacks=[check]).fit()
    assert isinstance(agent.last_task, torch.Tensor) and len(torch.unique(agent.last_task)) == 2


def test_single_task_batches_carry_their_task_and_the_loss_is_one_graph():
    """Round-robin batches name their task on the host, so the HarmoDT loss needs no host sync
    (torch.unique) and compiles to one graph: the step can be captured (CUDA graphs)."""
    agent, sampler = harmodt()
    batch = sampler.sample()
    assert batch.task_id == 0 and torch.equal(batch.task, torch.zeros(8, dtype=torch.long))
    assert sampler.sample().task_id == 1 and sampler.sample(task=1).task_id == 1
    torch.manual_seed(1)  # the same dropout draws
    expected, _ = agent.loss(batch)
    compiled = torch.compile(agent.loss, fullgraph=True, backend="eager")
    torch.manual_seed(1)
    torch.testing.assert_close(compiled(batch)[0], expected)
    assert agent.last_task == 0
    mixed = replace(batch, task_id=None)
    with pytest.raises(Exception, match="unique|data-dependent|Unsupported"):
        torch.compile(agent.loss, fullgraph=True, backend="eager")(mixed)


@pytest.mark.parametrize("scope", ["whole", "layer"])
def test_mask_updates_keep_sparsity_and_change_masks(tmp_path, scope):
    """Each task keeps its number of active weights; over its whole mask (the default) the
    density moves between layers, per layer it does not."""
    agent, sampler = harmodt(variant="F", mask_interval=3)
    agent.harmodt.mask_scope = scope
    before = {n: m.clone() for n, m in agent.task_masks().items()}
    cfg = TrainConfig(steps=9, lr=1e-2, warmup_steps=1, log_every=3, checkpoint_every=0)
    Trainer(agent, sampler, cfg, tmp_path).fit()
    after = agent.task_masks()
    assert any(not torch.equal(before[n], after[n]) for n in before)
    per_task = [sum(m.sum(dim=(1, 2)) for m in masks.values()) for masks in (before, after)]
    torch.testing.assert_close(per_task[1], per_task[0])
    moved = [not torch.equal(after[n].sum(dim=(1, 2)), before[n].sum(dim=(1, 2))) for n in before]
    assert any(moved) == (scope == "whole")


def test_variant_r_keeps_its_random_masks(tmp_path):
    agent, sampler = harmodt(variant="R", mask_interval=2)
    before = {n: m.clone() for n, m in agent.task_masks().items()}
    Trainer(agent, sampler, TrainConfig(steps=6, warmup_steps=1, log_every=3, checkpoint_every=0),
            tmp_path).fit()
    assert all(torch.equal(before[n], m) for n, m in agent.task_masks().items())
    assert len(agent.callbacks()) == 1


def test_masks_differ_between_tasks_and_follow_erk():
    agent, _ = harmodt()
    masks = agent.task_masks()
    total = sum(m[0].numel() for m in masks.values())
    active = sum(int(m[0].sum()) for m in masks.values())
    assert abs(active / total - 0.8) < 0.01
    assert any(not torch.equal(m[0], m[1]) for m in masks.values())


def test_merged_mask_follows_the_task_masks(tmp_path):
    agent, sampler = harmodt(variant="F", mask_interval=3)
    Trainer(agent, sampler, TrainConfig(steps=6, warmup_steps=1, log_every=3, checkpoint_every=0),
            tmp_path).fit()
    assert agent.merge_thres == 1  # half of 2 tasks, rounded up
    for lin in agent.masked_linears().values():
        assert lin.masks.shape[0] == 3
        assert torch.equal(lin.masks[2], lin.masks[0] | lin.masks[1])  # kept by >= 1 task


def test_task_agnostic_policy_acts_with_the_merged_mask():
    agent, _ = harmodt()
    agent.eval()
    obs, reward = np.zeros((2, 4), np.float32), np.zeros(2, np.float32)
    actions = {}
    for agnostic in (False, True):
        policy = agent.policy(task_agnostic=agnostic)
        policy.reset(2, tasks=["a", "b"])
        actions[agnostic] = policy.act(obs, reward)
    with torch.no_grad():
        for lin in agent.masked_linears().values():  # task masks := merged mask
            lin.masks[:2] = lin.masks[2]
    policy = agent.policy()
    policy.reset(2, tasks=["a", "b"])
    np.testing.assert_allclose(policy.act(obs, reward), actions[True], atol=1e-6)
    assert not np.allclose(actions[False], actions[True])


def write_task(path, seed):
    rng = np.random.default_rng(seed)
    n = 40
    with h5py.File(path, "w") as f:
        obs = rng.normal(size=(n, 3))
        f["observations"], f["actions"] = obs, np.tanh(obs[:, :1])
        f["rewards"], f["terminals"] = rng.normal(size=n), np.zeros(n, bool)
        f["timeouts"] = np.arange(n) % 10 == 9


def two_file_args(tmp_path, name, every, steps, *extra):
    """train-agent arguments for a tiny HarmoDT on two D4RL-format task files."""
    write_task(tmp_path / "task-a.hdf5", 0)
    write_task(tmp_path / "task-b.hdf5", 1)
    return [
        f"data.datasets=[{tmp_path / 'task-a.hdf5'},{tmp_path / 'task-b.hdf5'}]",
        "agent.name=harmodt", f"agent.harmodt.mask_interval={every}", "agent.harmodt.eta_max=20",
        "model.embed_dim=16", "model.n_layer=1", "model.n_head=1", "sampler.context_len=4",
        "sampler.batch_size=4", "sampler.task_mode=round_robin", f"train.steps={steps}",
        f"train.log_every={every}", f"train.checkpoint_every={every}", "train.warmup_steps=1",
        "run.logger=csv", f"run.out_dir={tmp_path}", f"run.name={name}", *extra,
    ]


def test_harmodt_end_to_end_through_train_agent(tmp_path):
    assert train_agent_main(two_file_args(tmp_path, "h", 3, 6, "sampler.prompt_len=2")) == 0
    assert train_agent_main(["--resume", str(tmp_path / "h"), "train.steps=9"]) == 0
    agent = load_trained_agent(tmp_path / "h", device="cpu")
    assert agent.spec.task_names == ["task-a", "task-b"]
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "h" / "checkpoints" / "final" / "model.safetensors")
    for name, lin in agent.masked_linears().items():
        assert torch.equal(lin.masks, saved[f"model.transformer.{name}.masks"])


@pytest.mark.parametrize(
    "override, key",
    [("agent.harmodt.variant=X", "agent.harmodt.variant"),
     ("agent.harmodt.sparsity=1.0", "agent.harmodt.sparsity"),
     ("agent.harmodt.mask_interval=0", "agent.harmodt.mask_interval"),
     ("agent.harmodt.merge_thres=-1", "agent.harmodt.merge_thres")],
)
def test_bad_harmodt_config(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(ExperimentConfig, None, ["agent.name=harmodt", override])


def build_on_two_tasks(agent_cfg):
    """``build_agent`` for a tiny model on the two-task store (for config errors)."""
    sampler = SegmentSampler(two_task_store(), SamplerConfig(context_len=4), seed=0)
    return build_agent(agent_cfg, ModelConfig(embed_dim=16, n_layer=1, n_head=1),
                       SamplerConfig(context_len=4), DataSpec(4, 2, ["a", "b"], 1.0, [1.0, 1.0]),
                       *sampler.state_stats)


def test_merge_thres_above_the_task_count():
    agent_cfg = AgentConfig(name="harmodt")
    agent_cfg.harmodt.merge_thres = 3
    with pytest.raises(ValueError, match="merge_thres=3 exceeds the number of tasks"):
        build_on_two_tasks(agent_cfg)


def test_other_agents_have_no_task_agnostic_mode():
    agent = build_on_two_tasks(AgentConfig(name="mtdt"))
    with pytest.raises(ValueError, match="no task-agnostic mode"):
        agent.policy(task_agnostic=True)


def test_harmodt_needs_two_tasks():
    store = two_task_store()
    one = store.select_episodes(store.task_episodes(0))
    one.task_names = ["a"]
    sampler = SegmentSampler(one, SamplerConfig(context_len=4), seed=0)
    with pytest.raises(ValueError, match="two tasks"):
        build_agent(AgentConfig(name="harmodt"), ModelConfig(embed_dim=16, n_layer=1, n_head=1),
                    SamplerConfig(context_len=4), DataSpec(4, 2, ["a"], 1.0, [1.0]),
                    *sampler.state_stats)


@pytest.mark.parametrize("agent", ["harmodt", "prompt_dt"])
def test_prompt_longer_than_the_shortest_episode_fails_before_training(tmp_path, capsys, agent):
    args = two_file_args(tmp_path, "long", 3, 6, "sampler.prompt_len=11", f"agent.name={agent}")
    assert train_agent_main(args) == 2  # every episode has 10 steps
    assert "prompt_len=11 is longer than the shortest prompt episode (10 steps" in (
        capsys.readouterr().err)
    assert not (tmp_path / "long" / "checkpoints").exists()


def paired_store(length=12, episodes=3):
    """Four tasks: 0 and 2 hold the same data, so do 1 and 3 (two obvious groups)."""
    rng = np.random.default_rng(0)
    n = episodes * length
    obs_a, obs_b = rng.normal(size=(n, 4)), rng.normal(size=(n, 4)) + 3.0
    act_a, act_b = np.tanh(obs_a[:, :2]), -np.tanh(obs_b[:, 2:])
    return TrajectoryStore(
        observations=np.concatenate([obs_a, obs_b, obs_a, obs_b]),
        actions=np.concatenate([act_a, act_b, act_a, act_b]),
        rewards=rng.uniform(0, 1, 4 * n), terminals=np.zeros(4 * n, bool),
        timeouts=np.zeros(4 * n, bool), episode_starts=np.arange(4 * episodes + 1) * length,
        episode_task=np.repeat(np.arange(4), episodes), task_names=["a1", "b1", "a2", "b2"],
    )


def g_harmodt():
    """G-HarmoDT on the four paired tasks (two groups, tasks grouped at step 4)."""
    store = paired_store()
    sampler_cfg = SamplerConfig(context_len=4, batch_size=16, task_mode="round_robin")
    sampler = SegmentSampler(store, sampler_cfg, seed=0)
    agent_cfg = AgentConfig(name="harmodt")
    agent_cfg.harmodt.num_groups, agent_cfg.harmodt.mask_interval = 2, 4
    torch.manual_seed(0)
    agent = build_agent(agent_cfg, ModelConfig(embed_dim=16, n_layer=1, n_head=2, dropout=0.0,
                                               max_timestep=20),
                        sampler_cfg, DataSpec(4, 2, store.task_names, 1.0, [1.0] * 4),
                        *sampler.state_stats)
    return agent, store, sampler


def fit(agent, sampler, run_dir, steps):
    Trainer(agent, sampler, TrainConfig(steps=steps, lr=1e-2, warmup_steps=1, log_every=4,
                                        checkpoint_every=0), run_dir).fit()


def test_g_harmodt_groups_tasks_by_gradient_and_shares_group_masks(tmp_path):
    agent, _, sampler = g_harmodt()
    before = sum(m.sum(dim=(1, 2)) for m in agent.task_masks().values())
    fit(agent, sampler, tmp_path, steps=12)
    assert bool(agent.grouped)
    assert agent.task_group.tolist() == [0, 1, 0, 1]
    masks = agent.task_masks()
    for _name, m in masks.items():
        assert torch.equal(m[0], m[2]) and torch.equal(m[1], m[3])
    torch.testing.assert_close(sum(m.sum(dim=(1, 2)) for m in masks.values()), before)
    assert any(not torch.equal(m[0], m[1]) for m in masks.values())  # tiny layers may be dense


def test_g_harmodt_bad_groups():
    with pytest.raises(ConfigError, match="variant M or F"):
        load_config(ExperimentConfig, None, ["agent.harmodt.num_groups=2", "agent.harmodt.variant=R"])
    agent_cfg = AgentConfig(name="harmodt")
    agent_cfg.harmodt.num_groups = 3
    with pytest.raises(ValueError, match="num_groups=3 exceeds"):
        build_on_two_tasks(agent_cfg)


def test_harmodt_under_torchrun_ddp(tmp_path):
    """2 gloo processes: mask updates on every rank, masks broadcast from rank 0, no hang."""
    import subprocess
    import sys

    args = two_file_args(tmp_path, "ddp", 2, 4)
    code = "import sys; from orl.cli import train_agent_main; sys.exit(train_agent_main(sys.argv[1:]))"
    script = tmp_path / "run.py"
    script.write_text(code)
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), *args],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[:3000]
    assert (tmp_path / "ddp" / "checkpoints" / "final" / "model.safetensors").is_file()


def test_unseen_policy_uses_the_new_tasks_prompts_stats_and_merged_mask():
    from orl.agents.policy import DTPolicy

    agent, _ = harmodt(prompt_len=2)
    agent.eval()
    new = two_task_store(seed=5)
    new.task_names = ["c", "d"]
    policy = agent.unseen_policy(new)
    sampler = SegmentSampler(new, SamplerConfig(context_len=4, prompt_len=2), seed=0)
    mean, std = sampler.state_stats
    reference = DTPolicy(agent.model, mean, std, [float(new.episode_returns[:3].max()),
                                                 float(new.episode_returns[3:].max())],
                         task_names=["c", "d"], prompt=sampler.best_prompts(),
                         route_fn=lambda task: Route(mask=agent.merged_index))
    obs, reward = np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32), np.zeros(2)
    for p in (policy, reference):
        p.reset(2, tasks=["d", "c"])
    np.testing.assert_allclose(policy.act(obs, reward), reference.act(obs, reward), atol=1e-6)


def test_unseen_policy_needs_a_prompt():
    store = two_task_store()
    agent = build_on_two_tasks(AgentConfig(name="mtdt"))
    with pytest.raises(ValueError, match="cannot act on unseen tasks"):
        agent.unseen_policy(store)


def test_metaworld_harmodt_with_an_unseen_task_through_train_agent(tmp_path):
    """Generates 3 tiny Meta-World datasets, trains on 2 tasks, evaluates on them and on the
    held-out one (prompted from its own trajectories, merged mask)."""
    import json

    args = [
        "data.tasks=[reach-v3,drawer-close-v3]", "data.unseen_tasks=[button-press-v3]",
        "data.episodes=2", "data.unseen_episodes=1", "agent.name=harmodt",
        "agent.harmodt.mask_interval=2", "model.embed_dim=16", "model.n_layer=1",
        "model.n_head=1", "sampler.context_len=4", "sampler.batch_size=4",
        "sampler.task_mode=round_robin", "sampler.prompt_len=2", "train.steps=4",
        "train.log_every=2", "train.warmup_steps=1", "eval.episodes=1", "eval.num_envs=1",
        "eval.max_steps=5", "run.logger=csv", f"run.out_dir={tmp_path}", "run.name=mw",
    ]
    assert train_agent_main(args) == 0
    unseen = json.loads((tmp_path / "mw" / "eval_final_unseen.json").read_text())
    assert "return/button-press-v3" in unseen
    seen = json.loads((tmp_path / "mw" / "eval_final.json").read_text())
    assert {k for k in seen if k.startswith("return/")} == {"return/reach-v3",
                                                              "return/drawer-close-v3"}


def test_unseen_tasks_must_not_overlap_training(tmp_path, capsys):
    args = ["data.tasks=[reach-v3]", "data.unseen_tasks=[reach-v3]", "run.logger=csv",
            f"run.out_dir={tmp_path}"]
    assert train_agent_main(args) == 2
    assert "overlap the training tasks" in capsys.readouterr().err


def test_gate_pooled_stats_equal_those_of_the_union():
    from orl.agents.harmodt.gate import pooled_stats

    rng = np.random.default_rng(0)
    data = [rng.normal(loc=i, scale=1 + i, size=(50, 3)) for i in range(3)]
    mean = torch.tensor(np.stack([d.mean(0) for d in data]))
    std = torch.tensor(np.stack([d.std(0) for d in data]))
    union = np.concatenate(data)
    pooled_mean, pooled_std = pooled_stats(mean, std)
    np.testing.assert_allclose(pooled_mean.numpy(), union.mean(0), rtol=1e-10)
    np.testing.assert_allclose(pooled_std.numpy(), union.std(0), rtol=1e-10)


def test_g_harmodt_gate_learns_nothing_before_the_tasks_are_grouped(tmp_path):
    agent, _, sampler = g_harmodt()
    loss, metrics = agent.loss(sampler.sample())
    loss.backward()
    assert {"gate_ce", "gate_accuracy"} <= metrics.keys()
    assert all(torch.count_nonzero(p.grad) == 0 for p in agent.gate.parameters())
    with pytest.raises(ValueError, match="not grouped its tasks yet"):
        agent.policy(task_agnostic=True)
    groups = agent.clip_groups()
    assert sorted(id(p) for g in groups for p in g) == sorted(id(p) for p in agent.parameters())
    assert {id(p) for p in groups[1]} == {id(p) for p in agent.gate.parameters()}


def test_g_harmodt_gate_routes_envs_to_their_group_mask(tmp_path):
    from orl.agents.policy import DTPolicy

    agent, store, sampler = g_harmodt()
    fit(agent, sampler, tmp_path, steps=60)
    assert agent.task_group.tolist() == [0, 1, 0, 1]
    assert agent.group_first_task().tolist() == [0, 1]
    agent.eval()
    route = agent.context_route()
    batch = sampler.sample()  # the gate sees raw observations of every task's windows
    task = batch.task[:, None]
    raw = batch.states * agent.state_std[task] + agent.state_mean[task]
    assert torch.equal(route(raw, batch.mask).mask, agent.task_group[batch.task])
    # the policy acts with the mask of the predicted group, every step
    obs = store.observations[store.episode_starts[[1 * 3, 2 * 3]]].astype(np.float32)  # b1, a2
    policy = agent.policy(task_agnostic=True)
    reference = DTPolicy(agent.model, agent.state_mean, agent.state_std, [1.0] * 4,
                         task_names=store.task_names,
                         route_fn=lambda t: Route(mask=torch.tensor([1, 0])))
    for p in (policy, reference):
        p.reset(2, tasks=["b1", "a2"])
    for _ in range(3):
        np.testing.assert_allclose(policy.act(obs, np.zeros(2)), reference.act(obs, np.zeros(2)),
                                   atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graphs_record_one_step_per_task_and_see_mask_updates(tmp_path):
    """Round robin records one graph per task; mask updates between replays change the masks in
    place, so the replayed run ends with the eager run's masks and weights."""
    runs = {}
    for graphs in (False, True):
        agent, sampler = harmodt(variant="F", mask_interval=4)
        for module in agent.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        cfg = TrainConfig(steps=16, lr=1e-2, weight_decay=0.1, warmup_steps=1, log_every=4,
                          checkpoint_every=0, device="cuda", bf16=False, cuda_graphs=graphs)
        trainer = Trainer(agent, sampler, cfg, tmp_path / str(graphs))
        trainer.fit()
        runs[graphs] = trainer
    eager, graphed = runs[False].agent, runs[True].agent
    assert sorted(runs[True]._graphs.graphs) == [0, 1]
    for name, masks in eager.task_masks().items():
        assert torch.equal(masks, graphed.task_masks()[name]), name
    for a, b in zip(eager.parameters(), graphed.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("masked", [True, False])
def test_task_gradients_from_one_pass_equal_one_pass_per_task(masked):
    """The mask update's per-task gradients (one forward/backward over all tasks' samples) equal
    the obvious loop: one pass per task, its own loss, its own mask."""
    agent, sampler = harmodt(prompt_len=2)
    agent.eval()  # no dropout: both ways see the same function
    starts = [sampler.draw_starts(task=t) for t in range(2)]
    prompts = [sampler.draw_prompt_episodes(sampler.steps.task[s]) for s in starts]
    batches = [sampler.segments(s, p) for s, p in zip(starts, prompts)]
    batch = sampler.segments(np.concatenate(starts), np.concatenate(prompts))  # as MaskUpdate's
    batches[1].mask[0, :2] = False  # padding: each task's loss is its own mean
    batch.mask[len(starts[0]), :2] = False
    update = next(c for c in agent.callbacks() if isinstance(c, MaskUpdate))
    got = update.task_grads(batch, Route(mask=batch.task) if masked else None)
    linears = agent.masked_linears()
    for t, one in enumerate(batches):
        loss = action_mse(agent.forward_batch(one, Route(mask=t) if masked else None), one)
        expected = torch.autograd.grad(loss, [lin.weight for lin in linears.values()])
        for name, grad in zip(linears, expected):
            torch.testing.assert_close(got[name][t], grad, rtol=1e-5, atol=1e-7)
