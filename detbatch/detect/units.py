"""Listing the input and cutting it into units: image files, WebDataset tar shards, Parquet shards, or the
row ranges of an index (:mod:`detbatch.detect.index`).

The driver lists the input once (:func:`list_input`) and cuts it into *units* — a fixed run of image
files, or one shard. Units are the grain of the exactly-once contract: each image is addressed by
``(unit, index)``, its position in the sorted listing, which is the same on every run over the same
input. :mod:`detbatch.detect.read` streams a unit's images in Ray tasks.

A shard member's uri is ``SHARD_URI#FILE_NAME`` (the member's name inside the shard); a plain image file's
uri is its path, ``#`` and all (:func:`detbatch.metrics.pairing.shard_member` tells them apart).
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
from dataclasses import dataclass
from collections.abc import Iterable
from typing import Any, Iterator

from detbatch import storage
from detbatch.errors import InputError
from detbatch.metrics.coco_json import InvalidCocoError, check_ids, json_ids
from detbatch.metrics.pairing import SHARD_EXTENSIONS, normalize_name, relative_name

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm"})
# Units in a plan row of a listing part or an index file (detbatch.detect.plan). A task of the stream cuts
# each row into its units, and Ray Data hands them on one at a time while that task (and the one that
# splits its output into a block per unit) holds a CPU: a row of 16 units keeps that short. A part of
# 131,072 files cut whole held it for ~50 s, and on a small node no read task could start meanwhile.
# 100M inputs still plan in ~25,000 rows.
UNITS_PER_ROW = 16


def derived_image_id(uri: str) -> int:
    """A stable non-negative int64 id from a uri: same uri, same id, on every run and machine."""
    return int.from_bytes(hashlib.blake2b(uri.encode("utf-8"), digest_size=8).digest(), "big") >> 1


@dataclass(frozen=True)
class ListingSummary:
    """What a run needs of a listing without its files: the digests a rerun is checked on (a persisted
    plan gives these without relisting: :mod:`detbatch.detect.plan`)."""

    kind: str
    root: str
    digest: str
    content_digest: str
    num_inputs: int
    """Files listed: images, shards, or index files."""


@dataclass(frozen=True)
class InputListing:
    kind: str
    """``images``, ``tar``, ``parquet`` or ``index``."""
    root: str
    """The URI that file names are relative to (the folder/prefix, or a glob's fixed part)."""
    uris: tuple[str, ...]
    """Every input file (images or shards), sorted."""
    versions: tuple[str, ...] = ()
    """Per file, what changes when its bytes change: ``size:ETag`` on object stores, ``size:mtime`` locally."""

    @property
    def num_inputs(self) -> int:
        return len(self.uris)

    def summary(self) -> ListingSummary:
        return ListingSummary(self.kind, self.root, self.digest, self.content_digest, self.num_inputs)

    @property
    def digest(self) -> str:
        """Fingerprint of the file names: a rerun on another set of files is refused rather than mixed."""
        return digest_hex(names_sum(self.uris))

    @property
    def content_digest(self) -> str:
        """Fingerprint of names and versions: a file replaced under the same name changes it too."""
        return digest_hex(names_sum(f"{u}\0{v}" for u, v in zip(self.uris, self.versions, strict=True)))

    def relative_name(self, uri: str) -> str:
        """``uri``'s name below the listing's root, as a manifest's ``file_name`` gives it."""
        return relative_name(uri, self.root, self.kind)


# A listing's digests are sums of a SHA-256 per item, modulo 2**256: listing tasks each sum the files they
# found and the sums add up, so that no file crosses to the driver for it (detbatch.detect.listing). The
# order of a listing is a function of its names (sorted), so a digest of the set is a digest of the listing.
_DIGEST_MODULUS = 1 << 256


def names_sum(items: Iterable[str]) -> int:
    """The sum of the items' SHA-256 values (as 256-bit integers), modulo 2**256."""
    total = 0
    for item in items:
        total += int.from_bytes(hashlib.sha256(item.encode()).digest(), "big")
    return total % _DIGEST_MODULUS


def digest_hex(total: int) -> str:
    """A listing digest as state.json and the plan record it."""
    return f"{total % _DIGEST_MODULUS:064x}"


def file_version(info: dict[str, Any]) -> str:
    """``size:ETag`` (S3, GCS) or ``size:mtime`` (local) from an fsspec ``info`` dict."""
    tag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("mtime") or info.get("LastModified") or ""
    return f"{info.get('size')}:{str(tag).strip(chr(34))}"


def listed_size(version: str) -> int:
    """The size in a listing's version string (``size:tag``, :func:`file_version`), -1 when unknown."""
    size = version.split(":", 1)[0]
    return int(size) if size.isdigit() else -1


def _extension(path: str) -> str:
    return posixpath.splitext(path)[1].lower()


def list_input(uri: str, format: str = "auto", parallel: bool | None = None) -> InputListing:
    """List ``uri`` (a file, a folder/prefix, or a glob) into a sorted :class:`InputListing`, in memory.

    ``parallel``: list a folder/prefix in Ray tasks, one per sub-prefix (:mod:`detbatch.detect.listing`);
    None: when Ray is up; False: one ``find`` here. The result is the same either way. An index (``format``
    ``index``, or with ``auto`` CSV/JSON-lines files, or Parquet whose first file has a ``uri`` and no
    ``image`` column) lists the index files; their rows are read by tasks (:mod:`detbatch.detect.index`).
    ``detbatch detect`` lists image files into the output instead (:func:`list_into`), never holding them.
    """
    from detbatch.detect.listing import ListingJob

    shape = input_shape(uri)
    listed = gather(shape, ListingJob(root=shape.root, parts=None, images=format in ("auto", "images")), parallel)
    kind = choose_format(uri, format, listed)
    if kind == "images":
        rows = listed.images or []
        return InputListing(kind, shape.root, tuple(r["uri"] for r in rows), tuple(r["version"] for r in rows))
    files = kind_files(kind, listed.others)
    return InputListing(kind, shape.root, tuple(u for u, _ in files), tuple(v for _, v in files))


@dataclass(frozen=True)
class InputShape:
    """What ``--input`` names: a ``glob``, a ``file`` or a ``folder``, and the root of its file names."""

    uri: str
    shape: str
    root: str


def input_shape(uri: str) -> InputShape:
    """Look ``uri`` up (one request): :class:`InputError` when there is nothing there."""
    fs, path = storage.resolve(uri)
    if any(c in path for c in "*?["):
        fixed = path.split("*", 1)[0].split("?", 1)[0].split("[", 1)[0]
        root_path = fixed if fixed.endswith("/") else posixpath.dirname(fixed)
        return InputShape(uri, "glob", storage.to_uri(fs, root_path.rstrip("/")))

    def look() -> dict[str, Any]:
        fs.invalidate_cache(path)
        # info(), not isfile()/isdir(): those take any error, a 500 included, for "no such thing"
        try:
            return fs.info(path)
        except FileNotFoundError:
            raise InputError(f"{uri}: no such file, folder or prefix (check the URI and your credentials)") from None

    info = listing_call(uri, look)
    if info.get("type") == "file":
        return InputShape(uri, "file", storage.to_uri(fs, posixpath.dirname(path)))
    return InputShape(uri, "folder", storage.to_uri(fs, path.rstrip("/")))


def listing_call(uri: str, call: Any) -> Any:
    """``call()`` with transient faults retried; any other failure of a listing a :class:`StorageError`."""
    try:
        return storage.retrying(call, f"{uri}: list")
    except (InputError, storage.TransientStorageError):
        raise
    except Exception as e:  # network and permission errors of every fsspec backend
        raise storage.StorageError(storage.describe_error(uri, e)) from e


def gather(shape: InputShape, job: Any, parallel: bool | None = None) -> Any:
    """Every file ``shape`` names, as a :class:`detbatch.detect.listing.Listed` for ``job``."""
    from detbatch.detect.listing import found_in, list_tree, walk

    fs, path = storage.resolve(shape.uri)
    if shape.shape == "folder":
        return walk(list_tree(shape.uri, job, parallel), job)

    def files() -> dict[str, Any]:
        fs.invalidate_cache(path)
        if shape.shape == "glob":
            return {p: i for p, i in fs.glob(path, detail=True).items() if i.get("type") == "file"}
        return {path: fs.info(path)}

    found = found_in(fs, listing_call(shape.uri, files), [], job)
    return walk(iter([("found", found), *found.segments]), job)


def choose_format(uri: str, format: str, listed: Any) -> str:
    """The input's kind from a listing's counts (``format`` auto: the one kind present, an index when the
    Parquet files have a ``uri`` column and no ``image`` one); :class:`InputError` naming what was found
    when there is none, several, or none of the kind asked for."""
    from detbatch.detect.index import INDEX_EXTENSIONS, is_index_schema, parquet_columns

    counts = listed.counts
    total = sum(counts.values())
    present_of = {"images": counts["images"], "tar": counts["tar"], "parquet": counts["parquet"], "index": counts["text"]}
    if format == "auto":
        present = [k for k, n in present_of.items() if n]
        if not present:
            raise InputError(
                f"{uri}: found {total} files but no images ({', '.join(sorted(IMAGE_EXTENSIONS))}), "
                f"no .tar or .parquet shards and no index ({', '.join(INDEX_EXTENSIONS)})"
            )
        if present == ["parquet"] and is_index_schema(parquet_columns(kind_files("parquet", listed.others)[0][0])):
            present = ["index"]
        if len(present) > 1:
            found = ", ".join(f"{present_of[k]} {k}" for k in present)
            raise InputError(f"{uri}: mixed input ({found}); choose one with --input-format images|tar|parquet|index")
        format = present[0]
    if format not in present_of:
        raise InputError(f"unknown input format {format!r}; choose auto, images, tar, parquet or index")
    chosen = counts["parquet"] + counts["text"] if format == "index" else present_of[format]
    if not chosen:
        raise InputError(f"{uri}: no {format} files found ({total} other files)")
    if total - chosen:
        logger.info("%s: ignoring %d files that are not %s", uri, total - chosen, format)
    return format


def kind_files(kind: str, others: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The ``(uri, version)`` of a listing's shards or index files of ``kind``, sorted."""
    from detbatch.detect.index import INDEX_EXTENSIONS

    wanted = tuple(INDEX_EXTENSIONS) if kind == "index" else (SHARD_EXTENSIONS[kind],)
    return sorted((u, v) for u, v in others if _extension(u.split("?", 1)[0]) in wanted)


def load_manifest(uri: str) -> dict[str, int]:
    """``file_name -> image_id`` from a COCO JSON's ``images`` (``file_name`` normalized as pairing does).

    Refused, naming the entry: an image without an integer ``id`` or a ``file_name``, two images with one
    id, two entries for one file (a later entry would silently win, and the run's ids disagree with the
    ground truth's).
    """
    try:
        coco = json.loads(storage.read_text(uri))
    except FileNotFoundError:
        raise InputError(f"manifest {uri} not found (check --manifest)") from None
    except json.JSONDecodeError as e:
        raise InputError(f"manifest {uri} is not valid JSON: {e}") from None
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        raise InputError(f"manifest {uri} is not a COCO JSON (no 'images' list)")
    images = coco["images"]
    given = [im.get("file_name") if isinstance(im, dict) else None for im in images]
    try:
        ids, has_id = json_ids("images", images, [str(f) for f in given])
        check_ids("images", ids, has_id, [str(f) for f in given])
        return _manifest_ids(ids.tolist(), given)
    except InvalidCocoError as e:
        raise InputError(f"manifest {uri}: {e}") from None


def _manifest_ids(ids: list[int], file_names: list[Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    first: dict[str, int] = {}
    for i, (image_id, file_name) in enumerate(zip(ids, file_names)):
        if file_name is None:
            raise InvalidCocoError(
                f"images[{i}] (id {image_id}) has no file_name; give every image the file_name of its file, "
                f"relative to the input root"
            )
        name = normalize_name(str(file_name))
        if name in first:
            raise InvalidCocoError(
                f"images[{first[name]}] (id {ids[first[name]]}) and images[{i}] (id {image_id}) are both file "
                f"{name!r}; list each file once"
            )
        first[name], out[name] = i, image_id
    return out


def plan_units(
    listing: InputListing, images_per_unit: int, manifest: dict[str, int] | None
) -> list[dict[str, Any]]:
    """Cut the listing into units: rows of ``unit``, ``kind``, ``uris``, ``image_ids`` (images only), and
    for an index ``start``/``stop``, the unit's rows of its index file (see :func:`unit_rows`)."""
    return list(unit_rows(listing, images_per_unit, manifest))


def unit_rows(
    listing: InputListing, images_per_unit: int, manifest: dict[str, int] | None
) -> Iterator[dict[str, Any]]:
    """The units of :func:`plan_units`, one at a time: :func:`plan_rows` with each index file cut into its
    units (:func:`index_units`)."""
    for row in plan_rows(listing, images_per_unit, manifest):
        yield from index_units(row)


def plan_rows(
    listing: InputListing, images_per_unit: int, manifest: dict[str, int] | None
) -> Iterator[dict[str, Any]]:
    """The rows of a run's plan (:mod:`detbatch.detect.plan`) from an in-memory listing, one at a time: a
    unit per row for image files and shards; for an index, a row per :data:`UNITS_PER_ROW` units of each
    index file, its rows ``[start, stop)`` to be cut into units of ``step`` rows (:func:`index_units`) by
    the stream. Units are numbered across the index files in listing order; the row counts come from
    :func:`detbatch.detect.index.index_row_counts` (Ray tasks when Ray is up). An empty index file has no
    units. (``detbatch detect`` plans image files from its listing parts: :func:`detbatch.detect.plan.part_rows`.)"""
    if listing.kind == "index":
        from detbatch.detect.index import index_row_counts

        unit = 0
        span = UNITS_PER_ROW * images_per_unit
        for uri, rows in zip(listing.uris, index_row_counts(listing.uris)):
            for start in range(0, rows, span):
                stop = min(start + span, rows)
                yield {"unit": unit, "kind": "index", "uris": [uri], "image_ids": [], "start": start, "stop": stop,
                       "step": images_per_unit}
                unit += -(-(stop - start) // images_per_unit)
        return
    if listing.kind != "images":
        for i, u in enumerate(listing.uris):
            yield {"unit": i, "kind": listing.kind, "uris": [u], "image_ids": []}
        return
    for i, start in enumerate(range(0, len(listing.uris), images_per_unit)):
        uris = list(listing.uris[start : start + images_per_unit])
        ids = [image_id_for(u, listing.relative_name(u), manifest, None) for u in uris]
        # Each file's size as listed (-1: unknown), so that read_unit refuses one over max_bytes unread.
        sizes = [listed_size(v) for v in listing.versions[start : start + images_per_unit]] if listing.versions else []
        yield {"unit": i, "kind": "images", "uris": uris, "image_ids": ids, "sizes": sizes}


def units_in(row: dict[str, Any]) -> int:
    """How many units a plan row stands for: an index file's ``ceil((stop - start) / step)``, else 1."""
    step = row.get("step", -1)
    return -(-(row["stop"] - row["start"]) // step) if row["kind"] == "index" and step > 0 else 1


def index_units(row: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The units of a plan row: a row with ``step`` > 0 (an index file's, or a listing part's of image
    files) becomes one unit per ``step`` rows of ``[start, stop)`` (numbered from its ``unit``, the last one
    shorter), which the read task reads from that file; any other row is one unit already."""
    if row.get("step", -1) <= 0:
        yield row
        return
    step, stop = row["step"], row["stop"]
    for k, start in enumerate(range(row["start"], stop, step)):
        yield {**row, "unit": row["unit"] + k, "start": start, "stop": min(start + step, stop), "step": -1}


def image_id_for(uri: str, name: str, manifest: dict[str, int] | None, given: Any) -> int:
    """The image id a run records: ``given`` (a shard's own), else the manifest's for ``name``, else derived."""
    if given is not None:
        return int(given)
    if manifest is not None and name in manifest:
        return manifest[name]
    return derived_image_id(uri)
