"""The typed config of an evaluation: one flat section, ``configs/evaluate.yaml``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from detbatch.config import ConfigError, Section

# The keys an evaluation cannot do without, and the flag of `detbatch evaluate` that gives each. They
# default to None so that a config file and the flags can each give some of them; run_evaluate checks.
REQUIRED_KEYS = {"detections": "--detections", "ground_truth": "--ground-truth", "out": "--out"}


class EvaluateConfig(Section):
    """What to evaluate and where to write it."""

    detections: str | None = None  # a detect output folder (RUN/detections/*.parquet, RUN/run.json), any fsspec URI
    ground_truth: str | None = None  # a COCO instances JSON, or a folder of VOC XML or YOLO txt labels; local or URI
    annotations_format: Literal["auto", "coco", "voc", "yolo"] = "auto"  # auto: a file is COCO, a folder VOC or YOLO by its files
    images: str | None = None  # VOC, YOLO: the images the labels belong to (YOLO needs their sizes); default: beside the labels
    names: str | None = None  # VOC, YOLO: the class names list (data.yaml, classes.txt); default: beside the labels
    out: str | None = None  # folder for metrics.json, report.md, pr_curves.png
    metric: Literal["coco", "voc"] = "coco"
    iou_type: Literal["bbox"] = "bbox"
    ray_address: str | None = None
    use_ray: bool | None = None  # None: Ray when the detections exceed local_max_bytes
    # Parquet bytes up to which `use_ray=None` evaluates in this process (~10M detections).
    local_max_bytes: int = Field(256 * 2**20, gt=0)
    # "auto": by image_id when the detect run had a COCO manifest (run.json), else by file name.
    pair_by: Literal["auto", "image_id", "file_name"] = "auto"
    # "ground_truth": every ground-truth image counts, as pycocotools; "run": only those the run paired.
    image_set: Literal["ground_truth", "run"] = "ground_truth"
    # A detect output without run.json is unfinished: refused unless this is set (metrics.json then
    # records "complete": false).
    allow_incomplete: bool = False
    voc_plus_one: bool = False  # VOC devkit's +1 pixel in widths and areas (integer pixel boxes)
    # COCO: thresholds (P/R/F1 by score, F1-optimal thresholds, thresholds.json) and the confusion matrix,
    # in the same map/reduce as the stats (docs/evaluate.md, "Diagnostics").
    diagnostics: bool = True
    confusion_iou: float = Field(0.5, gt=0, le=1)  # the IoU a confusion-matrix match must reach
    # null: each category's F1-optimal score threshold at IoU 0.5 (the overall one where it has none)
    confusion_score_threshold: float | None = None
    # COCO: AP/AP50/AR100 per value of each of these columns: of the run's images table, of slice_metadata,
    # or derived (num_objects, image_size); docs/evaluate.md, "Slices".
    slice_by: list[str] = []
    slice_metadata: str | None = None  # a Parquet or CSV table with image_id or uri, and the columns to slice by
    plot_categories: int = Field(5, ge=0)  # categories with most ground truth in pr_curves.png
    # Ray: detections per matching task, and Parquet bytes per reading task.
    rows_per_bucket: int = Field(1_000_000, gt=0)
    bytes_per_read_task: int = Field(64 * 2**20, gt=0)

    def require_inputs(self) -> None:
        """Raise unless the detections, the ground truth and the output folder are set (by the file or by flags)."""
        for key, flag in REQUIRED_KEYS.items():
            if not getattr(self, key):
                raise ConfigError(f"{key} is not set; give {flag} URI or set {key} in the config file")
