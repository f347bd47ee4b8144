import importlib.util
import io
import json
from typing import ClassVar

import gymnasium as gym
import numpy as np
import pytest
from rich.console import Console

from orl.envs import MetaWorldEnv, expert_policy
from orl.eval import EnvPool, EvalResult, Policy, TaskResult, evaluate, make_vector_env, resolve_eval_tasks
from orl.eval.evaluate import EvalTask, make_env
from orl.logging import RunLogger

# Fast Meta-World tasks: the scripted expert succeeds within 40 steps for variations 0-2.
FAST_TASKS = ["coffee-button-v3", "handle-press-v3"]


class PumpPolicy:
    """Mountain car energy pumping: push along the velocity. Records what it is given."""

    def __init__(self) -> None:
        self.resets: list[int] = []
        self.rewards: list[np.ndarray] = []

    def reset(self, num_envs: int) -> None:
        self.resets.append(num_envs)

    def act(self, obs: np.ndarray, reward: np.ndarray) -> np.ndarray:
        self.rewards.append(reward.copy())
        return np.where(obs[:, 1:2] >= 0, 1.0, -1.0).astype(np.float32)


class ExpertPolicy:
    """Meta-World's scripted experts, one per env; records the first observation of each wave."""

    def __init__(self) -> None:
        self.first_obs: list[np.ndarray] = []
        self.tasks: list[list[str]] = []

    def reset(self, num_envs: int, tasks: list[str]) -> None:
        self.experts = [expert_policy(task) for task in tasks]
        self.tasks.append(tasks)
        self.fresh = True

    def act(self, obs: np.ndarray, reward: np.ndarray) -> np.ndarray:
        if self.fresh:
            self.first_obs.append(obs.copy())
            self.fresh = False
        return np.stack([expert(o) for expert, o in zip(self.experts, obs)])


def rollout(env_id: str, policy: Policy, seed: int) -> tuple[float, int, list[float]]:
    """Return, length and rewards of one episode played by hand."""
    env = gym.make(env_id)
    obs, _ = env.reset(seed=seed)
    policy.reset(1)
    rewards: list[float] = []
    reward = 0.0
    while True:
        action = policy.act(obs[None], np.array([reward]))[0]
        obs, reward, terminated, truncated, _ = env.step(action)
        rewards.append(float(reward))
        if terminated or truncated:
            return sum(rewards), len(rewards), rewards


def test_policy_protocol():
    assert isinstance(PumpPolicy(), Policy) and isinstance(ExpertPolicy(), Policy)


@pytest.mark.parametrize("vector", ["sync", "async"])
def test_matches_hand_rolled_rollouts(vector):
    policy = PumpPolicy()
    result = evaluate(policy, "MountainCarContinuous-v0", episodes=5, num_envs=2, seed=3,
                      vector=vector, progress=False)
    expected = [rollout("MountainCarContinuous-v0", PumpPolicy(), 3 + i) for i in range(5)]
    (task,) = result.tasks
    assert task.task == "MountainCarContinuous-v0" and task.episodes == 5
    np.testing.assert_allclose(task.returns, [r for r, _, _ in expected], rtol=1e-12)
    np.testing.assert_array_equal(task.lengths, [n for _, n, _ in expected])
    assert len(set(task.lengths)) > 1  # episodes end at different steps within a wave
    assert task.success_rate is None and np.isnan(task.successes).all()
    assert policy.resets == [2, 2, 2]  # three waves of two envs (the last one half idle)
    assert result.env_steps == task.lengths.sum()
    # the policy gets the reward of the previous step: 0 after a reset and once finished
    first_wave = np.array(policy.rewards[: max(task.lengths[:2])])
    assert (first_wave[0] == 0).all()
    for env in range(2):
        received = first_wave[1:, env]
        rewards = np.zeros(len(received) + 1)
        rewards[: task.lengths[env]] = expected[env][2]
        np.testing.assert_allclose(received, rewards[: len(received)])


def test_seed_protocol_does_not_depend_on_batching():
    reference = evaluate(PumpPolicy(), "MountainCarContinuous-v0", episodes=4, num_envs=4,
                         progress=False).tasks[0]
    for num_envs in (1, 3):
        other = evaluate(PumpPolicy(), "MountainCarContinuous-v0", episodes=4, num_envs=num_envs,
                         progress=False).tasks[0]
        np.testing.assert_array_equal(other.returns, reference.returns)
    shifted = evaluate(PumpPolicy(), "MountainCarContinuous-v0", episodes=2, seed=2,
                       progress=False).tasks[0]
    np.testing.assert_array_equal(shifted.returns, reference.returns[2:])


def test_max_steps_truncates():
    policy = PumpPolicy()
    result = evaluate(policy, "Pendulum-v1", episodes=3, num_envs=3, max_steps=7, progress=False)
    assert result.tasks[0].lengths.tolist() == [7, 7, 7]
    assert len(policy.rewards) == 7 and result.env_steps == 21


def test_metaworld_variations_and_success():
    policy = ExpertPolicy()
    result = evaluate(policy, FAST_TASKS, episodes=3, num_envs=2, max_steps=50, progress=False)
    assert [t.task for t in result.tasks] == FAST_TASKS
    assert policy.tasks == [[FAST_TASKS[0]] * 2 + [FAST_TASKS[1]] * 2] * 2
    for t in result.tasks:
        assert t.success_rate == 1.0 and t.lengths.tolist() == [50, 50, 50]
    assert result.success_mean == 1.0
    # env k of a task plays episode wave * 2 + k with variation (episode % 50)
    for wave, first_obs in enumerate(policy.first_obs):
        for env, obs in enumerate(first_obs):
            task, episode = FAST_TASKS[env // 2], wave * 2 + env % 2
            if episode < 3:
                expected, _ = MetaWorldEnv(task).reset(options={"variation": episode})
                np.testing.assert_array_equal(obs, expected)


def test_metaworld_variation_wraps_around():
    task = EvalTask("reach-v3", "orl/reach-v3", metaworld=True)
    assert task.reset_options(53) == {"variation": 3}
    assert EvalTask("Hopper-v5", "Hopper-v5", metaworld=False).reset_options(3) == {}


def test_finished_metaworld_env_is_not_stepped_again():
    env = make_env("orl/reach-v3", max_steps=None)
    obs, _ = env.reset(seed=0)
    action = np.zeros(4, dtype=np.float32)
    over = [env.step(action)[4]["episode_over"] for _ in range(500)]
    assert over == [False] * 499 + [True]
    with pytest.raises(ValueError):  # Meta-World itself refuses a step after truncation
        env.unwrapped.step(action)
    frozen = env.step(action)  # the wrapper does not step it
    assert frozen[1:] == (0.0, False, False, {"episode_over": True})
    env.plan = None  # an idle env: reset, but over at once
    env.reset(seed=1)
    assert env.step(action)[4] == {"episode_over": True}
    env.close()


def test_resolve_eval_tasks():
    names = [t.name for t in resolve_eval_tasks("MT10")]
    assert len(names) == 10 and names[0] == "reach-v3"
    assert len(resolve_eval_tasks("OCW20")) == 10  # repeats are evaluated once
    mixed = resolve_eval_tasks(["reach", "orl/push-v3", "Pendulum-v1", "hopper"])
    assert [(t.name, t.env_id, t.metaworld) for t in mixed] == [
        ("reach-v3", "orl/reach-v3", True), ("push-v3", "orl/push-v3", True),
        ("Pendulum-v1", "Pendulum-v1", False), ("hopper", "Hopper-v5", False),
    ]
    with pytest.raises(ValueError, match="gymnasium id"):
        resolve_eval_tasks("Pendulum-v9")


def test_incompatible_envs_and_bad_actions_raise():
    with pytest.raises(ValueError, match="observation shapes"):
        evaluate(PumpPolicy(), ["reach-v3", "Pendulum-v1"], episodes=1, progress=False)

    class WrongShape(PumpPolicy):
        def act(self, obs, reward):
            return np.zeros((len(obs), 3))

    with pytest.raises(ValueError, match="shape"):
        evaluate(WrongShape(), "Pendulum-v1", episodes=1, progress=False)


def test_normalized_score_halfcheetah():
    class Zero:
        def reset(self, num_envs):
            pass

        def act(self, obs, reward):
            return np.zeros((len(obs), 6), dtype=np.float32)

    result = evaluate(Zero(), "HalfCheetah-v5", episodes=2, num_envs=2, max_steps=10, progress=False)
    (task,) = result.tasks
    expected = 100 * (task.returns.mean() + 280.178953) / (12135.0 + 280.178953)
    assert task.normalized_score == pytest.approx(expected)
    assert result.normalized_score_mean == pytest.approx(expected)
    assert result.to_dict()["normalized_score/HalfCheetah-v5"] == pytest.approx(expected)


def make_result() -> EvalResult:
    return EvalResult([
        TaskResult("reach-v3", "orl/reach-v3", np.array([10.0, 20.0]), np.array([500, 500]),
                   np.array([1.0, 0.0])),
        TaskResult("push-v3", "orl/push-v3", np.array([4.0, 6.0]), np.array([500, 500]),
                   np.array([1.0, 1.0])),
        TaskResult("Pendulum-v1", "Pendulum-v1", np.array([-3.0, -5.0]), np.array([200, 200]),
                   np.array([np.nan, np.nan])),
    ])


def test_to_dict_and_rows():
    result = make_result()
    assert result.to_dict() == {
        "success/reach-v3": 0.5, "return/reach-v3": 15.0, "length/reach-v3": 500.0,
        "success/push-v3": 1.0, "return/push-v3": 5.0, "length/push-v3": 500.0,
        "return/Pendulum-v1": -4.0, "length/Pendulum-v1": 200.0,
        "success_mean": 0.75, "return_mean": 16.0 / 3,
    }
    assert result.rows()[0] == {
        "task": "reach-v3", "episodes": 2, "success_rate": 0.5, "return_mean": 15.0,
        "return_std": 5.0, "length_mean": 500.0, "normalized_score": None,
    }


def test_table_and_print():
    console = Console(file=io.StringIO(), width=120)
    console.print(make_result().table())
    text = console.file.getvalue()
    for expected in ("reach-v3", "50%", "100%", "75%", "15.0 ± 5.0", "Pendulum-v1"):
        assert expected in text


def test_to_dataframe():
    result = make_result()
    if importlib.util.find_spec("pandas") is None:
        with pytest.raises(ImportError, match="pandas"):
            result.to_dataframe()
    else:
        frame = result.to_dataframe()
        assert frame["task"].tolist() == ["reach-v3", "push-v3", "Pendulum-v1"]


def test_log(tmp_path):
    logger = RunLogger(tmp_path, "csv")
    make_result().log(logger, step=7)
    logger.finish()
    logged: dict[str, float] = {}
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        assert row.pop("step") == 7
        assert not logged.keys() & row.keys()  # nothing logged twice
        logged |= row
    assert logged == {f"eval/{key}": value for key, value in make_result().to_dict().items()}
    table = json.loads((tmp_path / "eval_tasks.json").read_text())
    assert table["columns"][:3] == ["task", "episodes", "success_rate"]
    assert [row[0] for row in table["rows"]] == ["reach-v3", "push-v3", "Pendulum-v1"]


class FramesEnv(gym.Env):
    """Episodes of 3 + seed % 3 steps; frame t is a flat gray image of value 40 * t."""

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, render_mode=None):
        self.render_mode = render_mode
        self.observation_space = gym.spaces.Box(-1, 1, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1, 1, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.length = 0, 3 + (seed or 0) % 3
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.zeros(2, np.float32), 1.0, self.t >= self.length, False, {}

    def render(self):
        return np.full((32, 48, 3), 40 * self.t, np.uint8)


gym.register("OrlTestFrames-v0", entry_point=FramesEnv, max_episode_steps=50)


@pytest.mark.parametrize("vector", ["sync", "async"])
def test_videos_of_the_first_episodes(tmp_path, vector):
    import imageio_ffmpeg

    policy = PumpPolicy()
    result = evaluate(policy, "OrlTestFrames-v0", episodes=3, num_envs=2, seed=1, vector=vector,
                      progress=False, video_dir=tmp_path, video_episodes=2)
    assert result.tasks[0].lengths.tolist() == [4, 5, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "OrlTestFrames-v0-episode000.mp4", "OrlTestFrames-v0-episode001.mp4"]
    for episode, length in enumerate([4, 5]):
        reader = imageio_ffmpeg.read_frames(str(tmp_path / f"OrlTestFrames-v0-episode{episode:03d}.mp4"))
        meta = next(reader)
        frames = [np.frombuffer(f, np.uint8) for f in reader]
        assert meta["size"] == (48, 32) and len(frames) == length + 1
        np.testing.assert_allclose([f.mean() for f in frames], 40 * np.arange(length + 1), atol=3)


def test_bad_video_episodes(tmp_path):
    with pytest.raises(ValueError, match="video_episodes"):
        evaluate(PumpPolicy(), "OrlTestFrames-v0", episodes=1, video_dir=tmp_path, video_episodes=0)


def test_stop_on_success_ends_episodes_at_the_first_success():
    task = FAST_TASKS[0]
    env = make_env(f"orl/{task}", max_steps=50)
    env.plan = {"variation": 0}
    obs, _ = env.reset(seed=0)
    expert, rewards = expert_policy(task), []
    while True:
        obs, reward, _, _, info = env.step(expert(obs))
        rewards.append(reward)
        if info["success"]:
            break
    env.close()
    assert len(rewards) < 50  # the expert succeeds before the cap, so the test can tell
    kw = dict(episodes=1, num_envs=1, max_steps=50, seed=0, progress=False)
    stopped = evaluate(ExpertPolicy(), task, stop_on_success=True, **kw).tasks[0]
    full = evaluate(ExpertPolicy(), task, **kw).tasks[0]
    assert stopped.lengths.tolist() == [len(rewards)] and full.lengths.tolist() == [50]
    assert stopped.returns[0] == pytest.approx(sum(rewards))
    assert stopped.success_rate == full.success_rate == 1.0


def test_eval_config_options_are_evaluate_arguments():
    import inspect

    from orl.config.experiment import EvalConfig

    options = EvalConfig(stop_on_success=True, max_steps=7).rollout_options()
    assert set(options) <= set(inspect.signature(evaluate).parameters)
    assert options["stop_on_success"] is True and options["max_steps"] == 7


class ShakyExpert(ExpertPolicy):
    """The scripted experts with a deterministic, observation-dependent push: returns differ
    between episodes, so reused envs that kept any state would show it."""

    def act(self, obs: np.ndarray, reward: np.ndarray) -> np.ndarray:
        return np.clip(super().act(obs, reward) + 0.6 * np.sin(7 * obs[:, :4]), -1, 1)


def test_an_env_pool_gives_the_results_of_fresh_envs_and_makes_each_env_once(monkeypatch):
    import sys

    module = sys.modules["orl.eval.evaluate"]
    made: list[str] = []

    def counting_make_env(env_id, *args, **kwargs):
        made.append(env_id)
        return make_env(env_id, *args, **kwargs)

    monkeypatch.setattr(module, "make_env", counting_make_env)
    kw = dict(episodes=3, num_envs=2, max_steps=40, seed=5, progress=False)
    pool = EnvPool()
    for tasks in (FAST_TASKS, FAST_TASKS[1:], FAST_TASKS[::-1]):
        pooled = evaluate(ShakyExpert(), tasks, env_pool=pool, **kw)
        fresh = evaluate(ShakyExpert(), tasks, **kw)
        for a, b in zip(pooled.tasks, fresh.tasks, strict=True):
            assert a.task == b.task and a.returns.tolist() == b.returns.tolist()
            assert a.lengths.tolist() == b.lengths.tolist()
            assert np.array_equal(a.successes, b.successes, equal_nan=True)
    assert len({r for t in fresh.tasks for r in t.returns}) > 1  # the episodes differ
    assert made.count(f"orl/{FAST_TASKS[0]}") == 2 + 2 + 2  # the pool's 2, then fresh ones only
    pool.close()
    assert pool._free == {}


class KeepingExpert(ShakyExpert):
    """``ShakyExpert`` that drops finished envs (``keep``) and records its batch sizes."""

    waves: ClassVar[list[list[int]]]

    def reset(self, num_envs: int, tasks: list[str]) -> None:
        super().reset(num_envs, tasks)
        self.waves = [*getattr(self, "waves", []), []]

    def keep(self, rows: np.ndarray) -> None:
        assert (np.diff(rows) > 0).all() and rows.max() < len(self.experts)
        self.experts = [self.experts[i] for i in rows]

    def act(self, obs: np.ndarray, reward: np.ndarray) -> np.ndarray:
        assert len(obs) == len(reward) == len(self.experts)
        self.waves[-1].append(len(obs))
        return super().act(obs, reward)


def test_a_policy_that_keeps_rows_acts_only_for_envs_still_playing():
    """Episodes end at different steps (first success; a wave with an idle env): a policy with
    ``keep`` gets only the envs still playing, and the results are those of one without it."""
    kw = dict(episodes=3, num_envs=2, max_steps=60, seed=5, progress=False, stop_on_success=True)
    keeping = KeepingExpert()
    kept = evaluate(keeping, FAST_TASKS, **kw)
    full = evaluate(ShakyExpert(), FAST_TASKS, **kw)
    for a, b in zip(kept.tasks, full.tasks, strict=True):
        assert a.returns.tolist() == b.returns.tolist() and a.lengths.tolist() == b.lengths.tolist()
        assert np.array_equal(a.successes, b.successes, equal_nan=True)
    lengths = np.array([t.lengths for t in full.tasks])  # (task, episode)
    assert len(set(lengths[:, :2].flat)) > 1  # the first wave's episodes end at different steps
    # wave w plays episodes 2w, 2w + 1 of each task (the last wave: one, beside an idle env);
    # at step s the policy acts for the envs whose episode is longer than s
    for w, sizes in enumerate(keeping.waves):
        played = lengths[:, 2 * w: 2 * w + 2].flatten()
        assert sizes == [int((played > step).sum()) for step in range(played.max())]
    assert len(keeping.waves) == 2


def test_an_env_pool_closes_envs_after_a_failure_and_refuses_rendering():
    class Broken(ExpertPolicy):
        def act(self, obs, reward):
            raise RuntimeError("boom")

    pool = EnvPool()
    with pytest.raises(RuntimeError, match="boom"):
        evaluate(Broken(), FAST_TASKS[0], episodes=1, num_envs=1, max_steps=5, env_pool=pool,
                 progress=False)
    assert pool._free == {}  # not given back: their episodes were cut short
    with pytest.raises(ValueError, match="an env pool serves sync vector envs without rendering"):
        make_vector_env([f"orl/{FAST_TASKS[0]}"], 5, render=True, env_pool=pool)
