"""Roll out Meta-World's scripted experts under an action-noise schedule into Minari datasets.

Work is split into shards of episodes, run in worker processes, and written to a staging
folder (``<root>/.orl-staging``). A dataset is assembled and moved into place with one rename
only when all its shards exist, so an interrupted run leaves no partial dataset; rerunning with
the same parameters reuses the finished shards. Processes that generate the same datasets at
the same time take turns: each holds a lock per dataset (``<root>/.orl-staging/.locks``) from
the existence check to the final rename, so a second one waits and then finds it made.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from importlib import metadata as pkg_metadata
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from orl.datasets.registry import (
    LEVELS,
    DatasetExistsError,
    check_level,
    dataset_dir,
    datasets_root,
    metaworld_id,
)
from orl.datasets.writer import EPISODE_KEYS, STAGING, write_dataset
from orl.io import atomic_path


@dataclass(frozen=True)
class NoiseSchedule:
    """Per-episode action noise, each value linear from the first episode to the last.

    Every step the expert's action gets Gaussian noise of std ``std``; with probability
    ``random_prob`` it is replaced by a uniform random action in [-1, 1].
    """

    std_start: float
    std_end: float
    random_prob_start: float = 0.0
    random_prob_end: float = 0.0

    def per_episode(self, episodes: int) -> tuple[np.ndarray, np.ndarray]:
        """(std, random_prob) of each of ``episodes`` episodes."""
        return (
            np.linspace(self.std_start, self.std_end, episodes),
            np.linspace(self.random_prob_start, self.random_prob_end, episodes),
        )


#: ``near-optimal`` mimics a learning agent's replay buffer: noise falls from high to low over the
#: dataset, so returns spread from poor to expert; ``sub-optimal`` is its noisier first half.
#: Gaussian noise alone leaves easy tasks (reach, drawer-close) solved at any std, hence the
#: random-action probability, which makes the early episodes poor on every task.
LEVEL_SCHEDULES: dict[str, NoiseSchedule] = {
    "expert": NoiseSchedule(0.1, 0.1),
    "near-optimal": NoiseSchedule(1.0, 0.1, 0.95, 0.0),
    "sub-optimal": NoiseSchedule(1.0, 0.55, 0.95, 0.475),
    "random": NoiseSchedule(0.0, 0.0, 1.0, 1.0),
}


@dataclass
class GenerationConfig:
    """What to generate: one dataset per (task, level)."""

    tasks: list[str]
    levels: list[str] = field(default_factory=lambda: ["expert"])
    episodes: int = 50
    seed: int = 0
    benchmark_seed: int = 0  # seed of the 50 goal variations (Meta-World's MT1 seed)
    version: int = 0
    workers: int = 0  # 0: one per CPU core
    episodes_per_shard: int = 5

    def __post_init__(self) -> None:
        from orl.envs.benchmarks import resolve_tasks

        self.tasks = resolve_tasks(self.tasks)
        self.levels = [check_level(level) for level in self.levels]
        if self.episodes <= 0:
            raise ValueError(f"episodes must be positive, got {self.episodes}")
        if self.episodes_per_shard <= 0:
            raise ValueError(f"episodes_per_shard must be positive, got {self.episodes_per_shard}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0 (0: one per CPU core), got {self.workers}")


def _versions() -> dict[str, str]:
    names = ("orl", "metaworld", "mujoco", "gymnasium", "minari", "numpy")
    out = {}
    for name in names:
        try:
            out[name] = pkg_metadata.version(name)
        except pkg_metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def generation_params(cfg: GenerationConfig, task: str, level: str) -> dict[str, Any]:
    """Everything that determines a dataset's content (stored in its metadata)."""
    schedule = LEVEL_SCHEDULES[level]
    stds, random_probs = schedule.per_episode(cfg.episodes)
    return {
        "task": task,
        "level": level,
        "episodes": cfg.episodes,
        "seed": cfg.seed,
        "benchmark_seed": cfg.benchmark_seed,
        "variation_of_episode": "episode_index % 50",
        "noise": {
            **asdict(schedule),
            "kind": "expert + gaussian(std), replaced by uniform with random_prob; clipped to [-1, 1]",
        },
        "noise_std_per_episode": stds.round(6).tolist(),
        "random_prob_per_episode": random_probs.round(6).tolist(),
        "versions": _versions(),
    }


def episode_rng(seed: int, task: str, level: str, episode: int) -> np.random.Generator:
    """The noise RNG of one episode: independent of how episodes are split across workers."""
    from orl.envs.metaworld import MT50_TASKS

    return np.random.default_rng([seed, MT50_TASKS.index(task), LEVELS.index(level), episode])


# ------------------------------------------------------------------------------ workers
_ENVS: dict[tuple[str, int], Any] = {}


def rollout_episode(
    env: Any, policy: Any, rng: np.random.Generator, variation: int, std: float, random_prob: float
) -> dict[str, np.ndarray]:
    """One episode to its natural end; observations has one more row than actions."""
    obs, _ = env.reset(seed=int(rng.integers(2**31)), options={"variation": variation})
    observations, actions, rewards, successes = [obs], [], [], [False]
    terminated = truncated = False
    while not (terminated or truncated):
        shape = env.action_space.shape
        if rng.random() < random_prob:
            action = rng.uniform(-1.0, 1.0, size=shape)
        else:
            action = np.clip(policy(obs) + rng.normal(0.0, std, size=shape), -1.0, 1.0)
        action = action.astype(np.float32)
        obs, reward, terminated, truncated, info = env.step(action)
        observations.append(obs)
        actions.append(action)
        rewards.append(reward)
        successes.append(info["success"])
    last = np.arange(len(actions)) == len(actions) - 1
    return {
        "observations": np.asarray(observations, dtype=np.float32),
        "actions": np.asarray(actions, dtype=np.float32),
        "rewards": np.asarray(rewards, dtype=np.float64),
        "terminations": last & terminated,
        "truncations": last & truncated,
        "success": np.asarray(successes, dtype=bool),
    }


def run_shard(task: str, level: str, episodes: list[int], params: dict[str, Any], out: str) -> int:
    """Roll out ``episodes`` of (task, level) into the npz shard ``out``; returns env steps."""
    from orl.envs.metaworld import NUM_VARIATIONS, MetaWorldEnv, expert_policy

    key = (task, params["benchmark_seed"])
    if key not in _ENVS:
        env = MetaWorldEnv(task, benchmark_seed=params["benchmark_seed"])
        _ENVS[key] = (env, expert_policy(task))
    env, policy = _ENVS[key]
    stds, random_probs = params["noise_std_per_episode"], params["random_prob_per_episode"]
    rollouts = [
        rollout_episode(env, policy, episode_rng(params["seed"], task, level, i),
                        i % NUM_VARIATIONS, stds[i], random_probs[i])
        for i in episodes
    ]
    arrays = {k: np.concatenate([r[k] for r in rollouts]) for k in rollouts[0]}
    arrays["lengths"] = np.array([len(r["actions"]) for r in rollouts])
    with atomic_path(Path(out)) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return int(arrays["lengths"].sum())


# ------------------------------------------------------------------------- assembly
def _read_shards(paths: list[Path]) -> list[dict[str, np.ndarray]]:
    """Split shard files back into per-episode dicts, in shard order."""
    episodes = []
    for path in paths:
        with np.load(path) as shard:
            lengths = shard["lengths"]
            cuts = {"steps": np.cumsum(lengths)[:-1], "obs": np.cumsum(lengths + 1)[:-1]}
            parts = [
                np.split(shard[k], cuts["obs"] if k in ("observations", "success") else cuts["steps"])
                for k in EPISODE_KEYS
            ]
            episodes += [dict(zip(EPISODE_KEYS, ep)) for ep in zip(*parts)]
    return episodes


def assemble(dataset_id: str, shards: list[Path], params: dict[str, Any], root: Path,
             overwrite: bool = False) -> Path:
    """Build the Minari dataset from finished shards in staging, then move it into place."""
    from orl.envs.metaworld import env_id

    return write_dataset(
        dataset_id, _read_shards(shards), root, {"orl_generation": params}, overwrite=overwrite,
        env=env_id(params["task"]), eval_env=env_id(params["task"]),
        algorithm_name=f"metaworld-scripted-expert+noise ({params['level']})",
        description=(f"Meta-World {params['task']}: scripted expert with Gaussian action noise, "
                     f"level {params['level']}; generated by orl (see metadata 'orl_generation')."),
        requirements=["metaworld==3.1.1", "mujoco==3.3.0"],
    )


# ------------------------------------------------------------------------- front end
def _plan(cfg: GenerationConfig, root: Path, task: str, level: str) -> tuple[Path, list[list[int]], dict]:
    """Staging folder, episode shards and params of one dataset; resets stale staging."""
    params = generation_params(cfg, task, level)
    stage = root / STAGING / metaworld_id(task, level, cfg.version)
    params_file = stage / "params.json"
    comparable = {k: v for k, v in params.items() if k != "versions"}
    if stage.exists():
        try:
            previous = json.loads(params_file.read_text())
        except (OSError, json.JSONDecodeError):
            previous = None
        if previous != comparable:
            shutil.rmtree(stage)
    stage.mkdir(parents=True, exist_ok=True)
    if not params_file.exists():
        with atomic_path(params_file) as tmp:
            tmp.write_text(json.dumps(comparable))
    n = cfg.episodes_per_shard
    shards = [list(range(i, min(i + n, cfg.episodes))) for i in range(0, cfg.episodes, n)]
    return stage, shards, params


def _run_jobs(jobs: list[tuple], workers: int, on_done: Callable[[tuple], None]) -> None:
    """Run ``run_shard`` jobs in-process (one worker) or in a spawn pool; call ``on_done``."""
    if workers <= 1:  # in-process: no worker start-up cost, easy to debug
        for job in jobs:
            run_shard(*job)
            on_done(job)
        return
    from orl.envs.metaworld import quiet_scripted_policies

    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                             initializer=quiet_scripted_policies) as pool:
        futures = {pool.submit(run_shard, *job): job for job in jobs}
        try:
            for future in as_completed(futures):
                future.result()
                on_done(futures[future])
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise


def _finish(dataset_id: str, stage: Path, num_shards: int, params: dict, root: Path,
            overwrite: bool) -> None:
    """Assemble a dataset whose shards are all written, then clear its staging folder."""
    files = [stage / f"shard-{k:05d}.npz" for k in range(num_shards)]
    assemble(dataset_id, files, params, root, overwrite=overwrite)
    shutil.rmtree(stage)
    for parent in stage.parents:  # drop emptied namespace folders of the staging area
        if parent == root or any(parent.iterdir()):
            break
        parent.rmdir()


@contextmanager
def dataset_locks(root: Path, dataset_ids: list[str]) -> Iterator[None]:
    """Hold an exclusive lock on every dataset id (taken in sorted order: no deadlock), waiting
    while another process holds one; released on exit, also when the process dies."""
    folder = Path(root) / STAGING / ".locks"
    folder.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        for dataset_id in sorted(set(dataset_ids)):
            lock = stack.enter_context(open(folder / (dataset_id.replace("/", "--") + ".lock"), "a"))
            fcntl.flock(lock, fcntl.LOCK_EX)
            stack.callback(fcntl.flock, lock, fcntl.LOCK_UN)
        yield


def generate(
    cfg: GenerationConfig,
    root: Path | None = None,
    exist_ok: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> list[str]:
    """Generate every (task, level) dataset of ``cfg``; returns their ids.

    An existing dataset raises :class:`DatasetExistsError` unless ``exist_ok`` (keep it and
    skip) or ``overwrite`` (replace it once the new one is complete).
    """
    root = Path(root) if root is not None else datasets_root()
    ids = [metaworld_id(task, level, cfg.version) for task in cfg.tasks for level in cfg.levels]
    with dataset_locks(root, ids):
        return _generate(cfg, root, exist_ok, overwrite, progress)


def _generate(cfg: GenerationConfig, root: Path, exist_ok: bool, overwrite: bool,
              progress: bool) -> list[str]:
    """``generate`` under the datasets' locks."""
    from tqdm.auto import tqdm

    ids, todo = [], []
    for task in cfg.tasks:
        for level in cfg.levels:
            dataset_id = metaworld_id(task, level, cfg.version)
            ids.append(dataset_id)
            if dataset_dir(dataset_id, root).exists() and not overwrite:
                if exist_ok:
                    continue
                raise DatasetExistsError(
                    f"Dataset {dataset_id!r} already exists in {root}. Pass --overwrite to "
                    "replace it, --exist-ok to keep it, or choose another --version."
                )
            todo.append((dataset_id, task, level))

    plans = {dataset_id: _plan(cfg, root, task, level) for dataset_id, task, level in todo}
    pending: dict[str, set[str]] = {}
    jobs = []
    for dataset_id, task, level in todo:
        stage, shards, params = plans[dataset_id]
        outs = [str(stage / f"shard-{k:05d}.npz") for k in range(len(shards))]
        pending[dataset_id] = {out for out in outs if not Path(out).exists()}
        jobs += [(task, level, eps, params, out) for eps, out in zip(shards, outs)
                 if out in pending[dataset_id]]

    def finish(dataset_id: str) -> None:
        stage, shards, params = plans[dataset_id]
        _finish(dataset_id, stage, len(shards), params, root, overwrite)

    remaining = sum(len(job[2]) for job in jobs)
    bar = tqdm(total=cfg.episodes * len(todo), initial=cfg.episodes * len(todo) - remaining,
               unit="ep", desc="generate", disable=not (progress and jobs))  # no bar for 0 episodes

    def shard_done(job: tuple) -> None:
        task, level, episodes, _, out = job
        bar.update(len(episodes))
        dataset_id = metaworld_id(task, level, cfg.version)
        pending[dataset_id].discard(out)
        if not pending[dataset_id]:
            finish(dataset_id)

    for dataset_id in [d for d, outs in pending.items() if not outs]:
        finish(dataset_id)  # every shard was written by an earlier, interrupted run
    _run_jobs(jobs, min(cfg.workers or os.cpu_count() or 1, max(len(jobs), 1)), shard_done)
    bar.close()
    return ids
