#!/usr/bin/env bash
# The CPU-budget MT10 comparison of docs/results/harmodt.md: MTDT, Prompt-DT, HarmoDT-R and
# HarmoDT-F on near-optimal data, 2 seeds each, small model. Usage:
#   orl data generate MT10 --level near-optimal --episodes 50
#   bash bench/harmodt_mt10_cpu.sh runs/harmodt-mt10 && python bench/summarize_runs.py runs/harmodt-mt10
set -euo pipefail
out=${1:-runs/harmodt-mt10}
common=(data.tasks=[MT10] data.level=near-optimal data.episodes=50 data.generate_missing=false
        model.embed_dim=64 model.n_layer=2 model.n_head=2 sampler.batch_size=16
        sampler.rtg_scale=1000.0 train.steps=3000 train.lr=1e-3 train.warmup_steps=300
        train.eval_every=1500 train.checkpoint_every=1500 eval.episodes=10 eval.num_envs=10
        run.logger=csv run.out_dir="$out")
for seed in 0 1; do
  train-agent "${common[@]}" run.seed=$seed run.name=mtdt-s$seed agent.name=mtdt
  train-agent "${common[@]}" run.seed=$seed run.name=prompt_dt-s$seed agent.name=prompt_dt \
    sampler.prompt_len=5 sampler.prompt_source=random
  for variant in R F; do
    train-agent "${common[@]}" run.seed=$seed run.name=harmodt-$variant-s$seed agent.name=harmodt \
      agent.harmodt.variant=$variant sampler.task_mode=round_robin sampler.prompt_len=5 \
      sampler.prompt_source=random
  done
  orl eval "$out/harmodt-F-s$seed" --task-agnostic --json "$out/harmodt-F-s$seed/eval_task_agnostic.json"
done
