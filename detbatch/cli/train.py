"""Models: ``detbatch train``, ``export`` and ``models``."""

from __future__ import annotations

import argparse

from detbatch.cli.common import add_label_flags, load_job_config


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune a detector on COCO-labelled images with Ray Train",
        description="Fine-tune a detector (Ray Train, DDP) on a COCO JSON + images, or on annotated shards. "
        "Flags override the config file; rerunning with the same --name resumes from the latest checkpoint.",
    )
    p.add_argument("--config", help="YAML config (see configs/train.yaml); flags override it")
    p.add_argument("--train-annotations", help="training labels: a COCO JSON, or a folder of VOC XML / YOLO txt (any fsspec URI)")
    add_label_flags(p)
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

def add_export(sub: argparse._SubParsersAction) -> None:
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

def add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the detectors detbatch can build")
    p.set_defaults(run=_run_models)

def _run_models(args: argparse.Namespace) -> int:
    from detbatch.models import model_names

    print("\n".join(model_names()))
    return 0
