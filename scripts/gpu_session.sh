#!/usr/bin/env bash
# The next GPU session's calls on one H200, results in $OUT. Carry .data/golden (the golden tests
# look there): device tool `run` with carry [".data/golden"].
#   STAGE=check  bash scripts/gpu_session.sh   (~5 min) op tests on the real kernels (changed since
#                the last GPU run: backward loads pipelined through shared memory (STAGES configs),
#                two-element tiles, backward grid of one wave from the compiled kernel's
#                occupancy with its KAT_ONE_WAVE=0 A/B), host time per
#                call, op bench with CUDA graphs (bf16 first: #2's targets), one quick model pair.
#                Tuning choices go to $OUT/tuning.json (which configs won).
#   STAGE=models bash scripts/gpu_session.sh   (~8 min) KAT vs ViT eager, plain and with norm2+act1
#                fused (--fuse-norm-act1)
#   STAGE=compile bash scripts/gpu_session.sh  (~8 min) both sides compiled, modes default and
#                reduce-overhead, tiny and small (IMPL=torch: the rational as plain PyTorch)
#   STAGE=profile bash scripts/gpu_session.sh  (~3 min) KAT-T vs ViT-T step: eager vs CUDA graph, host-
#                device syncs and direct/JIT launches per step, and torch.profiler tables by host
#                and GPU time (where KAT-T's extra ~15 ms/step goes)
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:$PWD PYTHONUNBUFFERED=1
case "${STAGE:-check}" in
check)
  KAT_AUTOTUNE=0 timeout 200 python3 -m pytest -q -p no:cacheprovider tests/ops/test_fast_path.py \
    tests/ops/test_group_rational.py tests/ops/test_fuzz.py tests/test_norm_act1.py --tb=short 2>&1 | tail -60 \
    | tee "$OUT/pytest.txt"
  # most important first: the call limit (600 s) may cut the tail; every step writes to $OUT as it goes
  export KAT_TUNE_CACHE=$OUT/tuning.json
  timeout 200 python3 -m kat.cli.bench op --providers kat --dtypes bf16 --cuda-graphs --json "$OUT/op_bf16.json" 2>&1 | tee "$OUT/op_bf16.txt"
  # A/B of the backward's one-wave grid: the same configs (read from the tuning file), old grid
  KAT_ONE_WAVE=0 timeout 100 python3 -m kat.cli.bench op --providers kat --dtypes bf16 --cuda-graphs \
    --json "$OUT/op_bf16_guessgrid.json" 2>&1 | tail -3 | tee "$OUT/op_bf16_guessgrid.txt"
  timeout 60 python3 scripts/host_overhead.py --json "$OUT/host.json" 2>&1 | tee "$OUT/host.txt"
  # the model benchmark's interleaved path once, small, before a whole call is spent on it
  timeout 120 python3 -m kat.cli.bench model --sizes tiny --iters 3 --repeats 2 --warmup 2 2>&1 \
    | grep -E "^tiny|Error" | tee "$OUT/model_quick.txt"
  timeout 150 python3 -m kat.cli.bench op --providers kat --dtypes fp32 --cuda-graphs --json "$OUT/op_fp32.json" 2>&1 | tee "$OUT/op_fp32.txt"
  ;;
models)
  for extra in "" "--fuse-norm-act1"; do
    name=model_eager${extra:+_fused}
    timeout 230 python3 -m kat.cli.bench model $extra --iters 15 --repeats 3 --json "$OUT/$name.json" \
      2>&1 | grep -E "^(tiny|small|base)|Error" | tee "$OUT/$name.txt"
  done
  ;;
compile)
  # both sides compiled: Inductor's default mode, then reduce-overhead (CUDA graphs: no host time
  # per kernel, which is what holds the small models back in eager mode)
  for mode in default reduce-overhead; do
    timeout 260 python3 -m kat.cli.bench model --compile $mode --sizes tiny small --rational-impl ${IMPL:-triton} \
      --iters 15 --repeats 3 --json "$OUT/model_compile_$mode.json" 2>&1 | grep -E "^(tiny|small)|ratio|Error" \
      | tee "$OUT/model_compile_$mode.txt"
  done
  ;;
profile)
  timeout 240 python3 scripts/profile_step.py --size tiny --out "$OUT" 2>&1 | tee "$OUT/profile_step.txt"
  ;;
esac
