import numpy as np
import pytest
import torch

from orl.agents import DataSpec, build_agent
from orl.config.experiment import AgentConfig, ModelConfig
from orl.datasets.sampler import SamplerConfig, SegmentSampler
from orl.datasets.store import TrajectoryStore


def tiny_store(tasks=2, episodes=3, length=12, seed=0):
    rng = np.random.default_rng(seed)
    n = tasks * episodes * length
    obs = rng.normal(size=(n, 4))
    return TrajectoryStore(
        observations=obs, actions=np.tanh(obs[:, :2]),  # a learnable mapping
        rewards=rng.uniform(0, 1, n), terminals=np.zeros(n, bool), timeouts=np.zeros(n, bool),
        episode_starts=np.arange(tasks * episodes + 1) * length,
        episode_task=np.repeat(np.arange(tasks), episodes),
        task_names=[f"t{i}" for i in range(tasks)],
    )


def make(name, prompt_len=0, store=None, task_embedding=True):
    store = store or tiny_store()
    sampler_cfg = SamplerConfig(context_len=5, batch_size=16, prompt_len=prompt_len)
    sampler = SegmentSampler(store, sampler_cfg, seed=0)
    spec = DataSpec(obs_dim=4, act_dim=2, task_names=store.task_names, rtg_scale=1.0,
                    target_returns=[5.0] * store.num_tasks)
    torch.manual_seed(0)
    agent = build_agent(AgentConfig(name=name, task_embedding=task_embedding),
                        ModelConfig(embed_dim=16, n_layer=1, n_head=2, dropout=0.0, max_timestep=20),
                        sampler_cfg, spec, *sampler.state_stats,
                        sampler.best_prompts() if prompt_len else None)
    return agent, sampler


@pytest.mark.parametrize("name, prompt_len", [("mtdt", 0), ("prompt_dt", 3), ("mtbc", 0)])
def test_agents_learn_a_tiny_dataset(name, prompt_len):
    agent, sampler = make(name, prompt_len)
    optimizer = torch.optim.Adam(agent.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss, metrics = agent.loss(sampler.sample())
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.2 * first
    assert set(metrics) == {"action_mse"}


def test_loss_ignores_padding():
    agent, sampler = make("mtdt")
    batch = sampler.segments(np.array([9, 10, 11, 20]))  # windows near an episode end: padded
    assert (~batch.mask).any()
    loss, _ = agent.loss(batch)
    batch.actions[~batch.mask] = 7.0
    torch.testing.assert_close(agent.loss(batch)[0], loss)


def test_variants_differ_in_what_conditions_the_model():
    mtdt, _ = make("mtdt")
    assert mtdt.model.task_embed is not None and mtdt.model.cfg.return_conditioned
    mtbc, _ = make("mtbc")
    assert mtbc.model.embed.ret is None
    prompt, _ = make("prompt_dt", prompt_len=3)
    assert prompt.model.task_embed is None and prompt.prompts()["states"].shape == (2, 3, 4)
    plain, _ = make("mtdt", task_embedding=False)
    assert plain.model.task_embed is None


def test_bad_agent_choices():
    with pytest.raises(ValueError, match="prompt_len > 0"):
        make("prompt_dt", prompt_len=0)
    with pytest.raises(ValueError, match="one task"):
        make("dt")
    single, _ = make("dt", store=tiny_store(tasks=1))
    assert single.model.task_embed is None


def test_policy_acts_on_a_batch_of_envs():
    agent, _ = make("prompt_dt", prompt_len=3)
    policy = agent.policy()
    policy.reset(3, tasks=["t1", "t0", "t1"])
    action = policy.act(np.zeros((3, 4), np.float32), np.zeros(3, np.float32))
    assert action.shape == (3, 2) and np.all(np.abs(action) <= 1)
