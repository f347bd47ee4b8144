import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.registration import EnvSpec

from orl.envs import MT50_TASKS, check_task, env_id, make
from orl.envs.metaworld import MAX_EPISODE_STEPS, NUM_VARIATIONS


def test_check_task():
    assert check_task("reach-v3") == "reach-v3"
    assert check_task("reach") == "reach-v3"
    assert env_id("push") == "orl/push-v3"
    with pytest.raises(ValueError, match=r"'pick-plac'.*pick-place-v3"):
        check_task("pick-plac")


def test_all_tasks_registered():
    for task in MT50_TASKS:
        assert f"orl/{task}" in gym.registry


@pytest.fixture(scope="module")
def reach():
    env = gym.make("orl/reach-v3")
    yield env
    env.close()


def test_gym_make_and_spec_round_trip(reach):
    assert reach.spec.max_episode_steps == MAX_EPISODE_STEPS
    spec = EnvSpec.from_json(reach.spec.to_json())
    assert spec == reach.spec
    obs, info = reach.reset(seed=0)
    assert obs.dtype == np.float32 and obs.shape == reach.observation_space.shape
    obs, reward, terminated, truncated, info = reach.step(reach.action_space.sample())
    assert isinstance(reward, float) and isinstance(info["success"], bool)
    assert info["variation"] == reach.unwrapped.variation


def test_observation_in_space(reach):
    obs, _ = reach.reset(seed=0, options={"variation": 0})
    assert reach.observation_space.contains(obs)


def test_variation_none_is_seeded(reach):
    obs_a, info_a = reach.reset(seed=123)
    obs_b, info_b = reach.reset(seed=123)
    assert info_a["variation"] == info_b["variation"]
    np.testing.assert_array_equal(obs_a, obs_b)
    variations = {reach.reset(seed=s)[1]["variation"] for s in range(10)}
    assert len(variations) > 1 and all(0 <= v < NUM_VARIATIONS for v in variations)


def test_variation_option_overrides(reach):
    _, info = reach.reset(seed=0, options={"variation": 7})
    assert info["variation"] == 7 and reach.unwrapped.variation == 7
    with pytest.raises(ValueError):
        reach.reset(options={"variation": NUM_VARIATIONS})


def test_fixed_variation_reproducible(reach):
    env = make("reach", variation=7)
    obs_a, info = env.reset(seed=1)
    obs_b, _ = env.reset(seed=2)
    obs_ref, _ = reach.reset(seed=3, options={"variation": 7})
    env.close()
    assert info["variation"] == 7
    np.testing.assert_array_equal(obs_a, obs_b)
    np.testing.assert_array_equal(obs_a, obs_ref)  # same variation, other env instance
    other, _ = reach.reset(seed=3, options={"variation": 8})
    assert not np.array_equal(obs_a, other)  # variations differ in goal


def test_bad_variation_rejected():
    with pytest.raises(ValueError, match="variation"):
        make("reach", variation=NUM_VARIATIONS)
