#!/usr/bin/env bash
# Offline ablation at one ratio: criterion x reconstruction x scope, and the LIAR ridge, scored by
# how far each pruned model's actions move from the unpruned model's on held-out windows.
#   bash bench/liar_ablation.sh RUN_DIR OUT_DIR [RATIO]
set -euo pipefail
run=${1:?usage: bash bench/liar_ablation.sh RUN_DIR OUT_DIR [RATIO]}
out=${2:?usage: bash bench/liar_ablation.sh RUN_DIR OUT_DIR [RATIO]}
ratio=${3:-0.5}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
models=()
prune() {  # name, then orl prune options
  local name=$1; shift
  [ -d "$out/$name" ] || orl prune "$run" --ratio "$ratio" --calib-episodes 5 -o "$out/$name" "$@" > "$out/$name.log"
  models+=("$out/$name")
}
for criterion in magnitude wanda taylor; do
  for scope in per-layer global; do
    for reconstruct in none liar; do
      prune "$criterion-$scope-$reconstruct" --criterion "$criterion" --scope "$scope" --reconstruct "$reconstruct"
    done
  done
done
for ridge in 1e-5 1e-2 1e-1; do
  prune "wanda-per-layer-liar-ridge$ridge" --criterion wanda --reconstruct liar --ridge "$ridge"
done
python "$here/liar_fidelity.py" "$run" "${models[@]}" --first-episode 10 --episodes 10
