#!/bin/bash
# The GPU checks and figures of issue 23 in one command, for a machine with a CUDA GPU:
#   1. tests/e2e/test_gpu.py (both modes fit on the GPU, resume, the compiled update with CUDA graphs
#      against eager and audited against float64 through a short run);
#   2. benchmarks/update_rates.py on configs/mbpo_hopper.yaml: SAC updates/s eager, compiled, and
#      compiled with CUDA graphs, and the hours of SAC updates of a Hopper run of 125k env steps.
# Logs go to $OUT (default /tmp/gpu_checks). Where the machine lacks packages, put their wheels in
# .whl/ (see the closing notes of issue 23): they are installed into /tmp/site first.
#
#   bash benchmarks/gpu_checks.sh
set -o pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_checks}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())" 2>&1 | tee "$OUT/device.txt" || exit 1
status=0
python3 -m pytest tests/e2e/test_gpu.py -q -rA 2>&1 | tee "$OUT/test_gpu.log" || status=1
python3 benchmarks/update_rates.py --config configs/mbpo_hopper.yaml --device cuda --env-steps 125000 2>"$OUT/update_rates.err" | tee "$OUT/update_rates.md" || status=1
exit $status
