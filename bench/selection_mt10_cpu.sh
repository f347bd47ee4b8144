#!/usr/bin/env bash
# The CPU-budget experiments of docs/results/selection.md. Usage:
#   orl data generate MT10 --level expert near-optimal sub-optimal random --episodes 20
#   bash bench/selection_mt10_cpu.sh runs/selection-mt10 && python bench/summarize_runs.py runs/selection-mt10
# 1. Mixed-quality MT10 pool (10 tasks x 4 levels x 20 episodes): an encoder MTDT is trained on
#    the whole pool (its mean-pooled hidden states are the DiSF/DATAMASK features), 10% is
#    selected by random, top-return, DiSF and DATAMASK, and an MTDT is trained on each selection
#    (seeds 0 and 1) and evaluated on MT10.
# 2. NTK-Selector: a target task with 3 expert trajectories; a DT trained on them alone (seeds 0
#    and 1) is the baseline and, at seed 0, the warmed-up model NTK-Selector differentiates;
#    5% of the other nine tasks' pool is added, chosen by NTK-Selector or at random.
# STEPS, EVAL_EPISODES, EVAL_MAX_STEPS (episode cap at evaluation), TARGET, VERSION and JOBS
# (parallel runs) override the defaults.
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # the CPU is shared: one thread per process
out=${1:-runs/selection-mt10}
steps=${STEPS:-1000}
episodes=${EVAL_EPISODES:-5}
max_steps=${EVAL_MAX_STEPS:-null}
target=${TARGET:-door-open-v3}
version=${VERSION:-0}
jobs=${JOBS:-2}
mt10=(reach-v3 push-v3 pick-place-v3 door-open-v3 drawer-open-v3 drawer-close-v3
      button-press-topdown-v3 peg-insert-side-v3 window-open-v3 window-close-v3)
levels=(expert near-optimal sub-optimal random)
pool=() aux=()
for task in "${mt10[@]}"; do
  for level in "${levels[@]}"; do
    pool+=("metaworld/$task/$level-v0")
    [[ $task == "$target" ]] || aux+=("metaworld/$task/$level-v0")
  done
done
list() { local IFS=,; echo "[$*]"; }
common=(model.embed_dim=64 model.n_layer=2 model.n_head=2 sampler.batch_size=16
        sampler.rtg_scale=1000.0 train.steps=$steps train.lr=1e-3 train.warmup_steps=100
        train.eval_every=0 train.checkpoint_every=$steps eval.episodes=$episodes
        eval.num_envs=$episodes eval.max_steps=$max_steps run.logger=csv run.out_dir=$out)
queue=$out/queue.txt
mkdir -p "$out"
: > "$queue"
run_cmd() {  # the train-agent command of run $1 (args after: overrides); resumes a started run
  if [[ -e $out/$1/checkpoints/final ]]; then return; fi
  if [[ -e $out/$1/config.yaml ]]; then printf '%q ' train-agent --resume "$out/$1"
  else printf '%q ' train-agent "${common[@]}" "run.name=$1" "${@:2}"; fi
  echo
}
select_once() {  # select_once ID ARGS...: skip when the dataset exists
  orl data list | grep -x "$1" > /dev/null || orl data select "${@:2}" -o "$1"
}

# --- 1. mixed-quality MT10 pool, 10% selections
bash -c "$(run_cmd encoder agent.name=mtdt "data.datasets=$(list "${pool[@]}")")"
methods=(random top-return disf datamask)
for method in "${methods[@]}"; do
  select_once "selection/mt10-$method-v$version" "${pool[@]}" --method "$method" --budget 0.1 \
    --model "$out/encoder" --json "$out/select-$method.json"
done
for seed in 0 1; do
  for method in "${methods[@]}"; do
    run_cmd "$method-s$seed" run.seed=$seed agent.name=mtdt \
      "data.datasets=[selection/mt10-$method-v$version]" "data.eval_tasks=[MT10]" >> "$queue"
  done
done

# --- 2. NTK-Selector: a few target trajectories plus auxiliary ones from the other tasks
few="selection/$target-few-v$version"
target_eval=("data.eval_tasks=[$target]" eval.episodes=$((2 * episodes)) eval.num_envs=$((2 * episodes)))
select_once "$few" "metaworld/$target/expert-v0" --method random --budget 3 --features raw
bash -c "$(run_cmd target-only-s0 run.seed=0 agent.name=dt "data.datasets=[$few]" "${target_eval[@]}")"
run_cmd target-only-s1 run.seed=1 agent.name=dt "data.datasets=[$few]" "${target_eval[@]}" >> "$queue"
select_once "selection/$target-aux-ntk-v$version" "${aux[@]}" --method ntk --budget 0.05 \
  --target "$few" --model "$out/target-only-s0" --json "$out/select-aux-ntk.json"
select_once "selection/$target-aux-random-v$version" "${aux[@]}" --method random --budget 0.05 \
  --features raw --json "$out/select-aux-random.json"
for seed in 0 1; do
  for method in ntk random; do
    run_cmd "target+$method-s$seed" run.seed=$seed agent.name=mtdt agent.task_embedding=false \
      "data.datasets=[$few,selection/$target-aux-$method-v$version]" "${target_eval[@]}" >> "$queue"
  done
done
xargs -d '\n' -P "$jobs" -I{} bash -c '{}' < "$queue"
