"""Meta-World v3 tasks as gymnasium environments with reproducible goal variations.

Each task has ``NUM_VARIATIONS`` goal/initial-state variations, generated once from a fixed
``benchmark_seed`` (Meta-World's ``MT1(task, seed)``). An env either pins one variation
(``variation=i``) or draws one from its seeded RNG at every reset; ``reset(options={"variation":
i})`` overrides both for one episode. Envs are registered as ``orl/<task>`` with a string entry
point so Minari can store their spec.
"""

from __future__ import annotations

import difflib
import warnings
from functools import cache
from typing import Any

import gymnasium as gym
import numpy as np

NUM_VARIATIONS = 50
MAX_EPISODE_STEPS = 500
ENTRY_POINT = "orl.envs.metaworld:make_env"

#: The 50 Meta-World v3 tasks, sorted (the order of ``sorted(metaworld.MT50().train_classes)``).
MT50_TASKS: tuple[str, ...] = (
    "assembly-v3", "basketball-v3", "bin-picking-v3", "box-close-v3",
    "button-press-topdown-v3", "button-press-topdown-wall-v3", "button-press-v3",
    "button-press-wall-v3", "coffee-button-v3", "coffee-pull-v3", "coffee-push-v3",
    "dial-turn-v3", "disassemble-v3", "door-close-v3", "door-lock-v3", "door-open-v3",
    "door-unlock-v3", "drawer-close-v3", "drawer-open-v3", "faucet-close-v3", "faucet-open-v3",
    "hammer-v3", "hand-insert-v3", "handle-press-side-v3", "handle-press-v3",
    "handle-pull-side-v3", "handle-pull-v3", "lever-pull-v3", "peg-insert-side-v3",
    "peg-unplug-side-v3", "pick-out-of-hole-v3", "pick-place-v3", "pick-place-wall-v3",
    "plate-slide-back-side-v3", "plate-slide-back-v3", "plate-slide-side-v3", "plate-slide-v3",
    "push-back-v3", "push-v3", "push-wall-v3", "reach-v3", "reach-wall-v3", "shelf-place-v3",
    "soccer-v3", "stick-pull-v3", "stick-push-v3", "sweep-into-v3", "sweep-v3",
    "window-close-v3", "window-open-v3",
)


def check_task(task: str) -> str:
    """Return ``task`` if it is a Meta-World v3 task, else raise naming close matches."""
    if task in MT50_TASKS:
        return task
    if f"{task}-v3" in MT50_TASKS:
        return f"{task}-v3"
    close = difflib.get_close_matches(task, MT50_TASKS, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(
        f"Unknown Meta-World task {task!r}.{hint} Known tasks: orl.envs.metaworld.MT50_TASKS."
    )


def env_id(task: str) -> str:
    """Gymnasium id under which ``task`` is registered (``orl/<task>``)."""
    return f"orl/{check_task(task)}"


@cache
def _variations(task: str, benchmark_seed: int) -> tuple[Any, ...]:
    import metaworld

    return tuple(metaworld.MT1(task, seed=benchmark_seed).train_tasks)


class MetaWorldEnv(gym.Env):
    """One Meta-World task with float32 observations and selectable goal variations.

    ``info`` carries ``success`` (bool, this step) and ``variation`` (index in use).
    """

    def __init__(
        self,
        task: str,
        variation: int | None = None,
        benchmark_seed: int = 0,
        render_mode: str | None = None,
        camera_name: str | None = None,
    ) -> None:
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        self.task = check_task(task)
        if variation is not None and not 0 <= variation < NUM_VARIATIONS:
            raise ValueError(f"variation must be in [0, {NUM_VARIATIONS}), got {variation}")
        kwargs: dict[str, Any] = {"render_mode": render_mode}
        if camera_name is not None:
            kwargs["camera_name"] = camera_name
        self.env = ALL_V3_ENVIRONMENTS[self.task](**kwargs)
        self.metadata = self.env.metadata
        self.render_mode = render_mode
        self.fixed_variation = variation
        self.benchmark_seed = benchmark_seed
        self.variation: int | None = None
        self._variation_rng: np.random.Generator | None = None
        # The goal is part of the observation (set_task makes it so); recompute the space that
        # Meta-World cached while the goal was still hidden.
        self.env._partially_observable = False
        self.env.__dict__.pop("sawyer_observation_space", None)
        space = self.env.sawyer_observation_space
        low, high = space.low.astype(np.float32), space.high.astype(np.float32)
        self.observation_space = gym.spaces.Box(low, high, dtype=np.float32)
        self.action_space = self.env.action_space

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        if seed is not None or self._variation_rng is None:
            self._variation_rng = np.random.default_rng(seed)
        options = options or {}
        if "variation" in options:
            variation = int(options["variation"])
            if not 0 <= variation < NUM_VARIATIONS:
                raise ValueError(f"variation must be in [0, {NUM_VARIATIONS}), got {variation}")
        elif self.fixed_variation is not None:
            variation = self.fixed_variation
        else:
            variation = int(self._variation_rng.integers(NUM_VARIATIONS))
        self.variation = variation
        self.env.set_task(_variations(self.task, self.benchmark_seed)[variation])
        obs, info = self.env.reset(seed=seed)
        return obs.astype(np.float32), {**info, "variation": variation}

    def render(self) -> Any:
        return self.env.render()

    def close(self) -> None:
        self.env.close()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        info = {**info, "success": bool(info.get("success", 0.0)), "variation": self.variation}
        return obs.astype(np.float32), float(reward), bool(terminated), bool(truncated), info


def make_env(task: str, **kwargs: Any) -> MetaWorldEnv:
    """Entry point for ``gym.make("orl/<task>")``; see :class:`MetaWorldEnv` for kwargs."""
    return MetaWorldEnv(task, **kwargs)


def make(task: str, **kwargs: Any) -> gym.Env:
    """``gym.make`` of a registered Meta-World task (adds the 500-step TimeLimit)."""
    return gym.make(env_id(task), **kwargs)


def quiet_scripted_policies() -> None:
    """Ignore the warning Meta-World's scripted experts give at most steps ("Constant(s) may be
    too high"): it says nothing new, :func:`expert_policy` clips their actions to [-1, 1]."""
    warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high", category=UserWarning)


def expert_policy(task: str):
    """Meta-World's scripted expert for ``task``: ``policy(obs) -> action`` (clipped to [-1, 1])."""
    from metaworld.policies import ENV_POLICY_MAP

    with warnings.catch_warnings():  # "Constant(s) may be too high": we clip below anyway
        warnings.simplefilter("ignore", UserWarning)
        scripted = ENV_POLICY_MAP[check_task(task)]()

    def act(obs: np.ndarray) -> np.ndarray:
        return np.clip(scripted.get_action(np.asarray(obs, dtype=np.float64)), -1.0, 1.0)

    return act


def register_all() -> None:
    """Register every task as ``orl/<task>`` (idempotent)."""
    for task in MT50_TASKS:
        if f"orl/{task}" not in gym.registry:
            gym.register(
                id=f"orl/{task}",
                entry_point=ENTRY_POINT,
                max_episode_steps=MAX_EPISODE_STEPS,
                kwargs={"task": task},
                disable_env_checker=True,
            )
