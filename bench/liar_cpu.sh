#!/usr/bin/env bash
# LIAR results of docs/results/liar.md on a 2-core CPU: train an MTDT on MT10 near-optimal and a
# DT on a generated HalfCheetah D4RL-format file, then sweep the pruning ratio for both.
#   bash bench/liar_cpu.sh OUT_DIR
# Needs the MT10 near-optimal datasets (20 episodes per task):
#   orl data generate MT10 --level near-optimal --episodes 20
set -euo pipefail
out=${1:?usage: bash bench/liar_cpu.sh OUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

# 1. data: HalfCheetah-v5 episodes of CEM-tuned open-loop gaits plus random ones (seed 0)
[ -f "$out/halfcheetah-cem.hdf5" ] || python "$here/liar_halfcheetah_data.py" "$out/halfcheetah-cem.hdf5" --seed 0

# 2. policies: 3 layers, 4 heads, embed 64, 2000 steps, seed 0
[ -d "$out/runs/mtdt-mt10/checkpoints/final" ] || train-agent --config "$here/../configs/cpu/mtdt_mt10_small.yaml" \
  data.episodes=20 data.generate_missing=false model.n_layer=3 model.n_head=4 \
  train.steps=2000 train.warmup_steps=200 eval.episodes=5 eval.num_envs=5 \
  run.logger=csv run.seed=0 run.out_dir="$out/runs" run.name=mtdt-mt10
[ -d "$out/runs/dt-halfcheetah/checkpoints/final" ] || train-agent agent.name=dt \
  data.datasets="[$out/halfcheetah-cem.hdf5]" data.eval_tasks=[HalfCheetah-v5] \
  model.embed_dim=64 model.n_layer=3 model.n_head=4 model.max_timestep=1000 \
  sampler.context_len=20 sampler.batch_size=32 sampler.rtg_scale=1000 \
  train.steps=2000 train.lr=1e-3 train.warmup_steps=200 train.checkpoint_every=1000 \
  eval.episodes=5 eval.num_envs=5 run.logger=csv run.seed=0 run.out_dir="$out/runs" run.name=dt-halfcheetah

# 3. sweeps: ratios 0.1-0.7, wanda scores, none / LIAR / 100-step fine-tuning (resumable)
python "$here/liar_sweep.py" "$out/runs/mtdt-mt10" "$out/sweep-mt10" --episodes 3 --num-envs 3 \
  --finetune-steps 100 --seed 0
python "$here/liar_sweep.py" "$out/runs/dt-halfcheetah" "$out/sweep-halfcheetah" --episodes 3 \
  --num-envs 3 --finetune-steps 100 --seed 0 --eval-tasks HalfCheetah-v5
