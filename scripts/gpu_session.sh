#!/usr/bin/env bash
# The next GPU session's calls on one H200, results in $OUT. Carry .data/golden (the golden tests
# look there): device tool `run` with carry [".data/golden"].
#   STAGE=check  bash scripts/gpu_session.sh   (~8 min) op tests on the real kernels, op bench with
#                CUDA graphs (bf16 first: #2's targets; tuning choices in $OUT/tuning.json), the
#                same-size copy column, host time per call, one quick model pair, fp32.
#   STAGE=quick  bash scripts/gpu_session.sh   (~8 min) the ninth session's untimed changes: their GPU
#                tests, the op bench (new candidates), KAT-T compiled: default mode with the
#                rationals as plain PyTorch, reduce-overhead with the kernels
#   STAGE=order bash scripts/gpu_session.sh  (~9 min) the forward's launch order (KAT_COLS_FIRST): GPU
#                tests, op bench A/B, scripts/fwd_floor.py at C = 768 and 3072 (per tile config:
#                tile copy, arithmetic alone, the kernel in both orders, L2 warm and cold).
#                Compiles take minutes on a fresh machine: for the default-mode plain-PyTorch
#                model run use SIZES=tiny LIMIT=520 VARIANTS=default:torch: STAGE=compile-torch
#   STAGE=verify bash scripts/gpu_session.sh  (~9 min) after a kernel change: the op tests on the GPU,
#                the op bench in bf16 and fp32 (tuning choices in $OUT/tuning.json)
#   STAGE=hostab bash scripts/gpu_session.sh   (~4 min) scripts/host_ab.py, tiny and small: the eager
#                train step with one thing changed at a time (GELU for the rationals, a Python
#                Function around GELU, Triton's own launch path, gc frozen), interleaved rounds
#   STAGE=models bash scripts/gpu_session.sh   (~8 min) KAT vs ViT eager, plain and with norm2+act1
#                fused (--fuse-norm-act1)
#   STAGE=compile bash scripts/gpu_session.sh  (~10 min) both sides compiled, SIZES (tiny small):
#                reduce-overhead, the same with --fuse-norm-act1, default mode
#   STAGE=compile-torch bash scripts/gpu_session.sh  (~7 min) the same with the rationals as plain
#                PyTorch that Inductor fuses (--rational-impl torch): default, reduce-overhead
#   STAGE=profile-compile bash scripts/gpu_session.sh  (~5 min) the same for torch.compile'd models
#                (default mode): graphs, graph breaks, launches per step, host time by operator
#   STAGE=mlp bash scripts/gpu_session.sh  (~9 min) the one-node GR-KAN MLP (kat.fused.MLPPlan): its
#                GPU tests, host time per call, KAT vs ViT eager with it and without it
#                (KAT_FUSED_MLP=0; MLP_AB=1 for the first only), host_ab's A/B in one process (kat
#                against kat_modules) for tiny. Carry .data/tuning.json (an earlier call's tuning
#                file) to skip the tuning.
#   STAGE=profile bash scripts/gpu_session.sh  (~3 min) KAT-T vs ViT-T step: eager vs CUDA graph, host-
#                device syncs and direct/JIT launches per step, and torch.profiler tables by host
#                and GPU time (where KAT-T's extra ~15 ms/step goes)
#   STAGE=reuse bash scripts/gpu_session.sh  (~8 min) backward workspaces kept per stream
#                (KAT_REUSE_WORKSPACE): their GPU tests, host time per call, host_ab's
#                A/B in one process for tiny and small (kat against kat_noreuse and
#                kat_modules). Carry .data/tuning.json to skip the tuning.
#   STAGE=final bash scripts/gpu_session.sh  (~9 min) KAT vs ViT eager (plain, then --fuse-norm-act1)
#                and the KAT-T step profile (scripts/profile_step.py). Carry .data/tuning.json.
set -uo pipefail
# Results are written to a work folder and packed into $OUT/results.tgz after every step: the
# device tool returns only a few files from $OUT, and a call cut by its time limit keeps what
# the finished steps wrote.
FINAL=${OUT:-gpu_out}; mkdir -p "$FINAL"
OUT=$(mktemp -d /tmp/gpu_session.XXXX)
pack() { tar czf "$FINAL/results.tgz" -C "$OUT" . ; }
trap pack EXIT
# KAT vs ViT eager, plain and with norm2 + act1 fused; $1: each run's time limit in seconds
eager_models() {
  for extra in "" "--fuse-norm-act1"; do
    name=model_eager${extra:+_fused}
    timeout "$1" python3 -m kat.cli.bench model $extra --iters 15 --repeats 3 --json "$OUT/$name.json" \
      2>&1 | grep -E "^(tiny|small|base)|Error" | tee "$OUT/$name.txt"
    pack
  done
}
# the one-node MLP's GPU tests, then host time per call; an earlier call's tuning file (same GPU,
# Triton and kernels) carried as .data/tuning.json saves the tuning of the steps after
node_tests_and_host() {
  KAT_AUTOTUNE=0 timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_fused.py tests/test_norm_act1.py \
    tests/ops/test_fast_path.py --tb=short 2>&1 | tail -15 | tee "$OUT/pytest.txt"
  pack
  [ -f .data/tuning.json ] && cp .data/tuning.json "$OUT/tuning.json"
  export KAT_TUNE_CACHE=$OUT/tuning.json
  timeout "$1" python3 scripts/host_overhead.py --json "$OUT/host.json" 2>&1 | grep -v Warn | tee "$OUT/host.txt"
  pack
}
export PYTHONPATH=$PWD/src:$PWD PYTHONUNBUFFERED=1
STAGE=${STAGE:-check}
case "$STAGE" in
check)
  KAT_AUTOTUNE=0 timeout 260 python3 -m pytest -q -p no:cacheprovider tests/ops/test_fast_path.py \
    tests/ops/test_group_rational.py tests/ops/test_fuzz.py tests/test_norm_act1.py tests/ops/test_inline.py \
    --tb=short 2>&1 | tail -60 \
    | tee "$OUT/pytest.txt"
  pack
  # most important first: the call limit (600 s) may cut the tail; every step is packed as it ends
  export KAT_TUNE_CACHE=$OUT/tuning.json
  timeout 200 python3 -m kat.cli.bench op --providers kat --dtypes bf16 --cuda-graphs --json "$OUT/op_bf16.json" 2>&1 | tee "$OUT/op_bf16.txt"
  pack
  # the one-wave grid, folded accumulators and one-launch reduction A/Bs (KAT_ONE_WAVE=0,
  # KAT_FOLD=0, KAT_MERGED_REDUCTION=0 with the same command) were measured on 2026-11-30 (BENCHMARKS.md)
  timeout 60 python3 scripts/host_overhead.py --json "$OUT/host.json" 2>&1 | tee "$OUT/host.txt"
  pack
  # the model benchmark's interleaved path once, small, before a whole call is spent on it
  timeout 120 python3 -m kat.cli.bench model --sizes tiny --iters 3 --repeats 2 --warmup 2 2>&1 \
    | grep -E "^tiny|Error" | tee "$OUT/model_quick.txt"
  pack
  timeout 150 python3 -m kat.cli.bench op --providers kat --dtypes fp32 --cuda-graphs --json "$OUT/op_fp32.json" 2>&1 | tee "$OUT/op_fp32.txt"
  pack
  ;;
models)
  eager_models 230
  ;;
compile|compile-torch)
  # Both sides compiled. compile: reduce-overhead (CUDA graphs: no host time per kernel, so the
  # GPU time decides: #6's item 4), plain and with norm2 + act1 fused, then Inductor's default
  # mode. compile-torch: the rationals as plain PyTorch (--rational-impl torch), which Inductor
  # fuses and launches itself like ViT's GELU, in both modes. KAT_INLINE_TRITON=1's default-mode
  # A/B was run on 2026-11-30 (BENCHMARKS.md): no gain.
  if [ $STAGE = compile ]; then variants="reduce-overhead:triton: reduce-overhead:triton:--fuse-norm-act1 default:triton:"
  else variants="default:torch: reduce-overhead:torch:"; fi
  variants=${VARIANTS:-$variants}  # e.g. VARIANTS=default:torch: for one of them
  for v in $variants; do
    IFS=: read -r mode impl extra <<< "$v"
    name=model_compile_${mode}_${impl}${extra:+_fused}
    timeout ${LIMIT:-200} python3 -m kat.cli.bench model --compile $mode $extra --sizes ${SIZES:-tiny small} \
      --rational-impl $impl --iters 15 --repeats 3 --json "$OUT/$name.json" 2>&1 \
      | grep -E "^(tiny|small|base)|ratio|Error" | tee "$OUT/$name.txt"
    pack
  done
  ;;
quick)
  # One call for what the 2026-11-30 (ninth) session wrote without a GPU: its GPU tests, the op
  # bench with the new candidates (narrow configs at C = 192, 16-elements-a-thread forwards at
  # 768), then KAT-T compiled: default mode with the rationals as plain PyTorch (Inductor fuses
  # them), reduce-overhead with the kernels (the new configs on #6's item 4)
  KAT_AUTOTUNE=0 timeout 120 python3 -m pytest -q -p no:cacheprovider tests/ops/test_fast_path.py tests/ops/test_tuning.py tests/ops/test_compile.py \
    -k "folded or uniform or narrow or tuner or graph or fold or switch" --tb=short 2>&1 | tail -15 | tee "$OUT/pytest_quick.txt"
  pack
  export KAT_TUNE_CACHE=$OUT/tuning.json
  timeout 140 python3 -m kat.cli.bench op --providers kat --dtypes bf16 --cuda-graphs --json "$OUT/op_bf16.json" 2>&1 | tee "$OUT/op_bf16.txt"
  pack
  for v in default:torch reduce-overhead:triton; do  # (default:torch = what KAT_COMPILED_IMPL=torch compiles)
    IFS=: read -r mode impl <<< "$v"
    timeout 160 python3 -m kat.cli.bench model --compile $mode --sizes tiny --rational-impl $impl --iters 15 \
      --repeats 3 --json "$OUT/model_compile_${mode}_${impl}.json" 2>&1 | grep -E "^tiny|Error" \
      | tee "$OUT/model_compile_${mode}_${impl}.txt"
    pack
  done
  ;;
order)
  # #2's last point (C = 768 bf16 at 59%, target 60%): the forward launched column blocks first
  # (KAT_COLS_FIRST, new) against rows first. Its GPU tests, then the op bench A/B (fresh tuning
  # file each; the default order twice, around the old), then scripts/fwd_floor.py per config.
  KAT_AUTOTUNE=0 timeout 120 python3 -m pytest -q -p no:cacheprovider tests/ops/test_fast_path.py \
    -k "grid_order or uniform or overflow" --tb=short 2>&1 | tail -15 | tee "$OUT/pytest.txt"
  pack
  for run in 1:a 0:b 1:c; do
    cf=${run%%:*}
    KAT_COLS_FIRST=$cf KAT_TUNE_CACHE=$OUT/tuning_$run.json timeout 120 python3 -m kat.cli.bench op \
      --providers kat --dtypes bf16 --cuda-graphs --json "$OUT/op_bf16_$run.json" 2>&1 | grep -v Warn \
      | tee "$OUT/op_bf16_$run.txt"
    pack
  done
  for c in 768 3072; do
    timeout 110 python3 scripts/fwd_floor.py --channels $c --json "$OUT/fwd_floor_$c.json" 2>&1 \
      | grep -v Warn | tee "$OUT/fwd_floor_$c.txt"
    pack
  done
  ;;
verify)
  # after a kernel change: the op tests on the real kernels, then the op bench in bf16 and fp32
  KAT_AUTOTUNE=0 timeout 250 python3 -m pytest -q -p no:cacheprovider tests/ops/test_fast_path.py \
    tests/ops/test_group_rational.py tests/ops/test_fuzz.py tests/test_norm_act1.py tests/ops/test_inline.py \
    --tb=short 2>&1 | tail -30 | tee "$OUT/pytest.txt"
  pack
  export KAT_TUNE_CACHE=$OUT/tuning.json
  for dt in bf16 fp32; do
    timeout 150 python3 -m kat.cli.bench op --providers kat --dtypes $dt --cuda-graphs --json "$OUT/op_$dt.json" \
      2>&1 | grep -v Warn | tee "$OUT/op_$dt.txt"
    pack
  done
  ;;
mlp)
  node_tests_and_host 90
  for fused in ${MLP_AB:-1 0}; do
    KAT_FUSED_MLP=$fused timeout 260 python3 -m kat.cli.bench model --iters 15 --repeats 3 \
      --json "$OUT/model_eager_mlp$fused.json" 2>&1 | grep -E "^(tiny|small|base)|Error" \
      | tee "$OUT/model_eager_mlp$fused.txt"
    pack
  done
  timeout 100 python3 scripts/host_ab.py --size tiny --rounds 3 --variants vit kat kat_modules \
    --json "$OUT/host_ab_tiny.json" 2>&1 | grep -v Warn | tail -4 | tee "$OUT/host_ab_tiny.txt"
  pack
  ;;
reuse)
  python3 -c "import torch, triton, timm; f = torch.autograd.Function.__dict__.get('apply'); \
print('torch', torch.__version__, 'triton', triton.__version__, 'timm', timm.__version__, \
'Function.apply is', type(f).__name__)" 2>&1 | tee "$OUT/versions.txt"
  node_tests_and_host 120
  for size in tiny small; do
    timeout 150 python3 scripts/host_ab.py --size $size --rounds 3 \
      --variants vit kat kat_noreuse kat_modules --json "$OUT/host_ab_$size.json" 2>&1 \
      | grep -v Warn | tail -6 | tee "$OUT/host_ab_$size.txt"
    pack
  done
  ;;
final)
  [ -f .data/tuning.json ] && cp .data/tuning.json "$OUT/tuning.json"
  export KAT_TUNE_CACHE=$OUT/tuning.json
  eager_models 230
  timeout 150 python3 scripts/profile_step.py --size tiny --out "$OUT" 2>&1 | tee "$OUT/profile_step.txt"
  pack
  ;;
hostab)
  for size in tiny small; do
    timeout 120 python3 scripts/host_ab.py --size $size --rounds 4 \
      --variants vit kat kat_gelu kat_pyfn kat_nolaunch --json "$OUT/host_ab_$size.json" 2>&1 \
      | grep -v Warn | tail -6 | tee "$OUT/host_ab_$size.txt"
    pack
  done
  ;;
profile)
  timeout 240 python3 scripts/profile_step.py --size tiny --out "$OUT" 2>&1 | tee "$OUT/profile_step.txt"
  pack
  ;;
profile-compile)
  # compiled (Inductor default mode) KAT-T trains at ~0.6x compiled ViT-T while with CUDA graphs
  # it is at ~0.95x: count graphs, breaks and launches per step, and where the host time goes
  # (order kat vit kat: the host time of one model depends on what ran before it in the process)
  timeout 400 python3 scripts/profile_step.py --size tiny --compile default --order kat vit kat --out "$OUT" 2>&1 \
    | tee "$OUT/profile_step_compile.txt"
  pack
  ;;
esac
