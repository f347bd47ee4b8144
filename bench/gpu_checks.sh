#!/usr/bin/env bash
# Every GPU-only check and figure of the DT core and HarmoDT, in one run (about 5 minutes on an
# H100): the Triton kernel against its reference on the GPU, the paper-sized training step vs the
# GPT2-style reference (batch 256, bf16, compile), the HarmoDT step vs the deep-copy baseline,
# and the batched 50-task inference vs one forward per task. Needs torch with CUDA, triton and
# the project installed (pip install -e .).
set -euo pipefail
cd "$(dirname "$0")"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python -m pytest -q -p no:cacheprovider ../tests/orl/test_kernels.py ../tests/orl/test_layers.py
python train_throughput.py --device cuda --bf16 --compile --reference --batch-sizes 256 --steps 50
python train_throughput.py --device cuda --bf16 --batch-sizes 8 256 --steps 50
python harmodt_step.py --device cuda --batch-size 8 --steps 200
python harmodt_batched_inference.py --device cuda --tasks 50 --envs 10 --steps 50
