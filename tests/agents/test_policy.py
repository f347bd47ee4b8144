import numpy as np
import pytest
import torch

from orl.agents.policy import DTPolicy
from orl.eval import evaluate
from orl.model.dt import DecisionTransformer, DTConfig
from orl.model.layers import Route

OBS, ACT, K = 3, 2, 4
TASKS = ["a", "b"]


def make_model(**overrides) -> DecisionTransformer:
    torch.manual_seed(0)
    cfg = DTConfig(**{"obs_dim": OBS, "act_dim": ACT, "context_len": K, "embed_dim": 16,
                      "n_layer": 2, "n_head": 2, "max_timestep": 64, **overrides})
    return DecisionTransformer(cfg).train()  # the policy must switch dropout off itself


def task_stats():
    mean = np.array([[0.5, -1.0, 2.0], [-3.0, 0.0, 1.0]], dtype=np.float32)
    std = np.array([[1.0, 2.0, 0.5], [4.0, 1.0, 3.0]], dtype=np.float32)
    return mean, std


def make_prompt(model: DecisionTransformer) -> dict[str, torch.Tensor]:
    p = model.cfg.prompt_len
    g = torch.Generator().manual_seed(1)
    return {
        "states": torch.randn(2, p, OBS, generator=g),
        "actions": torch.randn(2, p, ACT, generator=g),
        "returns_to_go": torch.randn(2, p, generator=g),
        "timesteps": torch.arange(p).expand(2, p).clone(),
        "mask": torch.tensor([[False, True], [True, True]]),
    }


def window(history: list, n: int, shape: tuple[int, ...] = ()) -> torch.Tensor:
    """(1, K, *shape): the last ``n`` entries of ``history``, left-padded with zeros."""
    rows = [np.zeros(shape)] * (K - n) + [np.asarray(h) for h in history[-n:]]
    return torch.tensor(np.stack(rows), dtype=torch.float32)[None]


class SlowReference:
    """One env at a time: the sampler-style window of a Python-list history, one forward each."""

    def __init__(self, model, mean, std, target, rtg_scale, tasks, forward_kwargs):
        self.model, self.mean, self.std = model, mean, std
        self.target, self.rtg_scale, self.tasks = target, rtg_scale, tasks
        self.forward_kwargs = forward_kwargs  # task index -> extra model kwargs
        self.states = [[] for _ in tasks]
        self.actions = [[] for _ in tasks]
        self.rtg = [[] for _ in tasks]

    @torch.no_grad()
    def act(self, obs, reward):
        self.model.eval()
        actions = []
        for env, task in enumerate(self.tasks):
            self.states[env].append((obs[env] - self.mean[task]) / self.std[task])
            rtg = self.rtg[env]
            rtg.append(self.target[task] / self.rtg_scale if not rtg
                       else rtg[-1] - reward[env] / self.rtg_scale)
            self.actions[env].append(np.zeros(ACT))
            t = len(rtg)
            n = min(K, t)
            pad = K - n
            out = self.model(
                window(self.states[env], n, (OBS,)), window(self.actions[env], n, (ACT,)),
                window(rtg, n), torch.tensor([[0] * pad + list(range(t - n, t))]),
                torch.tensor([[False] * pad + [True] * n]), **self.forward_kwargs(task),
            )
            self.actions[env][-1] = out[0, -1].numpy()
            actions.append(out[0, -1].numpy())
        return np.stack(actions)


def test_first_action_is_a_forward_on_the_padded_context():
    model = make_model()
    policy = DTPolicy(model, np.full(OBS, 1.0), np.full(OBS, 2.0), target_return=30.0, rtg_scale=10.0)
    obs = np.array([[1.0, 3.0, -1.0], [0.0, 0.0, 5.0]], dtype=np.float32)
    policy.reset(2)
    action = policy.act(obs, np.zeros(2))
    assert action.dtype == np.float32 and action.shape == (2, ACT)
    assert model.training  # act runs without dropout but leaves the model's mode as it was
    states = torch.zeros(2, K, OBS)
    states[:, -1] = (torch.from_numpy(obs) - 1.0) / 2.0
    rtg = torch.zeros(2, K)
    rtg[:, -1] = 3.0
    mask = torch.tensor([[False, False, False, True]] * 2)
    with torch.no_grad():
        expected = model.eval()(states, torch.zeros(2, K, ACT), rtg, torch.zeros(2, K, dtype=torch.long),
                                mask)[:, -1]
    np.testing.assert_allclose(action, expected.numpy(), atol=1e-6)


def set_random_masks(model: DecisionTransformer) -> None:
    g = torch.Generator().manual_seed(2)
    for _, lin in model.transformer.linears():
        lin.set_masks(torch.rand(2, *lin.weight.shape, generator=g) < 0.6)


@pytest.mark.parametrize("variant", ["single", "behaviour_cloning", "one_layer", "multi_task",
                                     "prompt", "masks", "context_route"])
def test_matches_slow_sampler_style_reference(variant):
    """Every variant of the policy (the token cache, or a full forward with ``context_route``)
    acts as a full forward over each env's padded window would, past the window's sliding."""
    mean, std = task_stats()
    target, scale, envs = [50.0, 80.0], 20.0, [1, 0, 1]
    if variant in ("single", "behaviour_cloning", "one_layer"):
        model = make_model(**{"behaviour_cloning": {"return_conditioned": False},
                              "one_layer": {"n_layer": 1}}.get(variant, {}))
        kwargs = dict(state_mean=mean[0], state_std=std[0], target_return=target[0])
        envs = [0, 0, 0]
        tasks, extra = None, (lambda task: {})
    elif variant in ("masks", "context_route"):
        model = make_model()
        set_random_masks(model)
        tasks = [TASKS[e] for e in envs]
        kwargs = dict(state_mean=mean, state_std=std, target_return=target, task_names=TASKS)
        if variant == "masks":
            kwargs["route_fn"] = lambda task: Route(mask=task)
            extra = lambda task: {"route": Route(mask=task)}
        else:  # a route from the window: the mask of the opposite task (obs[0] > 0: task 0)
            kwargs["context_route"] = lambda raw, valid: Route(mask=(raw[:, -1, 0] > 0).long())
            extra = lambda task: {"route": Route(mask=1 - task)}
    elif variant == "multi_task":
        model = make_model(num_tasks=2, num_action_heads=2)
        kwargs = dict(state_mean=mean, state_std=std, target_return=target, task_names=TASKS,
                      use_task_embedding=True, action_head=[1, 0])
        tasks = [TASKS[e] for e in envs]
        extra = lambda task: {"task": torch.tensor([task]), "head": 1 - task}
    else:
        model = make_model(prompt_len=2)
        prompt = make_prompt(model)
        kwargs = dict(state_mean=mean, state_std=std, target_return=target, task_names=TASKS,
                      prompt=prompt)
        tasks = [TASKS[e] for e in envs]
        extra = lambda task: {"prompt": {k: v[task][None] for k, v in prompt.items()}}
    policy = DTPolicy(model, rtg_scale=scale, **kwargs)
    reference = SlowReference(model, mean, std, target, scale, envs, extra)
    policy.reset(len(envs), tasks=tasks)
    rng = np.random.default_rng(0)
    reward = np.zeros(len(envs))
    for _ in range(2 * K + 1):  # past the point where the window slides
        obs = rng.normal(size=(len(envs), OBS)).astype(np.float32)
        obs[:, 0] = np.where(np.array(envs) == 0, 1.0, -1.0) * (1.0 + np.abs(obs[:, 0]))
        np.testing.assert_allclose(policy.act(obs, reward), reference.act(obs, reward), atol=1e-5)
        reward = rng.normal(size=len(envs))


@pytest.mark.parametrize("variant", ["single", "multi_task", "prompt", "masks", "context_route"])
def test_envs_dropped_by_keep_leave_the_others_acting_as_before(variant):
    """``keep`` before the first step, before the window is full and after it slides: the kept
    envs' actions are those of the reference that plays every env throughout."""
    mean, std = task_stats()
    envs, tasks = [1, 0, 1, 0], ["b", "a", "b", "a"]
    kwargs = dict(state_mean=mean, state_std=std, target_return=[50.0, 80.0], task_names=TASKS)
    model, extra = make_model(), (lambda task: {})
    if variant == "single":
        envs, tasks = [0, 0, 0, 0], None
        kwargs = dict(state_mean=mean[0], state_std=std[0], target_return=50.0)
    elif variant == "multi_task":
        model = make_model(num_tasks=2, num_action_heads=2)
        kwargs |= dict(use_task_embedding=True, action_head=[1, 0])
        extra = lambda task: {"task": torch.tensor([task]), "head": 1 - task}
    elif variant == "prompt":
        model = make_model(prompt_len=2)
        prompt = make_prompt(model)
        kwargs["prompt"] = prompt
        extra = lambda task: {"prompt": {k: v[task][None] for k, v in prompt.items()}}
    else:
        set_random_masks(model)
        if variant == "masks":
            kwargs["route_fn"] = lambda task: Route(mask=task)
            extra = lambda task: {"route": Route(mask=task)}
        else:
            kwargs["context_route"] = lambda raw, valid: Route(mask=(raw[:, -1, 0] > 0).long())
            extra = lambda task: {"route": Route(mask=1 - task)}
    policy = DTPolicy(model, rtg_scale=20.0, **kwargs)
    reference = SlowReference(model, mean, std, kwargs["target_return"] if tasks else [50.0],
                              20.0, envs, extra)
    policy.reset(len(envs), tasks=tasks)
    rng = np.random.default_rng(3)
    drops = {0: [0, 1, 2], 2: [0, 2], K + 2: [1]}  # rows of the envs acted for so far
    playing = np.arange(len(envs))
    reward = np.zeros(len(envs))
    for step in range(2 * K + 1):
        if step in drops:
            policy.keep(np.array(drops[step]))
            playing = playing[drops[step]]
        obs = rng.normal(size=(len(envs), OBS)).astype(np.float32)
        obs[:, 0] = np.where(np.array(envs) == 0, 1.0, -1.0) * (1.0 + np.abs(obs[:, 0]))
        expected = reference.act(obs, reward)[playing]
        np.testing.assert_allclose(policy.act(obs[playing], reward[playing]), expected, atol=1e-5)
        reward = rng.normal(size=len(envs))
    assert playing.tolist() == [2]


def test_tasks_mixed_in_one_batch_act_as_if_alone():
    mean, std = task_stats()
    policy = DTPolicy(make_model(), mean, std, target_return=[5.0, -5.0], task_names=TASKS)
    rng = np.random.default_rng(1)
    obs = rng.normal(size=(6, 2, OBS)).astype(np.float32)
    rewards = rng.normal(size=(6, 2))

    def run(tasks, columns):
        policy.reset(len(tasks), tasks=tasks)
        return np.stack([policy.act(obs[t][columns], rewards[t][columns]) for t in range(6)])

    mixed = run(["b", "a"], [0, 1])
    np.testing.assert_allclose(mixed[:, :1], run(["b"], [0]), atol=1e-5)
    np.testing.assert_allclose(mixed[:, 1:], run(["a"], [1]), atol=1e-5)
    assert not np.allclose(mixed[:, 0], run(["a"], [0])[:, 0])  # the task's stats matter


def test_route_fn_gets_task_indices_at_reset():
    seen = []

    def route_fn(task):
        seen.append(task.tolist())
        return Route()

    mean, std = task_stats()
    policy = DTPolicy(make_model(), mean, std, 1.0, task_names=TASKS, route_fn=route_fn)
    policy.reset(3, tasks=["b", "a", "b"])
    policy.act(np.zeros((3, OBS)), np.zeros(3))
    assert seen[-1] == [1, 0, 1]


def test_single_task_policy_plays_any_task():
    policy = DTPolicy(make_model(), np.zeros(OBS), np.ones(OBS), 1.0, task_names=["halfcheetah"])
    policy.reset(2, tasks=["HalfCheetah-v5", "other"])
    assert policy.act(np.zeros((2, OBS)), np.zeros(2)).shape == (2, ACT)


def test_errors():
    mean, std = task_stats()
    with pytest.raises(ValueError, match="task_names"):
        DTPolicy(make_model(), mean, std, 1.0)
    with pytest.raises(ValueError, match="target_return has 3"):
        DTPolicy(make_model(), mean, std, [1.0, 2.0, 3.0], task_names=TASKS)
    policy = DTPolicy(make_model(), mean, std, 1.0, task_names=TASKS)
    with pytest.raises(ValueError, match="no task 'c'"):
        policy.reset(1, tasks=["c"])
    policy.reset(1, tasks=["a"])
    for _ in range(make_model().cfg.max_timestep):
        policy.act(np.zeros((1, OBS)), np.zeros(1))
    with pytest.raises(RuntimeError, match="max_timestep"):
        policy.act(np.zeros((1, OBS)), np.zeros(1))


def test_evaluate_with_dt_policy_on_two_metaworld_tasks():
    tasks = ["coffee-button-v3", "handle-press-v3"]
    model = DecisionTransformer(DTConfig(obs_dim=39, act_dim=4, context_len=K, embed_dim=16,
                                         n_layer=1, n_head=1, num_tasks=2))
    policy = DTPolicy(model, np.zeros((2, 39)), np.ones((2, 39)), [100.0, 200.0], rtg_scale=100.0,
                      task_names=tasks, use_task_embedding=True)
    result = evaluate(policy, tasks, episodes=2, num_envs=2, max_steps=6, progress=False)
    assert [t.task for t in result.tasks] == tasks
    assert all(t.lengths.tolist() == [6, 6] for t in result.tasks)


def test_eval_mode_switches_dropout_off_and_restores_each_modules_mode():
    from orl.agents.policy import eval_mode

    model = make_model()
    frozen = model.transformer
    frozen.eval()  # a part kept in eval mode while the rest trains
    training = {name for name, m in model.named_modules() if m.training}
    assert training and len(training) < len(list(model.modules()))
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert {name for name, m in model.named_modules() if m.training} == training
    with pytest.raises(RuntimeError), eval_mode(model):
        raise RuntimeError
    assert {name for name, m in model.named_modules() if m.training} == training
