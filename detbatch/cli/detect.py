"""``detbatch detect``."""

from __future__ import annotations

import argparse

from detbatch.cli.common import int_or_auto, load_job_config, score_or_uri


def add_detect(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--score-threshold", type=score_or_uri, help="keep boxes scoring at least this (0 keeps all), "
                   "or a thresholds.json of `detbatch evaluate` (a threshold per category)")
    p.add_argument("--batch-size", type=int, help="images per forward pass")
    p.add_argument("--min-actors", type=int, help="detector pool size at least")
    p.add_argument("--max-actors", type=int_or_auto, help="detector pool size at most, or auto (one per GPU; docs/detect.md)")
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

def _run_detect(args: argparse.Namespace) -> int:
    from detbatch.detect import DetectConfig, run_detect

    config = load_job_config(DetectConfig, args, DETECT_FLAGS)
    summary = run_detect(config)
    print(summary.line())
    if not summary.already_complete:
        print(f"  images table:     {config.output.uri}/images")
        print(f"  detections table: {config.output.uri}/detections")
    return 0
