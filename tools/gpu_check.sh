#!/usr/bin/env bash
# One device call: real-GPU tests, then the op benchmark. Usage (device tool): bash tools/gpu_check.sh
# Results land in $OUT (or ./gpu_out when OUT is unset).
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:$PWD PYTHONUNBUFFERED=1 KAT_GOLDEN_DIR=$PWD/.data/golden
python3 - <<'PY' 2>&1 | tee "$OUT/env.txt"
import torch, triton, timm; print(torch.__version__, triton.__version__, timm.__version__, torch.cuda.get_device_name())
PY
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  timeout 300 python3 -m pytest -q -x -p no:cacheprovider tests/ops tests/test_layers.py tests/models/test_kat.py \
    2>&1 | tee "$OUT/pytest_gpu.txt" | tail -15
fi
if [ "${SKIP_OP:-0}" != 1 ]; then
  timeout 300 python3 -m kat.cli.bench op --json "$OUT/op.json" 2>&1 | tee "$OUT/op.txt"
fi
if [ "${MODEL:-0}" = 1 ]; then
  timeout 400 python3 -m kat.cli.bench model ${MODEL_ARGS:-} --json "$OUT/model.json" 2>&1 | tee "$OUT/model.txt"
fi
