"""The ``detbatch`` command line: parse flags into a config, call one library function, print."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Callable

from detbatch.errors import DetbatchError, RunFailed


def _score_or_uri(value: str) -> float | str:
    """``--score-threshold``: a number, or the URI of a thresholds file."""
    try:
        return float(value)
    except ValueError:
        return value


def _int_or_auto(value: str) -> int | str:
    """``--max-actors``: a number, or ``auto``."""
    return value if value == "auto" else int(value)


def _add_detect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "detect",
        help="run a detector over images in storage, write detections to Parquet",
        description="Run a torchvision detector over image files or shards; write Parquet. "
        "Flags override the config file; rerunning on the same --output resumes.",
    )
    p.add_argument("--config", help="YAML config (see configs/); flags override it")
    p.add_argument("--input", help="images or shards: a folder/prefix, a file, or a glob (any fsspec URI)")
    p.add_argument("--output", help="output folder/prefix (any fsspec URI)")
    p.add_argument("--input-format", choices=["auto", "images", "tar", "parquet", "index"],
                   help="what --input holds (auto: decided from the files; index: tables with a uri column)")
    p.add_argument("--verify-input", action="store_true", default=None,
                   help="on a rerun, list the input again and refuse it if it changed since the output's plan")
    p.add_argument("--manifest", help="COCO JSON giving each file its image_id (file_name relative to --input)")
    p.add_argument("--model", help="detector name (see `detbatch models`)")
    p.add_argument("--weights", help="DEFAULT, a torchvision weights name, none, or a checkpoint URI")
    p.add_argument("--score-threshold", type=_score_or_uri, help="keep boxes scoring at least this (0 keeps all), "
                   "or a thresholds.json of `detbatch evaluate` (a threshold per category)")
    p.add_argument("--batch-size", type=int, help="images per forward pass")
    p.add_argument("--min-actors", type=int, help="detector pool size at least")
    p.add_argument("--max-actors", type=_int_or_auto, help="detector pool size at most, or auto (one per GPU; docs/detect.md)")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"])
    p.add_argument("--ray-address", help="Ray cluster to join (default: the job's, else a local one)")
    p.add_argument("--overwrite", action="store_true", default=None, help="replace an output made with other settings")
    p.add_argument("--take-over", action="store_true", default=None,
                   help="take the output's lease from a run that looks alive (only if you know it is dead)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override any config key")
    p.set_defaults(run=_run_detect)


# Config keys set by each command's flags: key -> the flag's argparse dest.
DETECT_FLAGS = {
    "input.uri": "input",
    "input.format": "input_format",
    "input.manifest": "manifest",
    "input.verify": "verify_input",
    "output.uri": "output",
    "output.overwrite": "overwrite",
    "output.take_over": "take_over",
    "model.name": "model",
    "model.weights": "weights",
    "model.score_threshold": "score_threshold",
    "inference.batch_size": "batch_size",
    "inference.min_actors": "min_actors",
    "inference.max_actors": "max_actors",
    "inference.device": "device",
    "ray.address": "ray_address",
}


def load_job_config(config_class: type, args: argparse.Namespace, flags: dict[str, str]) -> Any:
    """The config file, then ``--set`` and the flags that were given on top; a key set both ways is an error."""
    from detbatch.config import ConfigError, load_config, parse_assignment

    assignments = dict(parse_assignment(s) for s in args.set)
    given = {key: getattr(args, dest) for key, dest in flags.items() if getattr(args, dest) is not None}
    for key in given.keys() & assignments.keys():
        flag = "--" + flags[key].replace("_", "-")
        raise ConfigError(f"{key} is given twice, by {flag} {given[key]!r} and by --set {key}={assignments[key]!r}; "
                          f"keep one")
    return load_config(config_class, args.config, given, assignments)


def _run_detect(args: argparse.Namespace) -> int:
    from detbatch.detect import DetectConfig, run_detect

    config = load_job_config(DetectConfig, args, DETECT_FLAGS)
    summary = run_detect(config)
    print(summary.line())
    if not summary.already_complete:
        print(f"  images table:     {config.output.uri}/images")
        print(f"  detections table: {config.output.uri}/detections")
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="COCO mAP (exactly pycocotools') or VOC AP of a detect output against COCO ground truth",
    )
    p.add_argument("--config", help="YAML config (see configs/evaluate.yaml); flags override it")
    p.add_argument("--detections", help="a detect output folder (RUN), any fsspec URI")
    p.add_argument("--ground-truth", help="COCO instances JSON, or a folder of VOC XML / YOLO txt labels; local path or URI")
    _add_label_flags(p, images="--images", images_help="VOC, YOLO: the images the labels belong to (default: beside them)")
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


def _add_report(sub: argparse._SubParsersAction) -> None:
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
    p.set_defaults(run=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    from detbatch.report import DEFAULT_SAMPLES, write_report

    result = write_report(args.detections, args.out, ground_truth=args.ground_truth, evaluation=args.evaluation,
                          samples=DEFAULT_SAMPLES if args.samples is None else args.samples)
    print(f"report: {result.images_shown} images shown, {result.thumbnails} thumbnails, {result.seconds:.1f} s")
    print(f"  open: {result.index}")
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune a detector on COCO-labelled images with Ray Train",
        description="Fine-tune a detector (Ray Train, DDP) on a COCO JSON + images, or on annotated shards. "
        "Flags override the config file; rerunning with the same --name resumes from the latest checkpoint.",
    )
    p.add_argument("--config", help="YAML config (see configs/train.yaml); flags override it")
    p.add_argument("--train-annotations", help="training labels: a COCO JSON, or a folder of VOC XML / YOLO txt (any fsspec URI)")
    _add_label_flags(p)
    p.add_argument("--drop-unlabeled", action="store_true", default=None,
                   help="VOC, YOLO: leave out images without a label file (default: they train as negatives)")
    p.add_argument("--train-images", help="folder the training JSON's file_name are relative to")
    p.add_argument("--train-shards", help="a `detbatch prepare --annotations` output, instead of the two above")
    p.add_argument("--val-annotations", help="COCO JSON of a validation split (default: a seeded fraction of training)")
    p.add_argument("--val-images", help="folder the validation JSON's file_name are relative to")
    p.add_argument("--model", help="detector name (see `detbatch models`)")
    p.add_argument("--weights", help="DEFAULT, a torchvision weights name, none, or a detbatch checkpoint URI")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="images per worker per step")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--num-workers", type=int, help="Ray Train workers (one GPU each with --use-gpu)")
    p.add_argument("--use-gpu", action="store_true", default=None, help="one GPU per worker, NCCL, AMP")
    p.add_argument("--storage-path", help="where runs are kept: a local folder or a URI (s3://...)")
    p.add_argument("--name", help="the run's name (its folder under --storage-path); the same name resumes")
    p.add_argument("--model-uri", help="also copy the best model here at the end (a folder, for --weights)")
    p.add_argument("--ray-address", help="Ray cluster to join (default: the job's, else a local one)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override any config key")
    p.set_defaults(run=_run_train)


TRAIN_FLAGS = {
    "data.train_annotations": "train_annotations",
    "data.train_images": "train_images",
    "data.train_shards": "train_shards",
    "data.val_annotations": "val_annotations",
    "data.val_images": "val_images",
    "data.annotations_format": "annotations_format",
    "data.names": "names",
    "data.drop_unlabeled": "drop_unlabeled",
    "model.name": "model",
    "model.weights": "weights",
    "schedule.epochs": "epochs",
    "optim.batch_size": "batch_size",
    "optim.lr": "lr",
    "scaling.num_workers": "num_workers",
    "scaling.use_gpu": "use_gpu",
    "run.storage_path": "storage_path",
    "run.name": "name",
    "run.model_uri": "model_uri",
    "ray.address": "ray_address",
}


def _run_train(args: argparse.Namespace) -> int:
    from detbatch.training import TrainConfig, run_train

    config = load_job_config(TrainConfig, args, TRAIN_FLAGS)
    result = run_train(config)
    print("\n".join(result.lines()))
    return 0


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write a labelled synthetic shapes dataset (images + COCO JSON)")
    p.add_argument("out", help="output folder/prefix (any fsspec URI)")
    p.add_argument("--images", type=int, default=200, help="number of images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=128, help="side of the square images, pixels")
    p.add_argument("--max-objects", type=int, default=4, help="objects per image at most")
    p.add_argument("--format", choices=["coco", "voc", "yolo"], default="coco",
                   help="labels as OUT/annotations.json (coco), OUT/Annotations/*.xml (voc) or OUT/labels/*.txt (yolo)")
    p.set_defaults(run=_run_synth)


def _run_synth(args: argparse.Namespace) -> int:
    from detbatch.datasets.synth import synthesize

    result = synthesize(args.out, args.images, seed=args.seed, image_size=args.image_size, max_objects=args.max_objects,
                        format=args.format)
    print(f"synth: {result.num_images} images, {result.num_annotations} objects -> {result.out}")
    print(f"  images:      {result.images_uri}")
    print(f"  annotations: {result.annotations_uri}")
    return 0


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="pack a folder of images (and a COCO JSON) into tar or Parquet shards")
    p.add_argument("images", help="folder/prefix of image files")
    p.add_argument("out", help="output folder/prefix for the shards")
    p.add_argument("--format", choices=["tar", "parquet"], required=True)
    p.add_argument("--annotations", help="labels (COCO JSON, or a VOC / YOLO folder): pack only their images, with ids and annotations")
    _add_label_flags(p)
    p.add_argument("--images-per-shard", type=int, default=1000)
    p.add_argument("--overwrite", action="store_true", help="replace shards already in OUT")
    p.set_defaults(run=_run_prepare)


def _run_prepare(args: argparse.Namespace) -> int:
    from detbatch.datasets.prepare import prepare_shards

    result = prepare_shards(args.images, args.out, args.format, annotations=args.annotations,
                            images_per_shard=args.images_per_shard, overwrite=args.overwrite,
                            annotations_format=args.annotations_format or "auto", names=args.names)
    skipped = f" ({result.num_skipped} images not in the annotations skipped)" if result.num_skipped else ""
    print(f"prepare: {result.num_images} images in {result.num_shards} {result.format} shards -> {result.out}{skipped}")
    return 0


def _add_label_flags(p: argparse.ArgumentParser, images: str | None = None, images_help: str = "") -> None:
    """``--annotations-format`` and ``--names`` (and an images flag), as every command that reads labels has them."""
    p.add_argument("--annotations-format", choices=["auto", "coco", "voc", "yolo"],
                   help="the labels' format (default auto: a file is COCO, a folder VOC or YOLO by its files)")
    p.add_argument("--names", help="VOC, YOLO: class names list, data.yaml or one name a line (default: found beside the labels)")
    if images:
        p.add_argument(images, help=images_help)


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert labels between COCO JSON, Pascal VOC XML and YOLO txt",
                       description="Read labels in any format, check them against the image headers, and write them "
                       "in another under OUT (labels only; the images stay where they are).")
    p.add_argument("annotations", help="a COCO JSON, or a folder of VOC XML / YOLO txt labels (any fsspec URI)")
    p.add_argument("out", help="output folder: OUT/annotations.json, OUT/Annotations/*.xml or OUT/labels/*.txt (+ data.yaml)")
    p.add_argument("--to", required=True, choices=["coco", "voc", "yolo"])
    _add_label_flags(p, images="--images", images_help="the images the labels belong to (default: beside them)")
    p.add_argument("--drop-unlabeled", action="store_true", help="VOC, YOLO: leave out images without a label file")
    p.set_defaults(run=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    from detbatch.datasets.convert import convert

    result = convert(args.annotations, args.out, args.to, args.annotations_format or "auto", images=args.images,
                     names=args.names, negatives=not args.drop_unlabeled)
    print("\n".join(result.lines()))
    return 0


def _add_split(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("split", help="split one dataset into train/val/test COCO JSONs (seeded, stratified, group-aware)")
    p.add_argument("annotations", help="a COCO JSON, or a folder of VOC XML / YOLO txt labels (any fsspec URI)")
    p.add_argument("out", help="output folder: OUT/train.json, OUT/val.json, OUT/test.json, OUT/split.json")
    p.add_argument("--fractions", default="0.8,0.1,0.1", help="train,val,test shares of the images (default 0.8,0.1,0.1; 0 skips a split)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--group-by", help="keep groups together: a regex on file_name (its first group is the key), "
                   "or field:NAME for a field of the COCO image entries")
    _add_label_flags(p, images="--images", images_help="VOC, YOLO: the images the labels belong to (default: beside them)")
    p.add_argument("--drop-unlabeled", action="store_true", help="VOC, YOLO: leave out images without a label file")
    p.set_defaults(run=_run_split)


def _run_split(args: argparse.Namespace) -> int:
    from detbatch.datasets.labels import load_annotations
    from detbatch.datasets.split import split_dataset, write_splits
    from detbatch.errors import InputError

    try:
        fractions = tuple(float(f) for f in args.fractions.split(","))
    except ValueError:
        raise InputError(f"--fractions {args.fractions!r}: give three numbers, e.g. 0.8,0.1,0.1") from None
    labels = load_annotations(args.annotations, args.annotations_format or "auto", images=args.images, names=args.names,
                              negatives=not args.drop_unlabeled)
    result = split_dataset(labels.coco, fractions, seed=args.seed, group_by=args.group_by)  # type: ignore[arg-type]
    uris = write_splits(result, args.out)
    print(f"split: {labels.summary()}; {result.report['groups']} groups -> {', '.join(uris.values())}")
    print("\n".join(result.lines()))
    return 0


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the detectors detbatch can build")
    p.set_defaults(run=_run_models)


def _run_models(args: argparse.Namespace) -> int:
    from detbatch.models import model_names

    print("\n".join(model_names()))
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a detector to TorchScript or ONNX, checked against the eager model",
        description="Export a detbatch checkpoint or torchvision weights to TorchScript or ONNX. The exported "
        "file must reproduce the eager model on the check images (to --tolerance) before it is written.",
    )
    p.add_argument("--weights", required=True, help="a checkpoint URI (from `detbatch train`), or DEFAULT / a torchvision weights name with --model")
    p.add_argument("--format", required=True, choices=["torchscript", "onnx"])
    p.add_argument("--out", required=True, help="the file to write (any fsspec URI); OUT.categories.json goes beside it")
    p.add_argument("--model", help="detector name; needed with torchvision weights, read from a checkpoint otherwise")
    p.add_argument("--check-images", help="images for the parity check: a folder, a glob or a file (default: synthetic)")
    p.add_argument("--check-count", type=int, default=8, help="how many of --check-images to use, spread over the listing")
    p.add_argument("--score-threshold", type=float, default=0.05, help="baked into the exported model")
    p.add_argument("--detections-per-image", type=int, default=100, help="baked into the exported model")
    p.add_argument("--tolerance", type=float, default=None, help="parity tolerance (default 1e-3; see PARITY_TOLERANCE in detbatch/export/exporter.py)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the parity check runs the eager and exported models")
    p.set_defaults(run=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from detbatch.export import PARITY_TOLERANCE, export_model
    from detbatch.detect.units import list_input

    check_images = None
    if args.check_images:
        uris = list_input(args.check_images, "images").uris
        step = max(1, len(uris) // max(1, args.check_count))
        check_images = list(uris[::step][: args.check_count])
    result = export_model(
        args.weights,
        args.format,
        args.out,
        model=args.model,
        check_images=check_images,
        score_threshold=args.score_threshold,
        detections_per_image=args.detections_per_image,
        tolerance=PARITY_TOLERANCE if args.tolerance is None else args.tolerance,
        device=args.device,
    )
    print("\n".join(result.lines()))
    return 0


COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_detect,
    _add_evaluate,
    _add_report,
    _add_train,
    _add_synth,
    _add_prepare,
    _add_convert,
    _add_split,
    _add_models,
    _add_export,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detbatch", description="Object detection at cluster scale on Ray.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


# Loggers that stay at INFO under -v, because their DEBUG lines hold credentials.
QUIET_LOGGERS = ("botocore", "aiobotocore", "boto3", "s3transfer", "urllib3")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # At DEBUG the AWS clients log every signed request, session token included: -v is for detbatch.
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.getLogger(name).level, logging.INFO))
    try:
        return args.run(args)
    except RunFailed as e:  # the run started and stopped; its message says how to resume
        print(f"detbatch {args.command}: error: {e}", file=sys.stderr)
        return 1
    except DetbatchError as e:  # bad input, config or storage: the message names the value and the fix
        print(f"detbatch {args.command}: error: {e}", file=sys.stderr)
        return 2
    # Anything else is a bug: it propagates, with its traceback.


if __name__ == "__main__":
    raise SystemExit(main())
