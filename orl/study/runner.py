"""Running a study's runs: one run (``run_one``), a local process pool and a Ray cluster.

A run is a ``train-agent`` run (the same ``orl.experiment.train``, run dirs and Trainer) in
``<runs dir>/<study>/<key>-<config hash>``: started when its dir is new, resumed when it is not,
then evaluated further (the study's ``evals``) and recorded, holding the run's lock
(``orl.study.places``) all along. A run whose record is in the store is skipped.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from orl.config.experiment import EvalConfig
from orl.experiment import write_json
from orl.study.places import Places, is_finished, run_lock
from orl.study.progress import Progress
from orl.study.record import EXTRA_PREFIX, build_record, provenance
from orl.study.spec import RunSpec, Study, StudyError
from orl.study.store import ResultsStore, split_records

FORWARDED_ENV = ("MINARI_DATASETS_PATH", "WANDB_MODE", "MPLBACKEND")  # driver -> Ray tasks


def _provenance_file(run_dir: Path) -> Path:
    return run_dir.with_name(f".{run_dir.name}.provenance.json")


def _time_file(run_dir: Path) -> Path:
    """Seconds spent at the run, and when the attempt under way began."""
    return run_dir.with_name(f".{run_dir.name}.time.json")


def _train(run: RunSpec, run_dir: Path) -> None:
    from orl.config import from_dict
    from orl.config.experiment import ExperimentConfig
    from orl.experiment import train

    if (run_dir / "config.yaml").is_file():
        train(resume=run_dir)
        return
    cfg = from_dict(ExperimentConfig, {**run.config, "run": {
        **run.config["run"], "name": run_dir.name, "out_dir": str(run_dir.parent)}})
    train(cfg=cfg)


def _extra_eval(study: Study, run: RunSpec, run_dir: Path, name: str) -> None:
    """Evaluate the final checkpoint as ``evals.<name>`` says; the result goes to a JSON file in
    the run dir (so a rerun does not repeat it)."""
    from orl.api import load_agent
    from orl.eval.evaluate import evaluate

    out = run_dir / f"{EXTRA_PREFIX}{name}.json"
    if out.is_file():
        return
    options = study.extra_evals[name]
    checkpoint = run_dir
    if options.prune is not None:
        checkpoint = _pruned(run, run_dir, name, options)
    policy, tasks = load_agent(checkpoint, device="cpu" if run.config["train"]["device"] == "cpu"
                               else None, with_tasks=True, task_agnostic=options.task_agnostic)
    ev = EvalConfig(**run.config["eval"])
    result = evaluate(policy, tasks, episodes=ev.episodes, seed=run.seed, progress=False,
                      **ev.rollout_options())
    write_json(out, result.to_dict())


def _pruned(run: RunSpec, run_dir: Path, name: str, options: Any) -> Path:
    """The run's final checkpoint pruned (and fine-tuned) as ``evals.<name>`` says; made once."""
    import shutil

    from orl.agents.liar import CalibrationConfig, PruneConfig, finetune_checkpoint, prune_checkpoint
    from orl.config import from_dict

    pruned = run_dir / f"pruned-{name}"
    if not pruned.exists():
        calibration = from_dict(CalibrationConfig, {"seed": run.seed, **(options.calibration or {})},
                                f"evals.{name}.calibration")
        prune_checkpoint(run_dir, pruned, from_dict(PruneConfig, options.prune, f"evals.{name}.prune"),
                         calibration)
    if not options.finetune_steps:
        return pruned
    tuned = run_dir / f"finetuned-{name}"
    final = tuned / "checkpoints" / "final"
    if not final.exists():
        shutil.rmtree(tuned, ignore_errors=True)  # an interrupted fine-tuning restarts
        finetune_checkpoint(pruned, tuned, steps=options.finetune_steps, lr=options.finetune_lr,
                            seed=run.seed)
    return final


def run_one(study: Study, key: str, places: Places, threads: int | None = None) -> dict[str, Any]:
    """Train (or resume) and evaluate run ``key``; return its record. When another process is
    working on the run (e.g. one left from a killed study) this waits for it, then finishes
    what it left."""
    run = next((r for r in study.runs if r.key == key), None)
    if run is None:
        raise StudyError(f"study {study.name} has no run {key!r}")
    if threads:
        import torch

        torch.set_num_threads(threads)
    run_dir = places.run_dir(run)
    with run_lock(run_dir):
        start = time.perf_counter()
        _open_attempt(run_dir)
        started = _provenance_file(run_dir)
        if not started.is_file():  # the code that started the run, kept for its record
            write_json(started, provenance())
        if not is_finished(run_dir):
            _train(run, run_dir)
        for name in run.evals:
            _extra_eval(study, run, run_dir, name)
        spent = _close_attempt(run_dir, time.perf_counter() - start)
        return build_record(study.name, run, run_dir, spent, json.loads(started.read_text()))


def _open_attempt(run_dir: Path) -> None:
    """Note when this attempt began; an earlier attempt that never closed (killed) counts from
    its start to the last write in the run dir."""
    path = _time_file(run_dir)
    times = json.loads(path.read_text()) if path.is_file() else {"seconds": 0.0}
    if "open_since" in times:
        last = max((f.stat().st_mtime for f in run_dir.rglob("*") if f.is_file()),
                   default=times["open_since"])
        times["seconds"] += max(0.0, last - times["open_since"])
    write_json(path, {"seconds": times["seconds"], "open_since": time.time()})


def _close_attempt(run_dir: Path, seconds: float) -> float:
    """Add this attempt's seconds to the run's total and return it."""
    path = _time_file(run_dir)
    total = json.loads(path.read_text())["seconds"] + seconds
    write_json(path, {"seconds": total})
    return total


def prepare(study: Study) -> None:
    """Run the study's ``prepare`` commands whose output does not exist yet."""
    from orl.datasets.registry import dataset_dir

    for step in study.file.prepare:
        if step.creates and (Path(step.creates).exists()
                             or (dataset_dir(step.creates) / "data" / "metadata.json").is_file()):
            continue
        print(f"prepare: {shlex.join(step.command)}", flush=True)
        subprocess.run(step.command, check=True)


def preflight(study: Study, runs: list[RunSpec]) -> None:
    """The checks a run would make of its data before training, for every run before any
    starts: unseen tasks disjoint from the training tasks, and (for datasets already on disk)
    a prompt no longer than the shortest trajectory. Errors name the run."""
    from orl.config import from_dict
    from orl.config.experiment import ExperimentConfig
    from orl.datasets.loading import load
    from orl.datasets.registry import DatasetNotFoundError
    from orl.datasets.sampler import check_prompt_len
    from orl.experiment import dataset_sources, unseen_tasks

    checked: set[tuple[tuple[str, ...], int]] = set()
    for run in runs:
        cfg = from_dict(ExperimentConfig, run.config)
        try:
            unseen_tasks(cfg)
            if cfg.continual.enabled or cfg.sampler.prompt_len <= 0:
                continue
            on_disk = replace(cfg, data=replace(cfg.data, generate_missing=False))
            sources = tuple(dataset_sources(on_disk)[0])
            if sources and (sources, cfg.sampler.prompt_len) not in checked:
                check_prompt_len(load(list(sources)), cfg.sampler.prompt_len)
                checked.add((sources, cfg.sampler.prompt_len))
        except DatasetNotFoundError:
            continue  # made by the run itself (data.generate_missing)
        except ValueError as err:
            raise StudyError(f"study {study.name}, run {run.key}: {err}") from err


def pending(study: Study, places: Places, only: list[str] | None = None) -> list[RunSpec]:
    """The selected runs without a current record: first those already started (a partial run's
    checkpoints are on disk and its record is nearest), then seed by seed (every condition's first
    seed, then every second seed, ...), so a study stopped early has its conditions at even counts."""
    current, _ = split_records(ResultsStore(places.results).records(), study.runs)
    order = {seed: i for i, seed in enumerate(study.file.seeds)}
    todo = [run for run in study.select(only) if run.key not in current]
    # stable: study order within a seed
    return sorted(todo, key=lambda run: (not places.run_dir(run).is_dir(), order[run.seed]))


def resolve_counts(study: Study, workers: int | None, threads: int | None) -> tuple[int, int]:
    """Runs at once (0 or None: one per core) and torch threads per run (0 or None: the study's
    ``budget.threads_per_run``); negative counts are errors."""
    if (workers or 0) < 0 or (threads or 0) < 0:
        raise StudyError(f"--workers and --threads must be >= 0 (0: the default), got {workers} and "
                         f"{threads}")
    return workers or os.cpu_count() or 1, threads or study.file.budget.threads_per_run


def run_local(study: Study, places: Places, only: list[str] | None = None,
              workers: int | None = None, threads: int | None = None) -> list[str]:
    """Run the pending runs ``workers`` at a time (default: one per core), each in its own
    process (``orl study run-one``) with ``threads`` torch threads. Returns the failed keys."""
    workers, threads = resolve_counts(study, workers, threads)
    todo = pending(study, places, only)
    if not todo:
        print(f"study {study.name}: every selected run is recorded")
        return []
    prepare(study)
    preflight(study, todo)
    logs = places.runs / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    progress = Progress(study, places, todo, workers)
    queue, running, failed = list(todo), [], []
    previous = signal.signal(signal.SIGTERM, _interrupt)  # killed like Ctrl-C: the runs stop too
    try:
        while queue or running:
            while queue and len(running) < workers:
                run = queue.pop(0)
                command = [sys.executable, "-m", "orl.cli", "study", "run-one", str(study.path), run.key,
                           "--runs-dir", str(places.runs.parent), "--results-dir",
                           str(places.results.parent), "--threads", str(threads)]
                log = open(logs / f"{run.key}.log", "a")
                running.append((subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                                 env=env), run.key, log))
            time.sleep(0.2)
            for job in list(running):
                proc, key, log = job
                if proc.poll() is None:
                    continue
                running.remove(job)
                log.close()
                if proc.returncode != 0:
                    failed.append(key)
                    progress.bar.write(f"{key}: failed (exit {proc.returncode}), see {logs / key}.log")
                progress.done(_record_of(places, study, key), key)
    finally:
        signal.signal(signal.SIGTERM, previous)
        for proc, _, log in running:  # interrupted: the runs stop and resume next time
            proc.terminate()
            log.close()
        progress.close()
    return failed


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _record_of(places: Places, study: Study, key: str) -> dict[str, Any] | None:
    current, _ = split_records(ResultsStore(places.results).records(), study.runs)
    return current.get(key)


def check_ray_address(address: str, timeout: float = 5.0) -> None:
    """Fail fast, with a clear error, when nothing answers at a Ray head's ``host:port``."""
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise StudyError(f"Ray address {address!r} is not host:port (e.g. 127.0.0.1:6379).")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise StudyError(f"Ray address {address!r} does not answer ({err}): start the head with "
                         f"`ray start --head --port {port}` or pass the right --address.") from err


def run_ray(study: Study, places: Places, address: str, only: list[str] | None = None,
            threads: int | None = None) -> list[str]:
    """Run the pending runs as Ray tasks on the cluster at ``address`` (``num_cpus`` = threads per
    run); each returns its record, which this process appends to the store. Run dirs are written
    on the nodes, under the same runs dir. Returns the failed keys."""
    try:
        import ray
    except ImportError as err:
        raise ImportError("--launcher ray needs Ray: pip install 'orl[cluster]'") from err
    _, threads = resolve_counts(study, None, threads)
    check_ray_address(address)
    todo = pending(study, places, only)
    if not todo:
        print(f"study {study.name}: every selected run is recorded")
        return []
    prepare(study)
    preflight(study, todo)
    forwarded = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    ray.init(address=address, log_to_driver=False, runtime_env={"env_vars": forwarded})
    try:
        task = ray.remote(num_cpus=threads)(_ray_task)
        futures = {task.remote(study, run.key, asdict(places), threads): run.key for run in todo}
        store = ResultsStore(places.results)
        slots = int(ray.cluster_resources().get("CPU", 1)) // threads or 1
        progress = Progress(study, places, todo, slots)
        failed = []
        while futures:
            ready, _ = ray.wait(list(futures), num_returns=1)
            key = futures.pop(ready[0])
            try:
                record = ray.get(ready[0])
            except Exception as err:  # a failed run does not stop the others
                failed.append(key)
                progress.bar.write(f"{key}: failed on the cluster: {err}")
                record = None
            if record is not None:
                store.append(record)
            progress.done(record, key)
        progress.close()
        return failed
    finally:
        ray.shutdown()


def _ray_task(study: Study, key: str, places: dict[str, Any], threads: int) -> dict[str, Any]:
    """A Ray task: one run on whichever node Ray placed it."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    return run_one(study, key, Places(**places), threads)
