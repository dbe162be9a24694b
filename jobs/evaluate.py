"""Ray job: evaluate a detect run against COCO ground truth.

    ray job submit --working-dir . -- python jobs/evaluate.py \
        --detections s3://bucket/runs/val2017 --ground-truth s3://bucket/coco/instances_val2017.json \
        --out s3://bucket/evals/val2017
"""

from __future__ import annotations

import argparse
import logging
import sys


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="COCO mAP / Pascal VOC AP of a detect run", add_help=True)
    parser.add_argument("--detections", required=True, help="detect output folder (RUN), any fsspec URI")
    parser.add_argument("--ground-truth", required=True, help="COCO instances JSON, local path or URI")
    parser.add_argument("--out", required=True, help="folder for metrics.json, report.md, pr_curves.png")
    parser.add_argument("--metric", choices=["coco", "voc"], default="coco")
    parser.add_argument("--iou-type", choices=["bbox"], default="bbox")
    parser.add_argument("--ray-address", default=None, help="Ray cluster (default: this job's, else a local one)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from detbatch.evaluate import EvaluateConfig, run_evaluate, summary_lines
    from detbatch.runtime import init_ray
    from detbatch.storage import StorageError

    config = EvaluateConfig(
        detections=args.detections,
        ground_truth=args.ground_truth,
        out=args.out,
        metric=args.metric,
        iou_type=args.iou_type,
        ray_address=args.ray_address,
    )
    try:
        init_ray(config.ray_address)
        metrics = run_evaluate(config)
    except (ValueError, StorageError) as e:
        print(f"evaluate: {e}", file=sys.stderr)
        return 2
    print("\n".join(summary_lines(metrics)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
