"""Pack a folder of images, optionally with COCO annotations, into WebDataset tar or Parquet shards.

Object stores serve a few large files far faster than many small ones; shards of ~1,000 images
are what the detect and train jobs read. The image bytes are packed unchanged (no decoding, no
re-encoding), so a shard is as faithful as the folder. The formats are specified in ``docs/data.md``.

Images are listed recursively, filtered by extension, and packed in sorted order of their path
relative to the images root (``file_name``). With annotations, only the images the COCO JSON lists
are packed, still in ``file_name`` order, each with its ``image_id``, size and annotations.
"""

from __future__ import annotations

import io
import json
import logging
import os
import posixpath
import tarfile
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from detbatch import storage
from detbatch.errors import InputError, OutputExistsError

if TYPE_CHECKING:
    import pyarrow

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "bmp", "webp", "tif", "tiff", "gif")
FORMATS = ("tar", "parquet")
# Small enough that a reader streams a shard of full-size photos in ~50 MB steps, large enough
# that per-row-group overhead stays negligible.
PARQUET_ROW_GROUP_ROWS = 256
# Image reads in flight: object-store GETs are latency-bound, so many run at once; the window
# bounds how many images are held while the shard writer catches up.
_READ_THREADS = 16
_READ_WINDOW = 64
_DATASET_FILE = "dataset.json"


@dataclass(frozen=True)
class PrepareResult:
    out: str
    format: str
    num_images: int
    num_shards: int
    shard_uris: list[str]
    num_skipped: int = 0  # images in the folder that the annotations do not list


@dataclass(frozen=True)
class _Record:
    file_name: str  # relative to the images root, "/"-separated
    uri: str
    image_id: int | None = None
    width: int | None = None
    height: int | None = None
    annotations: list[dict[str, Any]] | None = None


def prepare_shards(
    images: str,
    out: str,
    format: Literal["tar", "parquet"],
    annotations: str | None = None,
    images_per_shard: int = 1000,
    overwrite: bool = False,
    annotations_format: str = "auto",
    names: str | None = None,
) -> PrepareResult:
    """Pack the images under ``images`` into ``out/shard-{k:06d}.{tar|parquet}`` plus ``out/dataset.json``.

    ``annotations``: a COCO instances JSON whose ``file_name`` values are paths relative to ``images``, or
    a folder of VOC or YOLO labels (``annotations_format``, ``names``: see
    :func:`detbatch.datasets.labels.load_annotations`); when given, only the images it lists are packed
    and each carries its labels in COCO form. ``overwrite``:
    replace the shards and ``dataset.json`` already in ``out`` (otherwise they are an error).
    Memory holds at most ``_READ_WINDOW`` images being read plus, for Parquet, one row group; shards
    are staged on local disk and published whole.
    """
    if format not in FORMATS:
        raise InputError(f"unknown format {format!r}; choose one of: {', '.join(FORMATS)}")
    if not isinstance(images_per_shard, int) or images_per_shard < 1:
        raise InputError(f"images_per_shard={images_per_shard!r}: must be an integer >= 1")

    images_fs, images_root = storage.resolve(images)
    file_names = list_image_files(images)
    if annotations is None:
        records = [_Record(name, storage.to_uri(images_fs, posixpath.join(images_root, name))) for name in file_names]
        categories: list[dict[str, Any]] = []
        skipped = 0
    else:
        from detbatch.datasets.labels import load_annotations  # it reads folders with this module's helpers

        coco = load_annotations(annotations, annotations_format, images=images, names=names).coco
        records, skipped = _annotated_records(coco, file_names, images, annotations)
        categories = coco.get("categories", [])
    if format == "tar":
        _check_unique_keys(records)

    _clear_output(out, overwrite)
    shard_uris = []
    for k, start in enumerate(range(0, len(records), images_per_shard)):
        shard = records[start : start + images_per_shard]
        shard_uri = storage.join(out, f"shard-{k:06d}.{format}")
        with _staged_file(shard_uri) as local_path:
            if format == "tar":
                _write_tar(local_path, _with_bytes(shard))
            else:
                _write_parquet(local_path, _with_bytes(shard))
        shard_uris.append(shard_uri)
        logger.info("wrote %s (%d images)", shard_uri, len(shard))

    manifest = {
        "format": format,
        "num_images": len(records),
        "num_shards": len(shard_uris),
        "images_root": images,
        "annotations": annotations,
        "categories": categories,
        "shards": [posixpath.basename(uri) for uri in shard_uris],
    }
    # Last, so that a dataset.json always describes complete shards.
    storage.write_text(storage.join(out, _DATASET_FILE), json.dumps(manifest, indent=1))
    return PrepareResult(
        out=out,
        format=format,
        num_images=len(records),
        num_shards=len(shard_uris),
        shard_uris=shard_uris,
        num_skipped=skipped,
    )


def list_image_files(images: str) -> list[str]:
    """Paths of the image files under the folder or prefix ``images``, relative to it, sorted.

    Recursive; an image file is one whose extension (any case) is in :data:`IMAGE_EXTENSIONS`.
    """
    storage.check_readable(images)
    fs, root = storage.resolve(images)
    try:
        # Another process may have written here since this filesystem last listed it.
        fs.invalidate_cache(root)
        if fs.isfile(root):
            raise InputError(f"{images}: is a file; pass the folder or prefix that holds the images")
        paths = fs.find(root)
    except (ValueError, storage.StorageError):
        raise
    except Exception as e:  # botocore/aiohttp raise many types; all mean "cannot list"
        raise storage.StorageError(storage.describe_error(images, e)) from e
    names = sorted(path[len(root) :].lstrip("/") for path in paths if _extension(path) in IMAGE_EXTENSIONS)
    if not names:
        raise InputError(
            f"{images}: no image files under it (looked recursively for "
            f"{', '.join('.' + e for e in IMAGE_EXTENSIONS)}, any case); check the URI"
        )
    return names


def load_coco(annotations: str) -> dict[str, Any]:
    """The COCO instances JSON at ``annotations``, checked for the fields packing needs."""
    try:
        text = storage.read_text(annotations)
    except Exception as e:  # FileNotFoundError, PermissionError, botocore errors
        raise storage.StorageError(
            f"cannot read annotations: {storage.describe_error(annotations, e)}; "
            f"pass a COCO instances JSON, or no annotations to pack the images alone"
        ) from e
    try:
        coco = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{annotations}: not valid JSON ({e}); pass a COCO instances JSON") from e
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        raise InputError(f"{annotations}: no 'images' list; pass a COCO instances JSON (images, annotations, categories)")
    for entry in coco["images"]:
        if not isinstance(entry, dict) or "id" not in entry or "file_name" not in entry:
            raise InputError(f"{annotations}: image entry {str(entry)[:200]} lacks 'id' or 'file_name'")
    if not isinstance(coco.get("annotations", []), list):
        raise InputError(f"{annotations}: 'annotations' is not a list")
    return coco


def sample_key(file_name: str) -> str:
    """WebDataset key of an image: ``file_name`` less its extension, ``/`` -> ``__``, ``.`` -> ``_``.

    WebDataset splits a member name at its first dot into key and extension, so keys hold no dots.
    """
    stem = posixpath.splitext(file_name)[0]
    return stem.replace("/", "__").replace(".", "_")


def _extension(file_name: str) -> str:
    """``"jpg"`` for ``"a/b.JPG"``; ``""`` when the name has none."""
    return posixpath.splitext(file_name)[1][1:].lower()


def _annotated_records(
    coco: dict[str, Any], file_names: list[str], images: str, annotations: str
) -> tuple[list[_Record], int]:
    """Records of the images ``coco`` lists, in ``file_name`` order, and the count of unlisted files."""
    entries: dict[str, dict[str, Any]] = {}
    for entry in coco["images"]:
        name = str(entry["file_name"])
        if name in entries:
            raise InputError(f"{annotations}: file_name {name!r} is listed twice (image ids {entries[name]['id']} and {entry['id']})")
        entries[name] = entry
    if not entries:
        raise InputError(f"{annotations}: lists no images; pass the COCO JSON that belongs to {images}")
    present = set(file_names)
    missing = sorted(name for name in entries if name not in present)
    if missing:
        raise InputError(
            f"{len(missing)} images listed in {annotations} are not under {images}: {', '.join(missing[:5])}"
            f"{', ...' if len(missing) > 5 else ''} (file_name is matched against the path relative to the "
            f"images folder; check that the two belong together)"
        )
    skipped = [name for name in file_names if name not in entries]
    if skipped:
        logger.warning(
            "%d images under %s are not in %s and are skipped, e.g. %s",
            len(skipped), images, annotations, ", ".join(skipped[:3]),
        )

    by_image: dict[int, list[dict[str, Any]]] = {int(entry["id"]): [] for entry in entries.values()}
    for ann in coco.get("annotations", []):
        # Annotations of images the JSON does not list have nowhere to go; COCO tools ignore them too.
        by_image.get(int(ann["image_id"]), []).append(ann)

    fs, root = storage.resolve(images)
    records = []
    for name in sorted(entries):
        entry = entries[name]
        image_id = int(entry["id"])
        records.append(
            _Record(
                file_name=name,
                uri=storage.to_uri(fs, posixpath.join(root, name)),
                image_id=image_id,
                width=int(entry["width"]) if "width" in entry else None,
                height=int(entry["height"]) if "height" in entry else None,
                annotations=by_image[image_id],
            )
        )
    return records, len(skipped)


def _check_unique_keys(records: list[_Record]) -> None:
    seen: dict[str, str] = {}
    for record in records:
        key = sample_key(record.file_name)
        if key in seen:
            raise InputError(
                f"{seen[key]!r} and {record.file_name!r} have the same WebDataset key {key!r}; "
                f"rename one, or use format='parquet', which has no keys"
            )
        seen[key] = record.file_name


def _clear_output(out: str, overwrite: bool) -> None:
    """Fail if ``out`` holds an earlier run's shards; with ``overwrite``, delete them first."""
    fs, root = storage.resolve(out)
    try:
        fs.invalidate_cache(root)
        existing = sorted(fs.glob(posixpath.join(root, "shard-*")))
        manifest = posixpath.join(root, _DATASET_FILE)
        if fs.exists(manifest):
            existing.insert(0, manifest)  # first, so that no reader trusts a half-deleted dataset
    except Exception as e:
        raise storage.StorageError(storage.describe_error(out, e)) from e
    if not existing:
        return
    if not overwrite:
        names = ", ".join(posixpath.basename(p) for p in existing[:3])
        raise OutputExistsError(
            f"{out}: already holds {len(existing)} shard/manifest files ({names}, ...); choose an empty "
            f"output, or pass overwrite=True (--overwrite) to replace them"
        )
    logger.info("deleting %d files of an earlier run in %s", len(existing), out)
    for path in existing:
        fs.rm(path)


def _with_bytes(records: list[_Record]) -> Iterator[tuple[_Record, bytes]]:
    """``(record, file bytes)`` in order, reading ahead in threads (at most ``_READ_WINDOW`` held)."""
    with ThreadPoolExecutor(max_workers=_READ_THREADS) as pool:
        for start in range(0, len(records), _READ_WINDOW):
            window = records[start : start + _READ_WINDOW]
            futures = [pool.submit(_read_image, record.uri) for record in window]
            for record, future in zip(window, futures):
                yield record, future.result()


def _read_image(uri: str) -> bytes:
    try:
        return storage.read_bytes(uri)
    except Exception as e:
        raise storage.StorageError(storage.describe_error(uri, e)) from e


def _sample_json(record: _Record) -> dict[str, Any]:
    meta: dict[str, Any] = {"file_name": record.file_name}
    if record.annotations is not None:
        meta.update(image_id=record.image_id, width=record.width, height=record.height, annotations=record.annotations)
    return meta


def _write_tar(path: str, samples: Iterator[tuple[_Record, bytes]]) -> None:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for record, data in samples:
            key = sample_key(record.file_name)
            extension = _extension(record.file_name)
            meta = json.dumps(_sample_json(record), separators=(",", ":")).encode("utf-8")
            for name, payload in ((f"{key}.{extension}", data), (f"{key}.json", meta)):
                # Fixed metadata: the same images give byte-identical shards.
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(payload), 0, 0o644
                tar.addfile(info, io.BytesIO(payload))


def parquet_schema() -> "pyarrow.Schema":
    """The schema of a Parquet shard (see ``docs/data.md``)."""
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("file_name", pa.string(), nullable=False),
            pa.field("image", pa.binary(), nullable=False),
            pa.field("image_id", pa.int64()),
            pa.field("width", pa.int32()),
            pa.field("height", pa.int32()),
            pa.field("annotations", pa.string()),  # JSON list of COCO annotation dicts
        ]
    )


def _write_parquet(path: str, samples: Iterator[tuple[_Record, bytes]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = parquet_schema()
    # Encoded images do not compress and are all distinct: no codec, dictionary or min/max for them.
    compression = {name: "snappy" for name in schema.names} | {"image": "none"}
    small_columns = [name for name in schema.names if name != "image"]
    with pq.ParquetWriter(
        path, schema, compression=compression, use_dictionary=["file_name"], write_statistics=small_columns
    ) as writer:
        rows: list[dict[str, Any]] = []
        for record, data in samples:
            rows.append(
                {
                    "file_name": record.file_name,
                    "image": data,
                    "image_id": record.image_id,
                    "width": record.width,
                    "height": record.height,
                    "annotations": None if record.annotations is None else json.dumps(record.annotations, separators=(",", ":")),
                }
            )
            if len(rows) == PARQUET_ROW_GROUP_ROWS:
                writer.write_table(pa.Table.from_pylist(rows, schema=schema), row_group_size=PARQUET_ROW_GROUP_ROWS)
                rows = []
        if rows:
            writer.write_table(pa.Table.from_pylist(rows, schema=schema), row_group_size=PARQUET_ROW_GROUP_ROWS)


@contextmanager
def _staged_file(uri: str) -> Iterator[str]:
    """A local path to write ``uri``'s content to; on success it is published to ``uri`` whole.

    Like :func:`storage.write_bytes` (readers never see a partial file) but for files too large to
    hold in memory: staged beside the target locally (so the rename is atomic), in a temporary
    directory otherwise and uploaded with the filesystem's (multipart) ``put_file``.
    """
    fs, path = storage.resolve(uri)
    if storage.protocol_of(uri) == "file":
        os.makedirs(os.path.dirname(path), exist_ok=True)
        staged = f"{path}.tmp-{os.getpid()}"
        try:
            yield staged
            os.replace(staged, path)
        finally:
            if os.path.exists(staged):
                os.remove(staged)
        return
    with tempfile.TemporaryDirectory(prefix="detbatch-shard-") as tmp:
        staged = os.path.join(tmp, posixpath.basename(path))
        yield staged
        try:
            fs.put_file(staged, path)
        except Exception as e:
            raise storage.StorageError(storage.describe_error(uri, e)) from e
