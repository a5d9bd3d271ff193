#!/usr/bin/env bash
# Data-parallel scaling of kat-train on one host (BENCHMARKS.md, "Multi-GPU"): KAT-S on synthetic
# 224x224 images, bf16 autocast, 128 images per GPU, 1 GPU vs N GPUs through torchrun + NCCL, and
# the step-1 loss of N x 128 against one GPU running the same global batch. Usage on the device:
#   NGPU=2 REPEAT=2 bash benchmarks/multi_gpu.sh   (logs and result.json files packed into $OUT)
#   EXTRA=--synthetic-on-device ...             (batches indexed on the GPU: no host data pipeline)
#   EXTRA="--synthetic-on-device --ddp-static-graph --ddp-bucket-mb 100" INDEPENDENT=1 ...
#   LAST_GPU=1 ...                              (the 1-GPU run also on the last GPU, per pair)
set -uo pipefail
OUT=${OUT:-multi_gpu_out}; mkdir -p "$OUT"
NGPU=${NGPU:-2}; STEPS=${STEPS:-150}; W=${WORK:-/tmp/multi_gpu}; rm -rf "$W"; mkdir -p "$W"
# NVLink multicast stays off in NCCL, PyTorch and NVSHMEM (device README: it can take the shared host down)
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
# The same CPU threads per process on both sides of a pair: torchrun sets OMP_NUM_THREADS=1 only
# when it starts more than one worker, so without this the 1-GPU baseline ran with every core's
# thread and the ranks with one (and two concurrent 1-GPU runs oversubscribed the CPUs)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
COMMON=(--dataset synthetic --model kat_small_patch16_224 --model-kwargs "{img_size: 224}" --amp bf16 --drop-path 0 --smoothing 0 --no-shuffle
        --workers 6 --log-interval 10 --eval-interval 1000 --device cuda ${EXTRA:-})
run() {  # name nproc batch epochs extra...
  local name=$1 n=$2 b=$3 e=$4; shift 4
  timeout 240 python3 -m torch.distributed.run --standalone --nproc_per_node="$n" -m kat.cli.train "${COMMON[@]}" \
    --batch-size "$b" --epochs "$e" --synthetic-size $((b * n * STEPS)) --output "$W/$name" "$@" > "$W/$name.log" 2>&1
  echo "$name: exit $? $(tr -d '\n ' < "$W/$name/result.json" 2>/dev/null)"
}
python3 -c "import torch, triton, timm; print('OMP_NUM_THREADS', torch.get_num_threads(), 'torch', torch.__version__, 'triton', triton.__version__, 'timm', timm.__version__, 'gpus', torch.cuda.device_count())" | tee "$W/versions.txt"
# The gradient all-reduce alone (KAT-S's 88 MB, whole and in DDP-sized buckets): what the step
# would lose if nothing overlapped it
timeout 120 python3 -m torch.distributed.run --standalone --nproc_per_node="$NGPU" benchmarks/allreduce.py \
  --json "$W/allreduce.json" > "$W/allreduce.log" 2>&1; grep -E "ranks|ms," "$W/allreduce.log" | tee "$OUT/allreduce.txt"
# REPEAT pairs, 1 GPU and N GPUs alternately: the VM's host speed drifts between machines and runs,
# and both models are partly host-bound, so each pair is compared within itself
# (LAST_GPU=1: each pair also times one GPU alone on the last GPU, in case the GPUs differ)
for r in $(seq 1 "${REPEAT:-1}"); do
  run gpu1_b128_r$r 1 128 2
  run gpu${NGPU}_b128_r$r "$NGPU" 128 2
  if [ "${LAST_GPU:-0}" = 1 ]; then CUDA_VISIBLE_DEVICES=$((NGPU - 1)) run gpu1last_b128_r$r 1 128 2; fi
done
run gpu1_b$((128 * NGPU)) 1 $((128 * NGPU)) 1 --max-steps 2
# INDEPENDENT=1: NGPU single-GPU runs at once, one per GPU, no communication. If each is as slow as
# a DDP rank, the loss of efficiency is the host (shared CPUs), not the all-reduce.
if [ "${INDEPENDENT:-0}" = 1 ]; then
  for g in $(seq 0 $((NGPU - 1))); do CUDA_VISIBLE_DEVICES=$g run indep$g 1 128 2 & done; wait
fi
nvidia-smi topo -m > "$W/topo.txt" 2>&1
tar -czf "$OUT/multi_gpu.tar.gz" -C "$W" --exclude='*.pth' .
# steady_img_per_s (result.json): the last epoch from its first log step on, so without the data
# loader's worker start-up; efficiency = N-GPU rate / (N x 1-GPU rate)
python3 - "$W" "$NGPU" "${REPEAT:-1}" <<'PY' | tee "$OUT/scaling.txt"
import json, sys
w, n, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
load = lambda k: json.load(open(f"{w}/{k}/result.json"))
import os
for r in range(1, reps + 1):
    if not all(os.path.exists(f"{w}/{k}/result.json") for k in (f"gpu1_b128_r{r}", f"gpu{n}_b128_r{r}")):
        print(f"pair {r}: incomplete (a run failed or hit its time limit; see its log)")
        continue
    one, many = load(f"gpu1_b128_r{r}"), load(f"gpu{n}_b128_r{r}")
    for key in ("steady_img_per_s", "last_epoch_img_per_s"):
        print(f"pair {r} {key}: 1 GPU {one[key]:.0f}, {n} GPUs {many[key]:.0f}, "
              f"efficiency {many[key] / (n * one[key]):.3f}")
    if os.path.exists(f"{w}/gpu1last_b128_r{r}/result.json"):
        last = load(f"gpu1last_b128_r{r}")["steady_img_per_s"]
        print(f"pair {r}: 1 GPU alone on the last GPU {last:.0f} img/s (GPU 0: {one['steady_img_per_s']:.0f})")
if os.path.isdir(f"{w}/indep0") and all(os.path.exists(f"{w}/indep{g}/result.json") for g in range(n)):
    rates = [load(f"indep{g}")["steady_img_per_s"] for g in range(n)]
    one = load("gpu1_b128_r1")["steady_img_per_s"]
    print(f"{n} independent 1-GPU runs at once: {', '.join(f'{r:.0f}' for r in rates)} img/s, "
          f"sum {sum(rates):.0f} = {sum(rates) / (n * one):.3f} x {n} x (1 GPU alone)")
elif os.path.isdir(f"{w}/indep0"):
    print("independent runs: not all finished (see indep*.log)")
many, big = load(f"gpu{n}_b128_r1"), load(f"gpu1_b{128 * n}")
print(f"step-1 loss: {n} x 128 {many['first_loss']:.6f}, 1 x {128 * n} {big['first_loss']:.6f}, "
      f"rel diff {abs(many['first_loss'] - big['first_loss']) / big['first_loss']:.2e}")
PY
