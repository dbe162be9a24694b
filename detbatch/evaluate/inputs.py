"""The inputs of an evaluation: the ground truth, the detect run, and which run image is which
ground-truth image (docs/evaluate.md, "Pairing")."""

from __future__ import annotations

import json
import logging
import posixpath
from dataclasses import dataclass
from typing import Any

import numpy as np

from detbatch import storage
from detbatch.errors import InputError
from detbatch.metrics.coco import Detections, GroundTruth
from detbatch.metrics.coco_json import CocoDataset, InvalidCocoError, NotCocoError, read_coco_json
from detbatch.metrics.pairing import pair_file_names

logger = logging.getLogger(__name__)

DETECTION_COLUMNS = ("image_id", "category_id", "score", "x_min", "y_min", "x_max", "y_max")


def load_ground_truth(
    uri: str, format: str = "auto", images: str | None = None, names: str | None = None
) -> tuple[CocoDataset, dict[str, int]]:
    """The ground truth at ``uri`` and the label problems found in it, by kind (none for COCO JSON).

    A COCO JSON is parsed as it is (pyarrow); VOC and YOLO labels go through
    :func:`detbatch.datasets.labels.load_annotations` (``format``, ``images``, ``names`` are its) and then the
    same COCO checks. Raises :class:`InputError` naming ``uri`` for a file that is not COCO, or holds an
    entry that cannot be evaluated (docs/evaluate.md, "Ground truth: what is checked").
    """
    from detbatch.datasets.labels import detect_format, load_annotations

    storage.check_readable(uri)
    problems: dict[str, int] = {}
    try:
        if (detect_format(uri) if format == "auto" else format) == "coco":
            data = storage.read_bytes(uri)
        else:
            labels = load_annotations(uri, format, images=images, names=names)
            data, problems = json.dumps(labels.coco).encode("utf-8"), labels.counts()
        return read_coco_json(data), problems
    except NotCocoError as e:
        raise InputError(
            f"{uri}: not COCO ground truth: {e}; --ground-truth takes a COCO instances JSON "
            f"(e.g. annotations/instances_val2017.json)"
        ) from e
    except InvalidCocoError as e:
        raise InputError(f"{uri}: {e}") from e


@dataclass(frozen=True)
class Run:
    """A detect output, as listed: the files to read and what ``run.json`` says."""

    uri: str
    fs: Any
    detection_files: list[str]  # filesystem paths
    detection_sizes: dict[str, int]
    image_files: list[str]
    info: dict[str, Any] | None  # run.json
    uncommitted: int  # detection files left out: detect's crash debris (no images file of that name)

    @property
    def detection_bytes(self) -> int:
        return sum(self.detection_sizes.values())


def open_run(uri: str) -> Run:
    from detbatch.detect.sink import read_commit_log  # inside: detbatch.detect imports the detect driver

    storage.check_readable(uri)
    fs, path = storage.resolve(uri)
    info = None
    try:
        info = json.loads(storage.read_text(storage.join(uri, "run.json")))
    except FileNotFoundError:
        pass
    detections = fs.glob(f"{path}/detections/*.parquet", detail=True)
    if info is None and not detections:
        raise InputError(
            f"{uri}: not a detect output (no detections/*.parquet and no run.json); --detections takes "
            f"the folder `detbatch detect --output` wrote"
        )
    if not detections:
        logger.warning("%s: no detections/*.parquet; every ground truth counts as missed", uri)
    # Half pairs and overlapped parts are debris of interrupted or fenced-off writers and must not be
    # counted; the sink's commit log decides which those are. Files named otherwise than detect's parts
    # are all read.
    not_counted = {posixpath.basename(f) for f in read_commit_log(uri).debris}
    images = sorted(f for f in fs.glob(f"{path}/images/*.parquet") if posixpath.basename(f) not in not_counted)
    debris = {f for f in detections if posixpath.basename(f) in not_counted}
    if debris:
        logger.warning("%s: %d detection files are not committed parts; left out", uri, len(debris))
    sizes = {f: int(detections[f].get("size") or 0) for f in sorted(detections) if f not in debris}
    return Run(uri, fs, list(sizes), sizes, images, info, len(debris))


def read_table(fs: Any, files: list[str], columns: list[str]) -> Any:
    """A pyarrow Table of ``columns`` from Parquet ``files``, cast to the contract's types."""
    import pyarrow as pa
    import pyarrow.dataset as pads

    types = {
        "image_id": pa.int64(), "category_id": pa.int64(), "score": pa.float32(), "uri": pa.string(),
        "x_min": pa.float32(), "y_min": pa.float32(), "x_max": pa.float32(), "y_max": pa.float32(),
        "status": pa.string(),
    }  # fmt: skip
    schema = pa.schema([(c, types[c]) for c in columns])
    if not files:
        return schema.empty_table()
    return pads.dataset(files, schema=schema, filesystem=fs, format="parquet").to_table(columns=columns)


@dataclass(frozen=True)
class Pairing:
    """Run image id -> ground-truth image id (``run_ids`` sorted), the ground-truth images that have a
    run image (``gt_with_run``), and the counts for metrics.json."""

    run_ids: np.ndarray
    gt_ids: np.ndarray
    counts: dict[str, Any]
    gt_with_run: np.ndarray | None = None

    def map(self, image_id: np.ndarray) -> np.ndarray:
        """Ground-truth image ids for run image ids, -1 where unpaired."""
        if len(self.run_ids) == 0:
            return np.full(len(image_id), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self.run_ids, image_id), len(self.run_ids) - 1)
        return np.where(self.run_ids[at] == image_id, self.gt_ids[at], -1)


def pair_images(run: Run, coco_ds: CocoDataset, gt: GroundTruth, pair_by: str) -> Pairing:
    """Pair the run's images with ``gt``'s, by image id or by file name (``pair_by``, ``"auto"``: by
    the run's manifest)."""
    if pair_by == "auto":
        if run.info is None:
            raise InputError(
                f"{run.uri}: no run.json, so it is unknown whether image ids are ground-truth ids; finish "
                f"the detect run, or choose pairing explicitly (pair_by='image_id' or 'file_name')"
            )
        pair_by = "image_id" if (run.info.get("input") or {}).get("manifest") else "file_name"
    if run.image_files:
        images = read_table(run.fs, run.image_files, ["image_id", "uri", "status"])
    else:  # no image table: the images that have detections
        images = read_table(run.fs, run.detection_files, ["image_id", "uri"]).group_by(["image_id", "uri"]).aggregate([])
    run_image = images.column("image_id").to_numpy()
    status = images.column("status").to_pylist() if "status" in images.column_names else ["ok"] * len(run_image)
    counts: dict[str, Any] = {"mode": pair_by}
    if pair_by == "image_id":
        run_ids = gt_ids = gt.image_ids
    else:
        files = dict(zip(coco_ds.image_ids.tolist(), coco_ds.file_names))
        gt_names = [files[i] for i in gt.image_ids.tolist()]
        run_input = (run.info or {}).get("input") or {}
        root = run_input.get("root") or run_input.get("uri")  # detect records the listing root
        # and the input kind (None in a run.json from before it did: shard members are told by their uri)
        result = pair_file_names(images.column("uri").to_pylist(), root, gt_names, run_input.get("kind"))
        paired = result.gt_index >= 0
        order = np.argsort(run_image[paired])
        run_ids, gt_ids = run_image[paired][order], gt.image_ids[result.gt_index[paired]][order]
        counts |= {"paired_by_exact_name": result.exact, "paired_by_basename": result.basename, "ambiguous_names": result.ambiguous}
    mapped = Pairing(run_ids, gt_ids, counts).map(run_image)
    run_paired = mapped >= 0
    gt_paired = np.isin(gt.image_ids, mapped)
    pairing = Pairing(run_ids, gt_ids, counts, gt.image_ids[gt_paired])
    counts |= {
        "detection_files_uncommitted": run.uncommitted,
        "run_images": int(len(run_image)),
        "run_images_error": int(sum(s == "error" for s in status)),
        "run_images_paired": int(run_paired.sum()),
        "run_images_unpaired": int((~run_paired).sum()),
        "gt_images": int(len(gt.image_ids)),
        "gt_images_paired": int(gt_paired.sum()),
        "gt_images_unpaired": int((~gt_paired).sum()),
    }
    return pairing


def paired_detections(table: Any, pairing: Pairing) -> tuple[Detections, int]:
    """Detections of a table of :data:`DETECTION_COLUMNS` with ground-truth image ids (unpaired rows
    dropped), and the number dropped."""
    image_id = pairing.map(table.column("image_id").to_numpy())
    paired = image_id >= 0
    boxes = np.stack([table.column(c).to_numpy() for c in ("x_min", "y_min", "x_max", "y_max")], axis=1)
    dt = Detections(image_id, table.column("category_id").to_numpy(), table.column("score").to_numpy(), boxes)
    return (dt if paired.all() else dt.take(paired)), int((~paired).sum())
