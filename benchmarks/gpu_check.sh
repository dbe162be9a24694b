#!/usr/bin/env bash
# Every GPU figure of issue 17 in one run (at most 9 min on one H200 with 16 cores), printed and written to $OUT:
#   1. detect_efficiency --device cuda, fasterrcnn_mobilenet_v3_large_fpn, then fasterrcnn_resnet50_fpn_v2 (fp16):
#      images/s of detbatch vs the bare loop and GPU busy % (first commit to last), with CPU and with GPU decode
#   2. train_overhead --device cuda (AMP): images/s of detbatch train, 1 worker, vs the bare loop
#   3. export parity on the GPU: TorchScript and ONNX vs the eager model on cuda, of the model step 2 trained
#      (random weights score every box alike, which leaves a parity check nothing to pair), on its images
#
#   benchmarks/gpu_check.sh                  # on the GPU machine (see docs/benchmarks.md, "GPU figures")
#   benchmarks/gpu_check.sh --dry-run        # here, on CPU, tiny sizes: that every step runs end to end
#
# Images: GPU_CHECK_IMAGES (a folder of .jpg), else .gpu/part2/images (carried with the wheels), else COCO128
# beside the repo. Python: $PYTHON (default python3); Ray and the other missing packages come from
# PYTHONPATH (benchmarks/gpu_wheels.sh). Each step runs under its own timeout and the script goes on when one
# fails; the exit status is the number of failed steps.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
[[ "${1:-}" == "--dry-run" ]] && DRY_RUN=1
PYTHON=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d /tmp/gpu-check-XXXXXX)}
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/gpu-check-work-XXXXXX)
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
IMAGES=${GPU_CHECK_IMAGES:-}
for candidate in .gpu/part2/images ../shared/data/coco128/images; do
    [[ -z "$IMAGES" && -d "$candidate" ]] && IMAGES=$candidate
done
[[ -n "$IMAGES" ]] || { echo "no images: set GPU_CHECK_IMAGES to a folder of .jpg"; exit 1; }
IMAGES=$(realpath "$IMAGES")

if (( DRY_RUN )); then
    # Both decodes and every step, on CPU, a few images each: minutes on a 2-core machine.
    DEVICE=cpu; DETECT=(--copies 1 --limit 2 --batch-size 2 --rows-per-file 2 --actors 1 --threads 1)
    TRAIN=(--images 64 --epochs 3 --batch-size 8 --model tiny_fcos --image-size 64)
    CHECK=2; DETECT_S=400; TRAIN_S=300; EXPORT_S=300
else
    # 512 images per run (32 COCO images x 16 copies, 8 calls of 64): seconds of inference after ~30 s of
    # start-up per detbatch run. The step limits add up to 540 s, inside one device call's 600 with the install.
    DEVICE=cuda; DETECT=(--copies 16 --batch-size 16 --rows-per-file 64 --actors 1 --threads 2)
    TRAIN=(--images 256 --epochs 3 --batch-size 8 --threads 4 --model fasterrcnn_mobilenet_v3_large_fpn --image-size 320)
    CHECK=4; DETECT_S=150; TRAIN_S=120; EXPORT_S=60
fi

failed=0
step() {  # step NAME TIMEOUT CMD...: run it, keep its output in $OUT/gpu_check.log
    local name=$1 limit=$2; shift 2
    echo; echo "=== $name: $*"
    local started=$SECONDS
    timeout --kill-after=10 "$limit" "$@"
    local rc=$?
    echo "=== $name: exit $rc after $((SECONDS - started)) s"
    (( rc == 0 )) || failed=$((failed + 1))
}

{
    echo "gpu_check: $(date -u +%FT%TZ), device $DEVICE, images $IMAGES ($(ls "$IMAGES" | wc -l) files), $(nproc) CPUs"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    "$PYTHON" -c "import torch, torchvision, ray; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'ray', ray.__version__, 'cuda', torch.cuda.is_available())"

    for model in fasterrcnn_mobilenet_v3_large_fpn fasterrcnn_resnet50_fpn_v2; do
        step "detect $model" "$DETECT_S" "$PYTHON" benchmarks/detect_efficiency.py --device "$DEVICE" --model "$model" \
            --decode cpu gpu --repeat 1 --skip-memory --images "$IMAGES" "${DETECT[@]}" --out "$OUT/detect-$model.json"
    done

    step "train (AMP)" "$TRAIN_S" "$PYTHON" benchmarks/train_overhead.py --device "$DEVICE" "${TRAIN[@]}" \
        --workdir "$WORK/train" --out "$OUT/train.json" --model-out "$WORK/model"

    for format in torchscript onnx; do
        step "export $format" "$EXPORT_S" "$PYTHON" -m detbatch export --weights "$WORK/model" --format "$format" \
            --out "$WORK/export/model.$format" --check-images "$WORK/train/data/images" --check-count "$CHECK" \
            --score-threshold 0.05 --device "$DEVICE"
    done
    "$PYTHON" -c "import onnxruntime as o; print('onnxruntime', o.__version__, 'providers', o.get_available_providers())"

    echo; echo "=== figures"
    "$PYTHON" benchmarks/gpu_summary.py "$OUT" | tee "$OUT/summary.md"
    echo "gpu_check: $failed step(s) failed; figures in $OUT"
} 2>&1 | tee "$OUT/gpu_check.log"
rm -rf "$WORK"
exit "$(grep -c '^=== .*: exit [1-9]' "$OUT/gpu_check.log")"
