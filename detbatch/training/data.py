"""Training data: COCO JSON + image files, or annotated shards, into Ray Datasets of decoded images.

The driver reads only the annotations (a COCO JSON, or a shard set's ``dataset.json``) and builds a
Dataset whose read tasks fetch the image bytes, decode them and clean their boxes, on any node's CPUs.
The training workers receive the decoded rows (``ray.train.get_dataset_shard``); augmentation and
collation happen there (:mod:`detbatch.training.samples`).

Rows of a decoded dataset (:data:`TRAINING_SAMPLE_SCHEMA`): ``image_id``, ``uri``, ``pixels`` (raw RGB, uint8
H x W x 3, row-major; empty when the image could not be read or decoded, ``error`` then says why),
``height``, ``width``, and the image's valid annotations as flat lists: ``bbox`` (COCO xywh, 4 per box),
``category_id``, ``area``, ``iscrowd``, with ``invalid_boxes`` counting the dropped ones.

Without a validation file, images are split by a seeded hash of their ``image_id``
(:func:`~detbatch.training.samples.is_validation`): the same split on every run, and no listing needed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa

from detbatch import storage
from detbatch.config import ConfigError
from detbatch.detect.config import MAX_BYTES, MAX_PIXELS
from detbatch.detect.decode import decode_sample
from detbatch.detect.read import read_file, shard_samples
from detbatch.training.samples import clean_annotations, is_validation, parse_annotations

if TYPE_CHECKING:
    import ray.data

logger = logging.getLogger(__name__)

# Rows of a training Dataset (see the module docstring).
TRAINING_SAMPLE_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.int64()),
        pa.field("uri", pa.string()),
        # The image: uint8 H x W x 3 RGB, row-major; b"" (and height = width = 0) when ``error`` says why.
        pa.field("pixels", pa.large_binary()),
        pa.field("height", pa.int32()),
        pa.field("width", pa.int32()),
        pa.field("error", pa.string()),
        # Its valid annotations, flat: bbox COCO xywh in the image's pixels, 4 per box.
        pa.field("bbox", pa.list_(pa.float64())),
        pa.field("category_id", pa.list_(pa.int64())),
        pa.field("area", pa.list_(pa.float64())),
        pa.field("iscrowd", pa.list_(pa.bool_())),
        pa.field("invalid_boxes", pa.int32()),
    ]
)
# A sample before decoding: ``(uri, image_id (-1: none), encoded bytes, read error, annotations JSON)``.
EncodedSample = tuple[str, int, bytes | None, str | None, str | None]

# Image files per read task, and rows per block a shard reader yields: enough work per task that
# scheduling costs little (a Ray task costs milliseconds; a small PNG decodes in a fraction of one),
# small enough that a block of decoded photos stays in the tens of MB.
FILES_PER_TASK = 64
ROWS_PER_BLOCK = 64
# Image reads in flight per read task: object-store GETs are latency-bound.
_READ_THREADS = 8
# Images whose existence the driver checks before starting: a wrong images folder fails in seconds.
_PROBE_IMAGES = 3

Split = Literal["train", "val", "all"]


@dataclass(frozen=True)
class DataSource:
    """Where one split's images and annotations are, as the driver sees them.

    ``kind``: ``images`` (``items``: one per image: ``image_id``, ``uri``, ``annotations`` JSON) or
    ``tar``/``parquet`` (``items``: one per shard: ``uri``). ``categories``: the COCO ``categories``.
    ``num_images``: images in the source (before any validation split).
    """

    kind: str
    items: list[dict[str, Any]]
    categories: list[dict[str, Any]]
    num_images: int
    description: str


def load_source(
    annotations: str | None, images: str | None, shards: str | None, role: str,
    annotations_format: str = "auto", names: str | None = None, negatives: bool = True,
) -> DataSource:  # fmt: skip
    """Read a split's annotations (not its images). ``role`` names the config keys in error messages;
    ``annotations_format``, ``names``, ``negatives``: :func:`detbatch.datasets.labels.load_annotations`'s."""
    if shards:
        return _load_shards(shards, role)
    assert annotations is not None
    from detbatch.datasets.labels import load_annotations

    labels = load_annotations(annotations, annotations_format, images=images, names=names, negatives=negatives)
    coco = labels.coco
    if labels.problems:  # each left out or dropped as load_annotations says; counted here, listed at DEBUG
        logger.warning("data.%s_annotations %s: %s", role, annotations, labels.summary())
        for problem in labels.problems:
            logger.debug("%s: %s: %s", problem.file, problem.kind, problem.message)
    categories = [c for c in coco.get("categories", []) if isinstance(c, dict) and "id" in c]
    if not categories:
        raise ConfigError(f"{annotations}: no categories; data.{role}_annotations must be a COCO instances JSON with 'categories'")
    root = images or _default_images(annotations, role)
    by_image: dict[int, list[dict[str, Any]]] = {int(im["id"]): [] for im in coco["images"]}
    for ann in coco.get("annotations", []):
        by_image.setdefault(int(ann.get("image_id", -1)), []).append(ann)
    items = [
        {
            "image_id": int(im["id"]),
            "uri": storage.join(root, str(im["file_name"])),
            "annotations": json.dumps(by_image[int(im["id"])], separators=(",", ":")),
        }
        for im in sorted(coco["images"], key=lambda im: int(im["id"]))
    ]
    if not items:
        raise ConfigError(f"{annotations}: lists no images (data.{role}_annotations)")
    _probe_images(items, root, role)
    return DataSource("images", items, categories, len(items), f"{annotations} ({len(items)} images under {root})")


def _default_images(annotations: str, role: str) -> str:
    """:func:`detbatch.datasets.labels.default_images`: ``images/`` (or VOC's ``JPEGImages/``) beside the
    labels or one folder up (``detbatch synth``'s layout, COCO's, YOLO's and VOC's)."""
    from detbatch.datasets.labels import default_images

    found = default_images(annotations)
    if found is not None:
        logger.info("data.%s_images not given; using %s", role, found)
        return found
    raise ConfigError(
        f"data.{role}_images not given and no images/ or JPEGImages/ folder is beside {annotations} or one folder "
        f"up; give --{role}-images FOLDER (the folder the labels' file names are relative to)"
    )


def _probe_images(items: list[dict[str, Any]], root: str, role: str) -> None:
    missing = []
    for item in items[:_PROBE_IMAGES]:
        fs, path = storage.resolve(item["uri"])
        try:
            if not fs.exists(path):
                missing.append(item["uri"])
        except Exception as e:  # botocore/aiohttp raise many types; all mean "cannot reach"
            raise storage.StorageError(storage.describe_error(item["uri"], e)) from e
    if len(missing) == min(len(items), _PROBE_IMAGES):
        raise ConfigError(
            f"images of data.{role}_annotations not found under {root} (e.g. {missing[0]}); "
            f"check --{role}-images: file_name in the JSON are relative to it"
        )


def _load_shards(shards: str, role: str) -> DataSource:
    uri = storage.join(shards, "dataset.json")
    try:
        meta = json.loads(storage.read_text(uri))
    except FileNotFoundError:
        raise ConfigError(
            f"{uri} not found: data.{role}_shards must be a `detbatch prepare --annotations` output folder"
        ) from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{uri} is not valid JSON ({e})") from None
    if not meta.get("annotations"):
        raise ConfigError(
            f"{shards}: shards without annotations cannot train a detector; "
            f"make them with `detbatch prepare IMAGES OUT --annotations COCO.json`"
        )
    categories = [c for c in meta.get("categories", []) if isinstance(c, dict) and "id" in c]
    if not categories:
        raise ConfigError(f"{uri}: no categories (data.{role}_shards); the annotations it was made from list none")
    items = [{"uri": storage.join(shards, name)} for name in meta["shards"]]
    return DataSource(meta["format"], items, categories, int(meta.get("num_images", 0)), f"{shards} ({len(items)} {meta['format']} shards)")


def build_dataset(
    source: DataSource, split: Split, category_ids: list[int], seed: int, val_fraction: float, read_cpus: float,
    max_pixels: int | None = MAX_PIXELS, max_bytes: int | None = MAX_BYTES,
) -> "ray.data.Dataset":
    """A Dataset of :data:`TRAINING_SAMPLE_SCHEMA` rows: the ``split`` of ``source`` (``all``: every image).

    ``max_pixels``, ``max_bytes``: detect's caps on one image (``input.max_pixels``, ``input.max_bytes``,
    docs/data.md), same defaults; an image over them is an error row. An image file's size is checked once
    it is read (a COCO JSON gives no sizes, and asking the store would double the requests).
    """
    import ray.data

    kwargs = {"category_ids": list(category_ids), "split": split, "seed": seed, "val_fraction": val_fraction,
              "max_pixels": max_pixels, "max_bytes": max_bytes}
    if source.kind == "images":
        items = [it for it in source.items if _in_split(it["image_id"], split, seed, val_fraction)]
        if not items:
            raise ConfigError(f"the {split} split of {source.description} is empty; change data.val_fraction")
        ds = ray.data.from_items(items, override_num_blocks=-(-len(items) // FILES_PER_TASK))
        return ds.map_batches(
            read_image_files, batch_size=FILES_PER_TASK, num_cpus=read_cpus, batch_format="numpy", fn_kwargs=kwargs
        )
    ds = ray.data.from_items(source.items, override_num_blocks=len(source.items))
    return ds.map_batches(read_shards, batch_size=1, num_cpus=read_cpus, batch_format="numpy", fn_kwargs=kwargs)


def count_rows(source: DataSource, split: Split, seed: int, val_fraction: float) -> int:
    """Rows the split yields: exact for image files; for shards, the expected share of ``num_images``."""
    if source.kind == "images":
        return sum(_in_split(it["image_id"], split, seed, val_fraction) for it in source.items)
    share = {"all": 1.0, "train": 1.0 - val_fraction, "val": val_fraction}[split]
    return int(source.num_images * share)


def _in_split(image_id: int, split: Split, seed: int, val_fraction: float) -> bool:
    if split == "all":
        return True
    return is_validation(image_id, seed, val_fraction) == (split == "val")


# ---------------------------------------------------------------------------------------------
# Read tasks (run in Ray Data tasks)
# ---------------------------------------------------------------------------------------------


def read_image_files(batch: dict[str, np.ndarray], **kwargs: Any) -> pa.Table:
    """Read, decode and clean a batch of image items (``image_id``, ``uri``, ``annotations``).
    ``kwargs``: :func:`build_dataset`'s (``max_pixels`` and ``max_bytes`` default to detect's defaults)."""
    uris = [str(u) for u in batch["uri"]]
    max_bytes = kwargs.get("max_bytes", MAX_BYTES)
    with ThreadPoolExecutor(min(_READ_THREADS, len(uris))) as pool:
        reads = list(pool.map(lambda uri: read_file(uri, max_bytes), uris))
    samples = [
        (uri, int(image_id), data, error, annotations_json)
        for uri, image_id, (data, error), annotations_json in zip(uris, batch["image_id"], reads, batch["annotations"])
    ]
    return sample_table(samples, kwargs["category_ids"], kwargs.get("max_pixels", MAX_PIXELS))


def read_shards(batch: dict[str, np.ndarray], **kwargs: Any) -> Iterator[pa.Table]:
    """Read, decode and clean the images of a batch of shards, in blocks of :data:`ROWS_PER_BLOCK`."""
    split, seed, fraction = kwargs["split"], kwargs["seed"], kwargs["val_fraction"]
    pending: list[EncodedSample] = []
    max_pixels = kwargs.get("max_pixels", MAX_PIXELS)
    for shard in batch["uri"]:
        for sample in _shard_samples(str(shard), kwargs.get("max_bytes", MAX_BYTES)):
            image_id = sample[1]
            # Unreadable samples (no image_id) are counted once, in the training split.
            if (image_id < 0 and split == "val") or (image_id >= 0 and not _in_split(image_id, split, seed, fraction)):
                continue
            pending.append(sample)
            if len(pending) == ROWS_PER_BLOCK:
                yield sample_table(pending, kwargs["category_ids"], max_pixels)
                pending = []
    if pending:
        yield sample_table(pending, kwargs["category_ids"], max_pixels)


def _shard_samples(shard: str, max_bytes: int | None = MAX_BYTES) -> Iterator[EncodedSample]:
    """The samples of a shard made by ``detbatch prepare --annotations``: its tar samples' ``KEY.json``
    or its Parquet rows carry ``image_id`` and ``annotations``. Without an ``image_id``, ``-1``."""
    kind = "tar" if shard.endswith(".tar") else "parquet"
    for s in shard_samples(shard, kind, columns=("annotations",), batch_size=ROWS_PER_BLOCK, max_bytes=max_bytes):
        annotations_json = s.meta.get("annotations")  # Parquet: the column's JSON text
        if s.error is not None:
            annotations_json = None
        elif kind == "tar":  # the list in the sample's parsed KEY.json
            annotations_json = json.dumps(annotations_json or [], separators=(",", ":"))
        yield s.uri, -1 if s.image_id is None else s.image_id, s.data, s.error, annotations_json


def sample_table(samples: list[EncodedSample], category_ids: list[int], max_pixels: int | None = MAX_PIXELS) -> pa.Table:
    """Decode and clean ``samples`` -> a :data:`TRAINING_SAMPLE_SCHEMA` table, a row per sample.
    ``max_pixels``: see :func:`detbatch.detect.decode.decode_image`.

    A sample that cannot be read, decoded or used (no ``image_id``, annotations that are not JSON) is a
    row with empty ``pixels``, no annotations and ``error`` saying why.
    """
    ids = np.asarray(sorted(category_ids), dtype=np.int64)
    columns: dict[str, list[Any]] = {name: [] for name in TRAINING_SAMPLE_SCHEMA.names}
    for uri, image_id, data, error, annotations_json in samples:
        pixels, error = decode_sample(data, error, max_pixels)
        if error is None and image_id < 0:
            pixels, error = None, "no image_id in the shard (make shards with --annotations)"
        if pixels is None:
            height = width = 0
            clean = clean_annotations([], 0, 0, ids)
        else:
            height, width = pixels.shape[:2]
            try:
                clean = clean_annotations(parse_annotations(annotations_json), width, height, ids)
            except (ValueError, TypeError) as e:
                pixels, error, clean = None, f"annotations unreadable: {e}", clean_annotations([], 0, 0, ids)
        columns["image_id"].append(image_id)
        columns["uri"].append(uri)
        columns["pixels"].append(b"" if pixels is None else pixels.tobytes())
        columns["height"].append(height)
        columns["width"].append(width)
        columns["error"].append(error)
        columns["bbox"].append(clean.bbox.reshape(-1))
        columns["category_id"].append(clean.category_id)
        columns["area"].append(clean.area)
        columns["iscrowd"].append(clean.iscrowd)
        columns["invalid_boxes"].append(clean.num_invalid)
    return pa.Table.from_pydict(columns, schema=TRAINING_SAMPLE_SCHEMA)
