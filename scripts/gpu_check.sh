#!/usr/bin/env bash
# Short GPU check of pretraining, meant to finish within 10 minutes on one GPU:
#   1. images per second and peak memory of MoCo and CAST steps
#      (ResNet-50, 224-pixel crops, bf16 autocast, data loading included);
#   2. one interrupted two-epoch CAST run resumed from its checkpoint.
# Usage: bash scripts/gpu_check.sh [OUTPUT_DIR]   (needs .venv from scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/gpu_check}
mkdir -p "$OUT"
export PATH="$PWD/.venv/bin:$PATH"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.csv"

# Data stages on the bundled sample (CPU).
cast verify-data --images data/sample/images --splits train val \
    --manifest "$OUT/manifest.csv" --rejected "$OUT/rejected.csv" --summary "$OUT/verify.json"
cast estimate-saliency --images data/sample/images --manifest "$OUT/manifest.csv" \
    --masks "$OUT/masks" --summary "$OUT/saliency.json"
cast check-masks --images data/sample/images --manifest "$OUT/manifest.csv" --masks "$OUT/masks" \
    --pairs "$OUT/pairs.csv" --rejected "$OUT/mask_rejected.csv" --summary "$OUT/masks.json" \
    --min_usable_pairs 64

# 1. Throughput and memory.
cast bench train --images data/sample/images --masks "$OUT/masks" --pairs "$OUT/pairs.csv" \
    --arch resnet50 --image_size 224 --batch_size 64 --workers 8 --steps 20 --warmup 5 --device cuda \
    | tee "$OUT/bench_train.json"

# 2. Kill a run after its first checkpoint, then rerun the same command.
RUN=(cast pretrain --images data/sample/images --masks "$OUT/masks" --pairs "$OUT/pairs.csv"
     --out_dir "$OUT/resume" --method cast --arch resnet50 --image_size 224 --batch_size 32
     --moco_k 4096 --epochs 2 --workers 8 --device cuda --lr 0.03)
"${RUN[@]}" > "$OUT/resume_first.log" 2>&1 &
PID=$!
until ls "$OUT"/resume/checkpoints/*/epoch_0001.pt >/dev/null 2>&1; do
    kill -0 "$PID" 2>/dev/null || { echo "run ended before its first checkpoint"; exit 1; }
    sleep 0.5
done
kill -9 "$PID" || true
wait "$PID" || true
"${RUN[@]}" > "$OUT/resume_second.log" 2>&1
grep -q "resumed from" "$OUT/resume_second.log"
echo "resume: ok"
cat "$OUT/resume/metrics.json"
