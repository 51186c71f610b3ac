#!/usr/bin/env bash
# One command for a CUDA machine (about 6-8 minutes on an H100 / H200; installs nothing):
#   1. bench/bench_gpu.py: SD1.5-size 512x512 and SDXL-size 1024x1024, 20 Euler steps, it/s and peak VRAM for
#      ours (fp16 + SDPA; normal, --compile, --medvram, --lowvram, --fp8) and diffusers on the same file;
#   2. the GPU tests (tests/test_gpu.py: fp16 vs CPU, no host sync under torch's sync debug mode, the memory
#      modes, fp8, compile). The rest of the suite runs on the CPU only (its references are CPU computations).
# Usage: bench/gpu.sh [bench_gpu.py options]   (PYTHON=... to pick the interpreter)
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || { echo "gpu.sh: no CUDA device" >&2; exit 2; }
"$PY" -c "import torch; print('device:', torch.cuda.get_device_name(), 'torch', torch.__version__)"
export HF_HUB_OFFLINE=1
timeout 420 "$PY" bench/bench_gpu.py "$@"
bench=$?
timeout 150 "$PY" -m pytest -q -p no:randomly tests/test_gpu.py
tests=$?
echo "gpu.sh: bench exit $bench, tests exit $tests"
[ $bench -eq 0 ] && [ $tests -eq 0 ]
