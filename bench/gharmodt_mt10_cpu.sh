#!/usr/bin/env bash
# G-HarmoDT at the CPU budget of docs/results/harmodt.md (same data, model, steps and
# evaluation as bench/harmodt_mt10_cpu.sh): HarmoDT-F with the tasks clustered into GROUPS
# groups, evaluated with task ids and without them (the gate picks each env's group mask).
# Usage:
#   orl data generate MT10 --level near-optimal --episodes 50 --version 1
#   bash bench/gharmodt_mt10_cpu.sh runs/gharmodt-mt10 3
set -euo pipefail
out=${1:-runs/gharmodt-mt10}
groups=${2:-3}
common=(data.tasks=[MT10] data.level=near-optimal data.version=1 data.generate_missing=false
        model.embed_dim=64 model.n_layer=2 model.n_head=2 sampler.batch_size=16
        sampler.rtg_scale=1000.0 train.steps=3000 train.lr=1e-3 train.warmup_steps=300
        train.eval_every=1500 train.checkpoint_every=1500 eval.episodes=10 eval.num_envs=10
        run.logger=csv run.out_dir="$out")
run_seed() {
  local seed=$1 name=gharmodt-F-g$groups-s$1
  OMP_NUM_THREADS=1 train-agent "${common[@]}" run.seed=$seed run.name=$name agent.name=harmodt \
    agent.harmodt.variant=F agent.harmodt.num_groups=$groups sampler.task_mode=round_robin \
    sampler.prompt_len=5 sampler.prompt_source=random
  OMP_NUM_THREADS=1 orl eval "$out/$name" --task-agnostic --seed $seed \
    --json "$out/$name/eval_task_agnostic.json"
}
run_seed 0 & first=$!
run_seed 1 & second=$!
wait $first; wait $second   # the two seeds side by side (one core each)
