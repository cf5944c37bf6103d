#!/usr/bin/env bash
# The GPU checks of the training part (issue 6) in ONE command, for a session with a lent GPU:
#   bash bench/gpu_check.sh            # from the repository root; results also under $OUT or /tmp/gpu_check
# 1. pytest -m gpu (bf16 vs fp32 step, no host sync inside a step, overfit on GPU, DDP/NCCL if 2 GPUs)
# 2. bench/train_speed.py --device cuda: bf16 + fused Adam (the defaults), then fp32, then torch.compile
# Needs only python3 with torch, numpy, pandas, h5py, pyyaml, pytest (no mlflow / snakemake / dvc).
# Fits one 10-minute device call (the timeouts below add up to 580 s); SKIP_COMPILE=1 drops step 3.
# Record the printed tables in bench/RESULTS.md with the card's name.
set -uo pipefail
cd "$(dirname "$0")/.."
# no install there: the folder pipeline/ is importable as fian_pipeline (pyproject's package-dir) via a link
SHIM=$(mktemp -d) && ln -s "$PWD/pipeline" "$SHIM/fian_pipeline"
export PYTHONPATH="$PWD:$SHIM${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
RES=${OUT:-/tmp/gpu_check}
mkdir -p "$RES"
status=0

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$RES/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" | tee -a "$RES/gpu.txt"

echo "== pytest -m gpu"
timeout 150 $PY -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$RES/pytest_gpu.txt" || status=1

echo "== train_speed: bf16 autocast, fused Adam, split preloaded on the GPU"
timeout 180 $PY -m bench.train_speed --device cuda --amp bf16 2>&1 | tee "$RES/train_speed_bf16.txt" || status=1

echo "== train_speed: fp32 (amp off), for comparison"
timeout 110 $PY -m bench.train_speed --device cuda --amp off --iters 10 --repeats 2 2>&1 | tee "$RES/train_speed_fp32.txt" || status=1

if [ "${SKIP_COMPILE:-0}" = 1 ]; then exit $status; fi
echo "== train_speed: bf16 + torch.compile (is it worth it?)"
timeout 140 $PY -m bench.train_speed --device cuda --amp bf16 --compile --warmup 10 --iters 10 --repeats 2 \
  --datasets charades activitynet 2>&1 | tee "$RES/train_speed_compile.txt" || status=1

exit $status
