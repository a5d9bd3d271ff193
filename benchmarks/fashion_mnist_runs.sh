#!/usr/bin/env bash
# The Fashion-MNIST comparison of RESULTS.md: ViT vs KAT (three initialisations), several seeds, all
# runs at once on one GPU (each is small and host-bound). Usage on the device machine:
#   SEEDS="0 1" bash benchmarks/fashion_mnist_runs.sh
# Needs the four Fashion-MNIST idx files in $FMNIST_DIR (default .data/fashion-mnist, carried there) or
# Debian's /usr/share/datasets/fashion-mnist. Results (CSV logs, result.json, logs, the learned
# rationals of each KAT run) are packed into $OUT/fmnist_runs.tar.gz.
set -uo pipefail
OUT=${OUT:-fmnist_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
SEEDS=${SEEDS:-"0 1"}; VARIANTS=${VARIANTS:-"vit kat kat_identity kat_gelu"}
FMNIST_DIR=${FMNIST_DIR:-.data/fashion-mnist}; [ -d "$FMNIST_DIR" ] || FMNIST_DIR=/usr/share/datasets/fashion-mnist
WORK=${WORK:-/tmp/fmnist_runs}; rm -rf "$WORK"; mkdir -p "$WORK"
pids=()
for seed in $SEEDS; do
  for v in $VARIANTS; do
    run=$WORK/${v}_s$seed; mkdir -p "$run"
    timeout ${RUN_TIMEOUT:-0} python3 -m kat.cli.train -c configs/fashion_mnist_$v.yaml --data-dir "$FMNIST_DIR" ${EPOCHS:+--epochs $EPOCHS} \
      --seed "$seed" --output "$run" --save-safetensors ${EXTRA_ARGS:-} > "$run/train.log" 2>&1 &
    pids+=($!)
  done
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
# Keep what RESULTS.md needs and is small: logs, CSVs, results, and the rational coefficients.
python3 - "$WORK" <<'PY'
import sys, pathlib, torch
from safetensors.torch import load_file
for st in pathlib.Path(sys.argv[1]).glob("*/model.safetensors"):
    sd = load_file(str(st))
    torch.save({k: v for k, v in sd.items() if k.endswith(("weight_numerator", "weight_denominator"))}, st.parent / "rationals.pt")
PY
tar -czf "$OUT/fmnist_runs.tar.gz" -C "$WORK" --exclude='*.pth' --exclude='*.safetensors' --exclude=tb .
for f in "$WORK"/*/result.json; do echo "$f: $(cat "$f")"; done
exit $status
