"""``detbatch convert``: labels from any of COCO, VOC and YOLO to any other (labels only; images stay put).

Output layouts under ``OUT`` (docs/data.md, "Labels")::

    coco   OUT/annotations.json
    voc    OUT/Annotations/{stem}.xml   one per image (negatives too), + OUT/data.yaml (names, ids)
    yolo   OUT/labels/{stem}.txt        one per image (empty for a negative), + OUT/data.yaml

``{stem}`` is the image's ``file_name`` less its extension, folders kept, so that each label file is found
beside its image the way :mod:`detbatch.datasets.labels` reads it back. ``OUT/problems.jsonl`` lists the
bad labels the read found (one JSON object a line), when there are any.
"""

from __future__ import annotations

import json
import logging
import posixpath
from dataclasses import dataclass
from typing import Any

from detbatch import storage
from detbatch.datasets.labels import FORMATS, Labels, in_threads, load_annotations
from detbatch.datasets.voc import voc_xml
from detbatch.datasets.yolo import Categories, categories_yaml, yolo_line
from detbatch.errors import InputError

logger = logging.getLogger(__name__)

PROBLEMS_FILE = "problems.jsonl"


@dataclass(frozen=True)
class ConvertResult:
    out: str
    format: str
    labels_uri: str  # what to pass back as --annotations: the JSON, or the Annotations / labels folder
    labels: Labels  # what was read, with its problems

    def lines(self) -> list[str]:
        lines = [f"convert: {self.labels.summary()} -> {self.labels_uri} ({self.format})"]
        if self.labels.problems:
            lines.append(f"  problems: {storage.join(self.out, PROBLEMS_FILE)}")
        return lines


def convert(
    annotations: str,
    out: str,
    to: str,
    source_format: str = "auto",
    images: str | None = None,
    names: str | None = None,
    negatives: bool = True,
) -> ConvertResult:
    """Read ``annotations`` (any format; images' sizes checked against their headers) and write them
    under ``out`` in format ``to``. Arguments as :func:`~detbatch.datasets.labels.load_annotations`."""
    if to not in FORMATS:
        raise InputError(f"unknown output format {to!r}; choose one of: {', '.join(FORMATS)}")
    labels = load_annotations(annotations, source_format, images=images, names=names, negatives=negatives, check=True)
    labels_uri = write_labels(labels.coco, out, to)
    if labels.problems:
        text = "".join(json.dumps(p.as_dict()) + "\n" for p in labels.problems)
        storage.write_text(storage.join(out, PROBLEMS_FILE), text)
    return ConvertResult(out, to, labels_uri, labels)


def write_labels(coco: dict[str, Any], out: str, format: str) -> str:
    """Write the COCO dict ``coco`` under ``out`` in ``format`` (layouts in the module docstring); returns
    the labels' URI. Every image entry needs ``width`` and ``height`` (YOLO normalises by them)."""
    if format == "coco":
        uri = storage.join(out, "annotations.json")
        storage.write_text(uri, json.dumps(coco, separators=(",", ":")))
        return uri
    stems: dict[str, str] = {}
    for im in coco["images"]:
        stem = posixpath.splitext(str(im["file_name"]))[0]
        if stems.setdefault(stem, im["file_name"]) != im["file_name"]:
            raise InputError(f"images {stems[stem]!r} and {im['file_name']!r} would share the label file {stem}; rename one")
    categories = sorted(coco["categories"], key=lambda c: int(c["id"]))
    by_image: dict[int, list[dict[str, Any]]] = {int(im["id"]): [] for im in coco["images"]}
    for ann in coco["annotations"]:
        by_image[int(ann["image_id"])].append(ann)
    folder = storage.join(out, "Annotations" if format == "voc" else "labels")
    if format == "voc":
        names = {int(c["id"]): str(c["name"]) for c in categories}

        def render(im: dict[str, Any]) -> tuple[str, bytes]:
            return "xml", voc_xml(im["file_name"], im["width"], im["height"], by_image[int(im["id"])], names)
    else:
        index = {int(c["id"]): k for k, c in enumerate(categories)}

        crowds = sum(bool(a.get("iscrowd", 0)) for a in coco["annotations"])
        if crowds:  # as Ultralytics' own COCO converter does: a crowd is no object to find
            logger.warning("%d crowd regions left out: YOLO labels have no crowds or ignore regions", crowds)

        def render(im: dict[str, Any]) -> tuple[str, bytes]:
            anns = [a for a in by_image[int(im["id"])] if not a.get("iscrowd", 0)]
            lines = [yolo_line(index[int(a["category_id"])], a["bbox"], im["width"], im["height"]) for a in anns]
            return "txt", "".join(line + "\n" for line in lines).encode("utf-8")

    def write(im: dict[str, Any]) -> None:
        ext, data = render(im)
        storage.write_bytes(storage.join(folder, f"{posixpath.splitext(str(im['file_name']))[0]}.{ext}"), data)

    for _ in in_threads(write, coco["images"]):
        pass
    yaml_text = categories_yaml(Categories([int(c["id"]) for c in categories], [str(c["name"]) for c in categories]))
    storage.write_text(storage.join(out, "data.yaml"), yaml_text)
    logger.info("wrote %d %s label files to %s", len(coco["images"]), format, folder)
    return folder
