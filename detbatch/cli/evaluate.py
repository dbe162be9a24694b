"""Looking at a run: ``detbatch evaluate``, ``filter`` and ``report``."""

from __future__ import annotations

import argparse

from detbatch.cli.common import add_label_flags, load_job_config, score_or_uri


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="COCO mAP (exactly pycocotools') or VOC AP of a detect output against COCO ground truth",
    )
    p.add_argument("--config", help="YAML config (see configs/evaluate.yaml); flags override it")
    p.add_argument("--detections", help="a detect output folder (RUN), any fsspec URI")
    p.add_argument("--ground-truth", help="COCO instances JSON, or a folder of VOC XML / YOLO txt labels; local path or URI")
    add_label_flags(p, images="--images", images_help="VOC, YOLO: the images the labels belong to (default: beside them)")
    p.add_argument("--out", help="folder for metrics.json, report.md, pr_curves.png")
    p.add_argument("--metric", choices=["coco", "voc"])
    p.add_argument("--iou-type", choices=["bbox"])
    p.add_argument("--pair-by", choices=["auto", "image_id", "file_name"],
                   help="how detections find their ground-truth image (see docs/evaluate.md)")
    p.add_argument("--ray-address", help="Ray cluster to use for large inputs (default: the job's, else local)")
    p.add_argument("--allow-incomplete", action="store_true", default=None,
                   help="evaluate a detect run that is not finished (no run.json); metrics.json says complete: false")
    p.add_argument("--no-diagnostics", dest="diagnostics", action="store_false", default=None,
                   help="COCO: only the stats, without thresholds, thresholds.json and the confusion matrix")
    p.add_argument("--confusion-iou", type=float, help="the IoU a confusion-matrix match must reach (default 0.5)")
    p.add_argument("--confusion-score-threshold", type=float,
                   help="one score threshold for the confusion matrix (default: each category's F1-optimal one)")
    p.add_argument("--slice-by", action="append", metavar="COLUMN",
                   help="AP/AP50/AR100 per value of COLUMN (repeatable): images table, --slice-metadata, num_objects, image_size")
    p.add_argument("--slice-metadata", help="a Parquet or CSV table joined on image_id or uri, with the columns to slice by")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key (e.g. use_ray=true)")
    p.set_defaults(run=_run_evaluate)

# Evaluate's config is flat: each flag's dest is its key.
EVALUATE_FLAGS = {key: key for key in ("detections", "ground_truth", "out", "metric", "iou_type", "pair_by", "ray_address",
                                        "allow_incomplete", "annotations_format", "images", "names", "diagnostics",
                                        "confusion_iou", "confusion_score_threshold", "slice_by", "slice_metadata")}

def _run_evaluate(args: argparse.Namespace) -> int:
    from detbatch.evaluate import EvaluateConfig, run_evaluate, summary_lines

    config = load_job_config(EvaluateConfig, args, EVALUATE_FLAGS)
    metrics = run_evaluate(config)
    print("\n".join(summary_lines(metrics)))
    print(f"  metrics: {config.out}/metrics.json   report: {config.out}/report.md   curves: {config.out}/pr_curves.png")
    return 0

def add_filter(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "filter",
        help="cut an existing detect output to score thresholds (a thresholds.json of evaluate), without the model",
        description="Write a new detect output holding the detections of --detections that --score-threshold keeps "
        "(the same layout and commit log; rerunning the same command finishes an interrupted one).",
    )
    p.add_argument("--detections", required=True, help="a finished detect output folder (RUN), any fsspec URI")
    p.add_argument("--score-threshold", required=True, type=score_or_uri,
                   help="a score for every category, or a thresholds.json of `detbatch evaluate` (one per category)")
    p.add_argument("--out", required=True, help="folder for the filtered output (new or an interrupted filter's)")
    p.set_defaults(run=_run_filter)

def _run_filter(args: argparse.Namespace) -> int:
    from detbatch.evaluate.postfilter import filter_run

    print(filter_run(args.detections, args.score_threshold, args.out).line())
    return 0

def add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="a self-contained HTML report of a detect run (summary, gallery, errors)",
        description="Write DIR/index.html and its thumbnails: counts and score histograms, a filterable gallery "
        "of sampled images, the worst images against ground truth, the evaluation's curves, every input in error.",
    )
    p.add_argument("--detections", required=True, help="a detect output folder (RUN), any fsspec URI")
    p.add_argument("--ground-truth", help="labels for TP/FP/FN colours and the worst images (COCO JSON, VOC or YOLO folder)")
    p.add_argument("--evaluation", help="a `detbatch evaluate --out` folder: metrics, PR curves, diagnostics")
    p.add_argument("--out", required=True, help="folder for index.html and thumbs/ (any fsspec URI)")
    p.add_argument("--samples", type=int, default=None, help="gallery images, stratified by category (default 300)")
    add_label_flags(p, images="--images", images_help="VOC, YOLO: the images the labels belong to (default: beside them)")
    p.set_defaults(run=_run_report)

def _run_report(args: argparse.Namespace) -> int:
    from detbatch.report import DEFAULT_SAMPLES, write_report

    result = write_report(args.detections, args.out, ground_truth=args.ground_truth, evaluation=args.evaluation,
                          samples=DEFAULT_SAMPLES if args.samples is None else args.samples,
                          annotations_format=args.annotations_format or "auto", images=args.images, names=args.names)
    print(f"report: {result.images_shown} images shown, {result.thumbnails} thumbnails, {result.seconds:.1f} s")
    print(f"  open: {result.index}")
    return 0
