#!/usr/bin/env bash
# Data-parallel scaling of kat-train on one host (BENCHMARKS.md, "Multi-GPU"): KAT-S on synthetic
# 224x224 images, bf16 autocast, 128 images per GPU, 1 GPU vs N GPUs through torchrun + NCCL, and
# the step-1 loss of N x 128 against one GPU running the same global batch. Usage on the device:
#   NGPU=2 bash scripts/multi_gpu.sh          (logs and result.json files packed into $OUT)
set -uo pipefail
OUT=${OUT:-multi_gpu_out}; mkdir -p "$OUT"
NGPU=${NGPU:-2}; STEPS=${STEPS:-100}; W=${WORK:-/tmp/multi_gpu}; rm -rf "$W"; mkdir -p "$W"
# NVLink multicast stays off in NCCL, PyTorch and NVSHMEM (device README: it can take the shared host down)
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
COMMON=(--dataset synthetic --model kat_small_patch16_224 --model-kwargs "{img_size: 224}" --amp bf16 --drop-path 0 --smoothing 0 --no-shuffle
        --workers 6 --log-interval 20 --eval-interval 1000 --device cuda)
run() {  # name nproc batch epochs extra...
  local name=$1 n=$2 b=$3 e=$4; shift 4
  timeout 240 python3 -m torch.distributed.run --standalone --nproc_per_node="$n" -m kat.cli.train "${COMMON[@]}" \
    --batch-size "$b" --epochs "$e" --synthetic-size $((b * n * STEPS)) --output "$W/$name" "$@" > "$W/$name.log" 2>&1
  echo "$name: exit $? $(tr -d '\n ' < "$W/$name/result.json" 2>/dev/null)"
}
python3 -c "import torch, triton, timm; print('torch', torch.__version__, 'triton', triton.__version__, 'timm', timm.__version__, 'gpus', torch.cuda.device_count())" | tee "$W/versions.txt"
run gpu1_b128 1 128 2
run gpu${NGPU}_b128 "$NGPU" 128 2
run gpu1_b$((128 * NGPU)) 1 $((128 * NGPU)) 1 --max-steps 2
nvidia-smi topo -m > "$W/topo.txt" 2>&1
tar -czf "$OUT/multi_gpu.tar.gz" -C "$W" --exclude='*.pth' .
