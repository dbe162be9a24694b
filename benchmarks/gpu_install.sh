#!/usr/bin/env bash
# On the GPU machine: install what benchmarks/gpu_wheels.sh prepared into /tmp/site (add it to PYTHONPATH).
#   benchmarks/gpu_install.sh 1     # call 1 (carry .gpu/part1): keep the first piece of Ray's wheel in /tmp
#   benchmarks/gpu_install.sh 2     # call 2 (carry .gpu/part2), on the same warm machine: join, check, install
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p /tmp/gpu-wheels
if [[ "$1" == 1 ]]; then
    cp .gpu/part1/ray.whl.0 /tmp/gpu-wheels/ && ls -la /tmp/gpu-wheels && exit 0
fi
first=/tmp/gpu-wheels/ray.whl.0
[[ -f $first ]] || first=.gpu/part1/ray.whl.0  # ignored files of call 1 stay in the tree of a warm machine
[[ -f $first ]] || { echo "the first piece of Ray's wheel is gone (a fresh machine): run call 1 again"; exit 3; }
wheel=/tmp/gpu-wheels/$(cat .gpu/part2/ray.whl.name)
cat "$first" .gpu/part2/ray.whl.1 > "$wheel"
echo "$(cat .gpu/part2/ray.whl.sha256)  $wheel" | sha256sum -c -
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "${SITE:-/tmp/site}" \
    "$wheel" .gpu/part2/*.whl
echo "installed into ${SITE:-/tmp/site}: $(ls "${SITE:-/tmp/site}" | grep -c dist-info) packages"
