"""Ray job: run `detbatch evaluate` on the cluster this job was submitted to.

    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/evaluate.py \
        --detections s3://bucket/runs/val2017 --ground-truth s3://bucket/coco/instances_val2017.json \
        --out s3://bucket/evals/val2017

or with a config file, flags and ``--set KEY=VALUE`` on top:

    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/evaluate.py \
        --config configs/evaluate.yaml --detections s3://bucket/runs/val2017 --set metric=voc

Takes exactly the flags of `detbatch evaluate`, prints pycocotools' 12-line summary, and exits non-zero
on failure (2 for bad input or config, 1 for anything else).
"""

import sys

from detbatch.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
