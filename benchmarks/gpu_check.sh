#!/usr/bin/env bash
# The one prepared GPU check for a lent H100/H200 (through the workplace's device tool), from the
# repository root:  bash benchmarks/gpu_check.sh      (results land in $OUT, default /tmp/gpu-out)
#  1. logbus.kernels compiled on CUDA: tests/kernels/test_kernels.py, then correctness + bandwidth + speed-up
#  2. the sample pipeline: no stall under set_sync_debug_mode("error"), end-to-end eval ratios
#  3. the whole product: a Composer Trainer with SampleLogger and the drop-in WandBLogger (offline)
#     plus the local backend (benchmarks/gpu_composer_check.py)
# The GPU image has torch and triton but neither composer nor wandb, and reaches no registry: run
# `bash benchmarks/gpu_wheels.sh` here first and carry .whl (device run: carry=[".whl"]); logbus itself
# is installed without dependencies. Without .whl, step 3 is skipped and says so.
set -uo pipefail
export PYTHONUNBUFFERED=1 OUT="${OUT:-/tmp/gpu-out}"
mkdir -p "$OUT"
status=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
python3 -m pip install -q --no-deps --no-build-isolation --no-index --target /tmp/logbus-site . >"$OUT/install.log" 2>&1 \
  || { cat "$OUT/install.log"; exit 1; }
export PYTHONPATH=/tmp/logbus-site
timeout 150 python3 -m pytest -q -p no:cacheprovider --noconftest tests/kernels/test_kernels.py 2>&1 | tail -4 | tee "$OUT/kernel_tests.txt" || status=1
timeout 120 python3 benchmarks/gpu_kernels_check.py >"$OUT/gpu_kernels.stdout" 2>&1 || status=1
tail -c 1500 "$OUT/gpu_kernels.stdout"
timeout 240 python3 benchmarks/gpu_pipeline_check.py 2>&1 | tail -c 3000 || status=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/logbus-deps .whl/*.whl \
    >"$OUT/wheels.log" 2>&1 || { tail -5 "$OUT/wheels.log"; status=1; }
  PYTHONPATH=/tmp/logbus-site:/tmp/logbus-deps PATH=/tmp/logbus-deps/bin:$PATH \
    timeout 300 python3 benchmarks/gpu_composer_check.py 2>&1 | tail -c 4000 || status=1
else
  echo "gpu_check: no .whl folder (bash benchmarks/gpu_wheels.sh here, then carry .whl): Composer check skipped"
  status=1
fi
exit $status
