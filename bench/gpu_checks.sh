#!/usr/bin/env bash
# Every GPU-only check and figure of the DT core and HarmoDT, in one run (about 4 minutes on an
# H100): the kernel tests and the CUDA-graph training tests on the GPU, the batched 50-task
# inference vs one forward per task (other kernel tiles, a profile), the HarmoDT step vs the
# deep-copy baseline, and the paper-sized training step vs the GPT2-style reference (bf16; eager,
# CUDA graphs, compile + CUDA graphs). Needs torch with CUDA, triton, pytest, tqdm, safetensors,
# pyyaml and h5py; the project need not be installed (the package layout is linked in place).
# Each part has its own time limit; a failing part does not stop the others. LOG=FILE keeps a
# copy of the output; PARTS="1 2 ..." runs only those parts.
set -uo pipefail
cd "$(dirname "$0")/.."
for part in agents datasets envs; do  # pyproject maps orl.<part> to <part>/
    python3 -c "import orl.$part" 2>/dev/null || ln -sfn "../$part" "orl/$part"
done
export PYTHONPATH="$PWD:$PWD/bench" PYTHONUNBUFFERED=1
exec > >(tee "${LOG:-/dev/null}") 2>&1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
parts=" ${PARTS:-1 2 3 4 5} "
run() {
    local n=$1 limit=$2; shift 2
    [[ $parts == *" $n "* ]] || return 0
    echo "## $*"; timeout "$limit" "$@" || echo "!! exit $? (error, or past ${limit}s): $*"
}
run 1 45 python3 -m pytest -q -p no:cacheprovider tests/orl/test_kernels.py
run 2 90 python3 -m pytest -q -p no:cacheprovider tests/orl/test_trainer.py \
    tests/agents/test_harmodt_agent.py -k "cuda or task_gradients"
run 3 50 python3 bench/harmodt_batched_inference.py --device cuda --tasks 50 --envs 10 --steps 20 \
    --tiles 128,64,32,4 64,128,32,4 128,128,32,8 64,64,64,4
run 4 50 python3 bench/harmodt_step.py --device cuda --batch-size 8 --steps 200 --cuda-graphs
run 5 150 python3 bench/train_throughput.py --device cuda --bf16 --reference --batch-sizes 256 \
    --steps 50 --modes eager graphs compile+graphs
