"""Batched policy evaluation: every task's envs in one gymnasium vector env, one policy call per step.

Episodes run in waves. A wave resets all ``N = len(tasks) * num_envs`` sub-envs, then steps them
together until each has finished its episode; env ``k`` of a task plays episode
``wave * num_envs + k``. Episode ``i`` of a task is reset with seed ``seed + i`` and, for Meta-World,
goal variation ``i % 50``, so results do not depend on ``num_envs`` or on the other tasks.

With ``video_dir`` the first ``video_episodes`` episodes of every task are also rendered
(``render_mode="rgb_array"``) and written as MP4 files ``<task>-episode<i>.mp4`` by the sub-env
that played them (so async workers write their own).

A finished sub-env is never stepped again in its wave: :class:`SingleEpisode` wraps every sub-env,
keeps the vector env from seeing the end of the episode (so it never auto-resets) and answers
further steps with the final observation and zero reward, without touching the env. This is
cheap (no physics for finished envs) and safe for envs that must not be stepped after truncation
(Meta-World raises then), with sync and async vector envs alike.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector.utils import batch_differing_spaces
from tqdm.auto import tqdm

from orl.envs import ENV_IDS, env_id, resolve_tasks
from orl.envs.metaworld import NUM_VARIATIONS
from orl.eval.policy import Policy, keeps_rows, reset_policy
from orl.eval.result import EvalResult, TaskResult
from orl.eval.video import require_video_writer, write_video

VECTOR_MODES = ("sync", "async")


@dataclass(frozen=True)
class EvalTask:
    """A task to evaluate: its name (as reported) and the gymnasium id its envs are made from."""

    name: str
    env_id: str
    metaworld: bool

    def reset_options(self, episode: int) -> dict[str, Any]:
        """Reset options of episode ``episode``: the goal variation for Meta-World."""
        return {"variation": episode % NUM_VARIATIONS} if self.metaworld else {}


def resolve_eval_tasks(tasks: str | Sequence[str]) -> list[EvalTask]:
    """Meta-World tasks and benchmarks, gymnasium ids and short MuJoCo names (``"hopper"``) as
    :class:`EvalTask` s, in order, without repeats. A string may be a comma-separated list."""
    items = [s.strip() for s in (tasks.split(",") if isinstance(tasks, str) else tasks)]
    resolved: list[EvalTask] = []
    for item in filter(None, items):
        if item in gym.registry and not item.startswith("orl/"):
            resolved.append(EvalTask(item, item, metaworld=False))
        elif item.lower() in ENV_IDS:
            resolved.append(EvalTask(item, ENV_IDS[item.lower()], metaworld=False))
        else:
            try:
                names = resolve_tasks(item.removeprefix("orl/"))
            except ValueError as err:
                raise ValueError(f"{err} Nor is it a registered gymnasium id.") from None
            resolved.extend(EvalTask(name, env_id(name), metaworld=True) for name in names)
    if not resolved:
        raise ValueError(f"No tasks in {tasks!r}.")
    return list(dict.fromkeys(resolved))


class SingleEpisode(gym.Wrapper):
    """Plays one episode per reset, then freezes without stepping the wrapped env again.

    The end of the episode (termination, truncation, or ``max_steps`` steps) is reported as
    ``info["episode_over"]``; ``terminated``/``truncated`` stay False so a vector env never
    auto-resets. Once over, ``step`` returns the final observation and reward 0. ``plan`` holds
    the options of the next reset (set per sub-env with ``VectorEnv.set_attr``); ``None`` skips the
    next episode: the env is reset but over at once. ``video_path`` (also set per sub-env) records
    the next episode there: frames rendered after the reset and after every step.
    """

    def __init__(self, env: gym.Env, max_steps: int | None = None,
                 stop_on_success: bool = False) -> None:
        super().__init__(env)
        self.max_steps = max_steps
        self.stop_on_success = stop_on_success
        self.plan: dict[str, Any] | None = {}
        self.video_path: str | None = None
        self._frames: list[np.ndarray] = []
        self._over = True
        self._steps = 0
        self._obs: Any = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        plan = self.plan
        obs, info = self.env.reset(seed=seed, options={**(options or {}), **(plan or {})})
        self._obs, self._steps, self._over = obs, 0, plan is None
        self._frames = [self.env.render()] if self.video_path and not self._over else []
        return obs, info

    def step(self, action):
        if self._over:
            return self._obs, 0.0, False, False, {"episode_over": True}
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._steps += 1
        capped = self.max_steps is not None and self._steps >= self.max_steps
        succeeded = self.stop_on_success and bool(info.get("success", False))
        self._obs, self._over = obs, bool(terminated or truncated or capped or succeeded)
        if self._frames:
            self._frames.append(self.env.render())
            if self._over:
                write_video(self.video_path, self._frames, self.metadata.get("render_fps") or 30)
                self._frames = []
        return obs, reward, False, False, {**info, "episode_over": self._over}


def make_env(env_id: str, max_steps: int | None, render: bool = False,
             stop_on_success: bool = False) -> SingleEpisode:
    """One sub-env of the evaluation vector env (module level, so async workers can pickle it)."""
    env = gym.make(env_id, render_mode="rgb_array") if render else gym.make(env_id)
    return SingleEpisode(env, max_steps, stop_on_success)


class EnvPool:
    """Evaluation envs kept from one :func:`evaluate` call to the next, for a run that evaluates
    the same tasks again and again (periodic and continual evaluations): each env is made once (a
    Meta-World env takes 0.1-0.2 s to make, as long as dozens of its steps). Every episode resets
    its env with the episode's seed and goal variation, so the results are those of fresh envs.
    It holds, per env id, as many envs as the largest call used (the memory that call needed
    anyway: about 25 MiB per Meta-World env). Used by sync vector envs without video;
    :meth:`close` closes the envs."""

    def __init__(self) -> None:
        self._free: dict[tuple[str, int | None, bool], list[SingleEpisode]] = {}

    def take(self, env_id: str, max_steps: int | None, stop_on_success: bool) -> SingleEpisode:
        """A free env of ``env_id`` with these settings, made if there is none."""
        free = self._free.get((env_id, max_steps, stop_on_success))
        return free.pop() if free else make_env(env_id, max_steps, stop_on_success=stop_on_success)

    def give_back(self, env_ids: Sequence[str], envs: Sequence[SingleEpisode]) -> None:
        """Return envs taken for ``env_ids`` (same order), free for the next call."""
        for name, env in zip(env_ids, envs, strict=True):
            self._free.setdefault((name, env.max_steps, env.stop_on_success), []).append(env)

    def close(self) -> None:
        for envs in self._free.values():
            for env in envs:
                env.close()
        self._free.clear()


def make_vector_env(
    env_ids: Sequence[str], max_steps: int | None = None, vector: str = "sync", render: bool = False,
    stop_on_success: bool = False, env_pool: EnvPool | None = None,
) -> gym.vector.VectorEnv:
    """A vector env with one :class:`SingleEpisode` sub-env per id (``render``: made with
    ``render_mode="rgb_array"``, to record videos; ``env_pool``: sub-envs taken from the pool,
    for a sync vector env without rendering).

    Ids may differ (Meta-World tasks, or any envs with equal observation shapes and equal
    action spaces); to check that, every distinct id is made once per process.
    """
    if env_pool is not None and (vector != "sync" or render):
        raise ValueError("an env pool serves sync vector envs without rendering")
    if vector not in VECTOR_MODES:
        raise ValueError(f"vector must be one of {VECTOR_MODES}, got {vector!r}")
    spaces = {name: _spaces(name, max_steps) for name in dict.fromkeys(env_ids)}
    first_obs, first_action = spaces[env_ids[0]]
    for name, (obs_space, action_space) in spaces.items():
        if (obs_space.shape, obs_space.dtype) != (first_obs.shape, first_obs.dtype):
            raise ValueError(f"{name} and {env_ids[0]} have different observation shapes or "
                             "dtypes; evaluate them in separate calls")
        if action_space != first_action:
            raise ValueError(f"{name} and {env_ids[0]} have different action spaces; "
                             "evaluate them in separate calls")
    batched = batch_differing_spaces([spaces[name][0] for name in env_ids])
    observation_mode = (batched, first_obs)
    if env_pool is not None:
        env_fns = [functools.partial(env_pool.take, name, max_steps, stop_on_success)
                   for name in env_ids]
    else:
        env_fns = [functools.partial(make_env, name, max_steps, render, stop_on_success)
                   for name in env_ids]
    kwargs = dict(observation_mode=observation_mode, autoreset_mode=gym.vector.AutoresetMode.DISABLED)
    if vector == "async":
        return gym.vector.AsyncVectorEnv(env_fns, **kwargs)
    return gym.vector.SyncVectorEnv(env_fns, **kwargs)


def _spaces(name: str, max_steps: int | None) -> tuple[gym.spaces.Box, gym.spaces.Box]:
    """Observation and action space of env ``name``, checked to suit evaluation."""
    obs_space, action_space, time_limit = env_info(name)
    for kind, space in (("observation", obs_space), ("action", action_space)):
        if not isinstance(space, gym.spaces.Box):
            raise ValueError(f"{name}: evaluation needs a Box {kind} space, got {space}")
    if max_steps is None and time_limit is None:
        raise ValueError(f"{name} has no time limit: pass max_steps")
    return obs_space, action_space


@functools.cache
def env_info(name: str) -> tuple[gym.Space, gym.Space, int | None]:
    """Spaces and time limit of env ``name``, made once per process (Meta-World envs are slow
    to make)."""
    env = gym.make(name)
    env.close()
    return env.observation_space, env.action_space, env.spec and env.spec.max_episode_steps


def evaluate(
    policy: Policy,
    tasks: str | Sequence[str],
    episodes: int = 10,
    num_envs: int = 10,
    seed: int = 0,
    vector: str = "sync",
    max_steps: int | None = None,
    stop_on_success: bool = False,
    progress: bool = True,
    video_dir: str | Path | None = None,
    video_episodes: int = 1,
    env_pool: EnvPool | None = None,
) -> EvalResult:
    """Run ``episodes`` episodes of every task with ``policy`` acting on all envs at once.

    ``tasks``: Meta-World tasks or benchmarks (``"MT10"``), gymnasium ids (``"Hopper-v5"``) or
    short MuJoCo names, as a list or a comma-separated string; repeats are evaluated once.
    ``num_envs`` envs per task run together (fewer if ``episodes`` is smaller); ``vector`` is
    ``"sync"`` or ``"async"`` (one process per env). ``max_steps`` caps the steps of an episode
    (a truncation); ``stop_on_success`` ends an episode at its first step with
    ``info["success"]`` true (success rates are unchanged; returns and lengths count the steps
    until then, and evaluating a policy that succeeds early costs fewer env steps). The policy
    gets ``reset(N, tasks=...)`` with one task name per env if its ``reset`` accepts ``tasks``.
    ``video_dir``: also record the first ``video_episodes`` episodes of every task as
    ``<video_dir>/<task>-episode<i>.mp4`` (needs the ``video`` extra; MuJoCo renders offscreen
    with ``MUJOCO_GL=egl`` or ``osmesa`` on machines without a display). ``env_pool``
    (:class:`EnvPool`): take the envs from it and give them back after the call instead of
    making and closing them (ignored with ``vector="async"`` or a video).
    """
    if episodes <= 0 or num_envs <= 0:
        raise ValueError(f"episodes and num_envs must be positive, got {episodes} and {num_envs}")
    if max_steps is not None and max_steps <= 0:
        raise ValueError(f"max_steps must be positive, got {max_steps}")
    if video_dir is not None:
        if video_episodes <= 0:
            raise ValueError(f"video_episodes must be positive, got {video_episodes}")
        require_video_writer()
        Path(video_dir).mkdir(parents=True, exist_ok=True)
    eval_tasks = resolve_eval_tasks(tasks)
    per_task = min(num_envs, episodes)
    env_task = np.repeat(np.arange(len(eval_tasks)), per_task)  # (N,) task of each sub-env
    slot = np.tile(np.arange(per_task), len(eval_tasks))  # (N,) index of the env in its task
    task_names = [eval_tasks[t].name for t in env_task]
    returns = np.zeros((len(eval_tasks), episodes))
    lengths = np.zeros((len(eval_tasks), episodes), dtype=np.int64)
    successes = np.full((len(eval_tasks), episodes), np.nan)

    env_ids = [eval_tasks[t].env_id for t in env_task]
    if vector != "sync" or video_dir is not None:
        env_pool = None
    envs = make_vector_env(env_ids, max_steps, vector, render=video_dir is not None,
                           stop_on_success=stop_on_success, env_pool=env_pool)
    start = time.perf_counter()
    try:
        with tqdm(total=len(eval_tasks) * episodes, desc="eval", unit="ep",
                  disable=not progress) as bar:
            for wave in range(math.ceil(episodes / per_task)):
                episode = wave * per_task + slot
                run = episode < episodes
                envs.set_attr("plan", [eval_tasks[t].reset_options(e) if r else None
                                       for t, e, r in zip(env_task, episode, run)])
                if video_dir is not None:
                    envs.set_attr("video_path", [
                        str(Path(video_dir) / f"{eval_tasks[t].name}-episode{e:03d}.mp4")
                        if r and e < video_episodes else None
                        for t, e, r in zip(env_task, episode, run)])
                obs, _ = envs.reset(seed=[seed + int(e) for e in episode])
                reset_policy(policy, len(env_task), task_names)
                ret, length, success = _run_wave(policy, envs, obs, run)
                rows, cols = env_task[run], episode[run]
                returns[rows, cols], lengths[rows, cols] = ret[run], length[run]
                successes[rows, cols] = success[run]
                bar.update(int(run.sum()))
        seconds = time.perf_counter() - start
        if env_pool is not None:  # after a failure the envs are closed, not reused
            env_pool.give_back(env_ids, envs.envs)
            envs.envs = []  # the pool's now: closing the vector env leaves them open
    finally:
        envs.close()
    results = [
        TaskResult(task.name, task.env_id, returns[i], lengths[i], successes[i])
        for i, task in enumerate(eval_tasks)
    ]
    return EvalResult(results, env_steps=int(lengths.sum()), seconds=seconds)


def _run_wave(
    policy: Policy, envs: gym.vector.VectorEnv, obs: np.ndarray, live: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step all envs until every ``live`` one has finished its episode; a policy that can
    ``keep`` rows acts only for the envs still playing.

    Returns per env: the return, the length and whether ``info["success"]`` was ever true
    (NaN for envs that never reported a success).
    """
    n = envs.num_envs
    live = live.copy()
    ret, length = np.zeros(n), np.zeros(n, dtype=np.int64)
    success, reports = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    reward = np.zeros(n)
    space = envs.single_action_space
    action = np.zeros((n, *space.shape), dtype=space.dtype)  # finished envs ignore theirs
    acting = np.arange(n)  # the envs the policy acts for
    keeps = keeps_rows(policy)
    while live.any():
        if keeps and not live[acting].all():
            policy.keep(np.flatnonzero(live[acting]))
            acting = acting[live[acting]]
        acted = np.asarray(policy.act(obs[acting], reward[acting]), dtype=space.dtype)
        if acted.shape != (len(acting), *space.shape):
            raise ValueError(f"policy.act returned actions of shape {acted.shape}, "
                             f"expected {(len(acting), *space.shape)}")
        action[acting] = acted
        obs, reward, _, _, info = envs.step(action)
        reward = np.where(live, reward, 0.0)
        ret += reward
        length += live
        if "success" in info:
            reports |= live & info["_success"]
            success |= live & info["_success"] & info["success"].astype(bool)
        live &= ~info["episode_over"]
    return ret, length, np.where(reports, success, np.nan)
