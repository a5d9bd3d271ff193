#!/usr/bin/env bash
# The next GPU session's first call (about 8 minutes on one H200): verify the opt-in direct
# launches, then measure with and without them in the same call. Results land in $OUT.
#   device tool: bash scripts/gpu_session.sh
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:$PWD PYTHONUNBUFFERED=1
KAT_AUTOTUNE=0 timeout 120 python3 -m pytest -q -p no:cacheprovider tests/ops/test_fast_path.py \
  tests/ops/test_group_rational.py 2>&1 | tail -4 | tee "$OUT/pytest.txt"
for d in 0 1; do
  KAT_DIRECT_LAUNCH=$d timeout 90 python3 scripts/host_overhead.py --json "$OUT/host_direct$d.json" \
    2>&1 | tee "$OUT/host_direct$d.txt"
done
KAT_DIRECT_LAUNCH=1 timeout 200 python3 -m kat.cli.bench op --dtypes bf16 --providers kat \
  --json "$OUT/op_bf16.json" 2>&1 | tee "$OUT/op_bf16.txt"
for d in 0 1; do
  KAT_DIRECT_LAUNCH=$d timeout 150 python3 -m kat.cli.bench model --iters 15 --repeats 3 \
    --json "$OUT/model_direct$d.json" 2>&1 | tail -3 | tee "$OUT/model_direct$d.txt"
done
