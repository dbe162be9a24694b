"""What every command shares: one config from the file, ``--set`` and the flags; the flags of labels."""

from __future__ import annotations

import argparse
from typing import Any


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

def score_or_uri(value: str) -> float | str:
    """``--score-threshold``: a number, or the URI of a thresholds file."""
    try:
        return float(value)
    except ValueError:
        return value

def add_label_flags(p: argparse.ArgumentParser, images: str | None = None, images_help: str = "") -> None:
    """``--annotations-format`` and ``--names`` (and an images flag), as every command that reads labels has them."""
    p.add_argument("--annotations-format", choices=["auto", "coco", "voc", "yolo"],
                   help="the labels' format (default auto: a file is COCO, a folder VOC or YOLO by its files)")
    p.add_argument("--names", help="VOC, YOLO: class names list, data.yaml or one name a line (default: found beside the labels)")
    if images:
        p.add_argument(images, help=images_help)


def int_or_auto(value: str) -> int | str:
    """``--max-actors``, ``--replicas``: a number, or ``auto`` (docs/detect.md, docs/serve.md)."""
    return value if value == "auto" else int(value)
