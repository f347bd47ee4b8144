"""What looking up CompoFormer Prune's frozen features saves a late stage's training.

A CompoFormer Prune run of the OCW10 study's config (random weights: the cost does not depend
on them), every earlier task grown, trains stage ``--stage`` for ``--steps`` steps twice: with
the frozen modules' features of every segment computed once at the stage's start
(``FrozenFeatures``, what a run does) and with them computed at every step (what it did
before). Prints the one-off computation, ms per step of both, a whole stage's time at the
study's steps per stage, and whether the two give the same losses on the same batches.
Needs the OCW10 expert datasets (``orl data generate OCW10 --level expert --episodes 20``).

    OMP_NUM_THREADS=1 python bench/compoformer_frozen_features.py [--stage 9] [--steps 200]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", default="studies/ocw10.yaml")
    parser.add_argument("--variant", default="compoformer-prune")
    parser.add_argument("--stage", type=int, default=9)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    from orl.agents.compoformer.method import FrozenFeatures
    from orl.agents.continual.runner import ContinualRun
    from orl.config import from_dict
    from orl.config.experiment import ExperimentConfig
    from orl.study.spec import load_study

    study = load_study(args.study)
    spec = next(r for r in study.runs if r.variant == args.variant)
    out = Path(tempfile.mkdtemp())
    config = {**spec.config, "run": {**spec.config["run"], "name": "bench", "out_dir": str(out)},
              "train": {**spec.config["train"], "checkpoint_every": 0}}
    run = ContinualRun(from_dict(ExperimentConfig, config), out / "bench")
    run.run_dir.mkdir(parents=True)
    method, agent = run.method, run.agent
    method.source[: args.stage] = torch.arange(args.stage)  # every earlier task grew
    steps_per_stage = spec.config["train"]["steps"]

    computing = {"seconds": 0.0}
    compute = method.compute_frozen_features

    def timed_compute(*a, **k) -> None:
        start = time.perf_counter()
        compute(*a, **k)
        computing["seconds"] = time.perf_counter() - start

    method.compute_frozen_features = timed_compute
    callbacks = method.callbacks
    seconds = {}
    for name, cached in (("looked up", True), ("every step", False)):
        method.callbacks = (callbacks if cached else
                            lambda a: [c for c in callbacks(a) if not isinstance(c, FrozenFeatures)])
        computing["seconds"] = 0.0
        start = time.perf_counter()
        run.train_phase(args.stage, name.replace(" ", "-"), steps=args.steps, evaluate=False)
        seconds[name] = (time.perf_counter() - start - computing["seconds"], computing["seconds"])
    method.callbacks = callbacks

    agent.start_stage(args.stage)
    agent.train()
    sampler = run.sampler(args.stage)
    compute(agent, sampler)
    same = 0
    for _ in range(10):
        batch = sampler.sample()
        torch.manual_seed(0)
        looked_up = method.loss(agent, batch)[0]
        features, method.frozen_features = method.frozen_features, None
        torch.manual_seed(0)
        computed = method.loss(agent, batch)[0]
        method.frozen_features = features
        same += bool(looked_up == computed)
    print(f"{args.variant}, stage {args.stage} ({args.stage} earlier modules), "
          f"{sampler.store.num_steps} segments, {args.steps} steps:")
    for name, (train, once) in seconds.items():
        stage = once + train / args.steps * steps_per_stage
        print(f"  {name:>10}: {train / args.steps * 1e3:6.1f} ms/step, computed once {once:5.1f} s,"
              f" a {steps_per_stage}-step stage {stage / 60:5.1f} min")
    print(f"  the same loss, bit for bit, on {same} of 10 batches")


if __name__ == "__main__":
    main()
