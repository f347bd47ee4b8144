import numpy as np
import pytest

from orl.envs import D4RL_REFERENCE, D4RLReference, make_mujoco, normalized_score, reference_for


def test_references():
    assert D4RL_REFERENCE["halfcheetah"] == D4RLReference(-280.178953, 12135.0)
    assert D4RL_REFERENCE["hopper"] == D4RLReference(-20.272305, 3234.3)
    assert D4RL_REFERENCE["walker2d"] == D4RLReference(1.629008, 4592.3)
    with pytest.raises(AttributeError):
        D4RL_REFERENCE["hopper"].expert_score = 0.0  # frozen


def test_normalized_score_hand_computed():
    assert normalized_score("halfcheetah", -280.178953) == pytest.approx(0.0)
    assert normalized_score("HalfCheetah-v5", 12135.0) == pytest.approx(100.0)
    assert normalized_score("hopper", (3234.3 - 20.272305) / 2) == pytest.approx(50.0)
    # 100 * (1000 - 1.629008) / (4592.3 - 1.629008)
    assert normalized_score("Walker2d-v5", 1000.0) == pytest.approx(21.747823, abs=1e-6)
    scores = normalized_score("walker2d", np.array([1.629008, 4592.3]))
    assert isinstance(scores, np.ndarray)
    np.testing.assert_allclose(scores, [0.0, 100.0], atol=1e-9)
    assert isinstance(normalized_score("hopper", 1.0), float)


def test_reference_for_and_unknown_envs():
    assert reference_for("Hopper-v5") == reference_for("hopper") == D4RL_REFERENCE["hopper"]
    assert reference_for("orl/reach-v3") is None
    assert reference_for("Ant-v5") is None
    with pytest.raises(ValueError, match=r"'Ant-v5'"):
        normalized_score("Ant-v5", 1.0)
    with pytest.raises(ValueError, match=r"'halfchetah'.*halfcheetah"):
        make_mujoco("halfchetah")


def test_make_and_step_halfcheetah():
    env = make_mujoco("halfcheetah")
    assert env.spec.id == "HalfCheetah-v5"
    obs, _ = env.reset(seed=0)
    assert obs.shape == env.observation_space.shape == (17,)
    for _ in range(5):
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
    assert np.isfinite(obs).all() and np.isfinite(reward)
    env.close()
