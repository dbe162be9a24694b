#!/usr/bin/env bash
# The packages benchmarks/gpu_check.sh needs that the GPU machine lacks (it has torch, torchvision, pyarrow,
# pandas, numpy, pillow, psutil, onnx, onnxruntime; not Ray, pydantic, jsonschema, tensorboardX), as
# Python 3.12 wheels, in two folders of under 64 MiB each (what one device call carries), and 32 COCO128
# images for the runs:
#
#   .gpu/part1/   the first 40 MB of Ray's wheel (79 MB: too large for one call)
#   .gpu/part2/   the rest of it, the small wheels, images/ (32 COCO128 .jpg, 5 MB)
#
#   benchmarks/gpu_wheels.sh [REPO]  # once, where pip reaches PyPI; REPO: the checkout the device tool sends
#                                    # (default: this script's); .gpu/ is git-ignored (.gitignore), which
#                                    # also keeps it out of `ray job submit` uploads
# Versions: those this repo's venv is tested with (ray 2.60.0 and its needs). docs/benchmarks.md, "GPU
# figures", says how the two device calls use the folders.
set -euo pipefail
cd "${1:-$(dirname "$0")/..}"
PYTHON=${PYTHON:-.venv/bin/python}
rm -rf .gpu/part1 .gpu/part2 .gpu/download
mkdir -p .gpu/part1 .gpu/part2/images .gpu/download
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .gpu/download \
    ray==2.60.0 pydantic==2.14.4 pydantic_core==2.50.5 annotated_types==0.8.0 typing_inspection==0.4.5 \
    typing_extensions==4.16.0 jsonschema==4.26.0 jsonschema_specifications==2025.9.1 referencing==0.37.0 \
    rpds_py==2026.9.1 tensorboardX==2.6.5
ray=$(ls .gpu/download/ray-*.whl)
split -b 40000000 -d -a 1 "$ray" ".gpu/split-"
mv .gpu/split-0 .gpu/part1/ray.whl.0
mv .gpu/split-1 .gpu/part2/ray.whl.1
basename "$ray" > .gpu/part2/ray.whl.name
sha256sum "$ray" | cut -d' ' -f1 > .gpu/part2/ray.whl.sha256
rm "$ray" && mv .gpu/download/*.whl .gpu/part2/
rmdir .gpu/download
ls ../shared/data/coco128/images/*.jpg | head -32 | xargs -I{} cp {} .gpu/part2/images/
du -sh .gpu/part1 .gpu/part2
