#!/usr/bin/env bash
# The next GPU session's calls on one H200, results in $OUT. Carry .data/golden (the golden tests
# look there): device tool `run` with carry [".data/golden"].
#   STAGE=check  bash scripts/gpu_session.sh   (~4 min) op tests on the real kernels (incl. the
#                two-launch coefficient reduction, not yet run on a GPU), host time per call, op bench
#   STAGE=models bash scripts/gpu_session.sh   (~8 min) KAT vs ViT eager (plain, then with norm2+act1
#                fused: --fuse-norm-act1, not yet run on a GPU), then compiled (both sides)
#                with the rational as our Triton op and as plain PyTorch (Inductor can fuse that)
#   STAGE=profile bash scripts/gpu_session.sh  (~2 min) KAT-T vs ViT-T step: eager vs CUDA graph, and
#                torch.profiler tables by host time (where KAT-T's extra ~12 ms/step of host goes)
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:$PWD PYTHONUNBUFFERED=1
case "${STAGE:-check}" in
check)
  KAT_AUTOTUNE=0 timeout 200 python3 -m pytest -q -p no:cacheprovider tests/ops/test_fast_path.py \
    tests/ops/test_group_rational.py tests/ops/test_fuzz.py tests/test_norm_act1.py 2>&1 | tail -6 | tee "$OUT/pytest.txt"
  timeout 90 python3 scripts/host_overhead.py --json "$OUT/host.json" 2>&1 | tee "$OUT/host.txt"
  timeout 200 python3 -m kat.cli.bench op --providers kat --cuda-graphs --json "$OUT/op.json" 2>&1 | tee "$OUT/op.txt"
  ;;
models)
  timeout 150 python3 -m kat.cli.bench model --iters 15 --repeats 3 --json "$OUT/model_eager.json" \
    2>&1 | tail -3 | tee "$OUT/model_eager.txt"
  timeout 150 python3 -m kat.cli.bench model --fuse-norm-act1 --iters 15 --repeats 3 \
    --json "$OUT/model_eager_fused.json" 2>&1 | tail -3 | tee "$OUT/model_eager_fused.txt"
  for impl in ${IMPLS:-triton torch}; do
    timeout 170 python3 -m kat.cli.bench model --compile --sizes tiny small --rational-impl $impl --iters 15 \
      --repeats 3 --json "$OUT/model_compile_$impl.json" 2>&1 | grep -E "^(tiny|small)|ratio|Error" \
      | tee "$OUT/model_compile_$impl.txt"
  done
  ;;
profile)
  timeout 240 python3 scripts/profile_step.py --size tiny --out "$OUT" 2>&1 | tee "$OUT/profile_step.txt"
  ;;
esac
