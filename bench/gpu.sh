#!/usr/bin/env bash
# The GPU pass of the fused log-prob head, in one go: compiled Triton kernels against float64 maths,
# then the benchmark (naive, chunked, triton and Liger's fused linear cross-entropy; --check first).
#
# Prepare once, here, in the repository root (Liger is pure Python + Triton; the GPU machine has torch,
# triton and pytest but no package index; .whl/ is git-ignored):
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl liger-kernel==0.8.5
# Then run it with the device tool: command "bash bench/gpu.sh", carry [".whl"]. Results land in $OUT
# (or bench/results/ without it); commit bench/results/logprobs-<machine>.json.
set -euo pipefail
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
out=${OUT:-bench/results}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/gpu.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_logprobs.py tests/test_logprobs_triton.py 2>&1 | tee "$out/gpu-tests.log"
machine=$(python3 -c "from bench.logprobs import machine_name; print(machine_name('cuda'))")
python3 -m bench.logprobs --check --json "$out/logprobs-$machine.json" 2>&1 | tee "$out/bench.log"
