"""Input listing and reading: image files, WebDataset tar shards, Parquet shards.

The driver lists the input once (:func:`list_input`) and cuts it into *units* — a fixed run of image
files, or one shard. Units are the grain of the exactly-once contract: each image is addressed by
``(unit, index)``, its position in the sorted listing, which is the same on every run over the same
input. :func:`read_unit` runs in Ray tasks and streams a unit's images as encoded bytes, one row per
image, marking the unit's last row so the sink can tell when a unit is whole.

A shard member's uri is ``SHARD_URI#FILE_NAME`` (the member's name inside the shard).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import posixpath
import tarfile
from dataclasses import dataclass
from typing import Any, Iterator

import pyarrow as pa

from detbatch import storage

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm"})
SHARD_EXTENSIONS = {"tar": ".tar", "parquet": ".parquet"}

# Rows of the read stage. Typed Arrow, so that a column of nulls stays a column of strings.
READ_SCHEMA = pa.schema(
    [
        ("unit", pa.int64()),
        ("index", pa.int64()),
        ("last", pa.bool_()),
        ("uri", pa.string()),
        ("image_id", pa.int64()),
        ("data", pa.binary()),
        ("error", pa.string()),
    ]
)

# Rows per batch that read_unit yields: small enough that a unit of large images never forms one huge
# block, large enough that per-batch overhead stays negligible.
ROWS_PER_READ_BATCH = 8


class InputError(ValueError):
    """Input that cannot be listed or understood, naming the URI and the fix."""


def derived_image_id(uri: str) -> int:
    """A stable non-negative int64 id from a uri: same uri, same id, on every run and machine."""
    return int.from_bytes(hashlib.blake2b(uri.encode("utf-8"), digest_size=8).digest(), "big") >> 1


@dataclass(frozen=True)
class InputListing:
    kind: str
    """``images``, ``tar`` or ``parquet``."""
    root: str
    """The URI that file names are relative to (the folder/prefix, or a glob's fixed part)."""
    uris: tuple[str, ...]
    """Every input file (images or shards), sorted."""

    @property
    def digest(self) -> str:
        """Fingerprint of the listing: a rerun on a changed input is refused rather than mixed."""
        h = hashlib.sha256()
        for u in self.uris:
            h.update(u.encode())
            h.update(b"\0")
        return h.hexdigest()

    def relative_name(self, uri: str) -> str:
        return relative_name(self.root, uri)


def relative_name(root: str, uri: str) -> str:
    """``uri``'s path below ``root`` (a shard member: the part after ``#``)."""
    if "#" in uri:
        return uri.split("#", 1)[1]
    base = root.rstrip("/") + "/"
    return uri[len(base) :] if uri.startswith(base) else posixpath.basename(uri)


def _extension(path: str) -> str:
    return posixpath.splitext(path)[1].lower()


def list_input(uri: str, format: str = "auto") -> InputListing:
    """List ``uri`` (a file, a folder/prefix, or a glob) into a sorted :class:`InputListing`."""
    fs, path = storage.resolve(uri)
    try:
        if any(c in path for c in "*?["):
            paths = sorted(p for p in fs.glob(path) if fs.isfile(p))
            fixed = path.split("*", 1)[0].split("?", 1)[0].split("[", 1)[0]
            root_path = fixed if fixed.endswith("/") else posixpath.dirname(fixed)
        elif fs.isfile(path):
            paths, root_path = [path], posixpath.dirname(path)
        elif fs.isdir(path):
            paths, root_path = sorted(fs.find(path)), path
        else:
            raise InputError(f"{uri}: no such file, folder or prefix (check the URI and your credentials)")
    except InputError:
        raise
    except Exception as e:  # network and permission errors of every fsspec backend
        raise storage.StorageError(storage.describe_error(uri, e)) from e

    by_kind = {
        "images": [p for p in paths if _extension(p) in IMAGE_EXTENSIONS],
        "tar": [p for p in paths if _extension(p) == ".tar"],
        "parquet": [p for p in paths if _extension(p) == ".parquet"],
    }
    if format == "auto":
        present = [k for k, v in by_kind.items() if v]
        if not present:
            raise InputError(
                f"{uri}: found {len(paths)} files but no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) "
                f"and no .tar or .parquet shards"
            )
        if len(present) > 1:
            counts = ", ".join(f"{len(by_kind[k])} {k}" for k in present)
            raise InputError(f"{uri}: mixed input ({counts}); choose one with --input-format images|tar|parquet")
        format = present[0]
    if format not in by_kind:
        raise InputError(f"unknown input format {format!r}; choose auto, images, tar or parquet")
    chosen = by_kind[format]
    if not chosen:
        raise InputError(f"{uri}: no {format} files found ({len(paths)} other files)")
    ignored = len(paths) - len(chosen)
    if ignored:
        logger.info("%s: ignoring %d files that are not %s", uri, ignored, format)
    root = storage.to_uri(fs, root_path.rstrip("/"))
    return InputListing(kind=format, root=root, uris=tuple(storage.to_uri(fs, p) for p in chosen))


def load_manifest(uri: str) -> dict[str, int]:
    """``file_name -> image_id`` from a COCO JSON's ``images``."""
    try:
        coco = json.loads(storage.read_text(uri))
    except FileNotFoundError:
        raise InputError(f"manifest {uri} not found (check --manifest)") from None
    except json.JSONDecodeError as e:
        raise InputError(f"manifest {uri} is not valid JSON: {e}") from None
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        raise InputError(f"manifest {uri} is not a COCO JSON (no 'images' list)")
    return {str(im["file_name"]): int(im["id"]) for im in coco["images"]}


def plan_units(
    listing: InputListing, images_per_unit: int, manifest: dict[str, int] | None
) -> list[dict[str, Any]]:
    """Cut the listing into units: rows of ``unit``, ``kind``, ``uris``, ``image_ids`` (images only)."""
    if listing.kind != "images":
        return [{"unit": i, "kind": listing.kind, "uris": [u], "image_ids": []} for i, u in enumerate(listing.uris)]
    units = []
    for i, start in enumerate(range(0, len(listing.uris), images_per_unit)):
        uris = list(listing.uris[start : start + images_per_unit])
        ids = [_image_id(u, listing.relative_name(u), manifest, None) for u in uris]
        units.append({"unit": i, "kind": "images", "uris": uris, "image_ids": ids})
    return units


def _image_id(uri: str, name: str, manifest: dict[str, int] | None, given: Any) -> int:
    if given is not None:
        return int(given)
    if manifest is not None and name in manifest:
        return manifest[name]
    return derived_image_id(uri)


# ---------------------------------------------------------------------------------------------
# Reading (runs in Ray tasks)
# ---------------------------------------------------------------------------------------------


def _rows(unit: int, items: Iterator[tuple[str, int, bytes | None, str | None]]) -> Iterator[dict[str, Any]]:
    """Number the items of a unit and mark its last row (known only once the next one is seen)."""
    pending = None
    for index, (uri, image_id, data, error) in enumerate(items):
        if pending is not None:
            yield pending
        pending = {"unit": unit, "index": index, "last": False, "uri": uri, "image_id": image_id, "data": data, "error": error}
    if pending is not None:
        pending["last"] = True
        yield pending


def _read_files(uris: list[str], image_ids: list[int]) -> Iterator[tuple[str, int, bytes | None, str | None]]:
    for uri, image_id in zip(uris, image_ids):
        try:
            yield uri, image_id, storage.read_bytes(uri), None
        except FileNotFoundError:
            yield uri, image_id, None, "file not found (deleted after listing?)"
        except Exception as e:
            yield uri, image_id, None, f"read failed: {type(e).__name__}: {e}"


def tar_samples(shard: str) -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    """WebDataset grouping: ``(key, [(extension, member name, bytes), ...])`` per sample, in tar order.

    A sample is the run of consecutive file members sharing a key (the member path up to the first dot
    of its base name); the extension is lower-cased, with its dot (``.jpg``, ``.json``). Errors of the
    storage or of the tar itself propagate to the caller.
    """
    fs, path = storage.resolve(shard)
    with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        key, members = None, []
        for member in tar:
            if not member.isfile():
                continue
            base = posixpath.basename(member.name)
            member_key = posixpath.join(posixpath.dirname(member.name), base.split(".", 1)[0])
            ext = "." + base.split(".", 1)[1].lower() if "." in base else ""
            if member_key != key:
                if key is not None:
                    yield key, members
                key, members = member_key, []
            members.append((ext, member.name, tar.extractfile(member).read()))
        if key is not None:
            yield key, members


def sample_parts(members: list[tuple[str, str, bytes]]) -> tuple[tuple[str, bytes] | None, bytes | None]:
    """A :func:`tar_samples` sample's ``(member name, bytes)`` of its image (any image extension; the
    last wins) and the bytes of its ``KEY.json``, each None when absent."""
    image, meta = None, None
    for ext, name, data in members:
        if ext in IMAGE_EXTENSIONS:
            image = (name, data)
        elif ext == ".json":
            meta = data
    return image, meta


def _read_tar(shard: str, root: str, manifest: dict[str, int] | None) -> Iterator[tuple[str, int, bytes | None, str | None]]:
    """WebDataset samples: members sharing a key; the image member is any image extension,
    an optional ``KEY.json`` may give ``image_id`` and ``file_name``."""
    try:
        for _, members in tar_samples(shard):
            image, meta_json = sample_parts(members)
            if image is None:
                continue
            try:
                meta = json.loads(meta_json) if meta_json is not None else None
            except json.JSONDecodeError:
                meta = None
            uri = f"{shard}#{image[0]}"
            name = (meta or {}).get("file_name") or image[0]
            yield uri, _image_id(uri, name, manifest, (meta or {}).get("image_id")), image[1], None
    except Exception as e:
        # A truncated or corrupt shard: what was read so far stands, the rest is one error row.
        yield shard, derived_image_id(shard), None, f"shard unreadable: {type(e).__name__}: {e}"


def _read_parquet(shard: str, manifest: dict[str, int] | None) -> Iterator[tuple[str, int, bytes | None, str | None]]:
    import pyarrow.parquet as pq

    try:
        fs, path = storage.resolve(shard)
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            names = set(pf.schema_arrow.names)
            if not {"file_name", "image"} <= names:
                raise InputError(f"columns {sorted(names)} lack 'file_name' and 'image' (see docs/data.md)")
            columns = ["file_name", "image"] + (["image_id"] if "image_id" in names else [])
            for batch in pf.iter_batches(batch_size=ROWS_PER_READ_BATCH, columns=columns):
                table = batch.to_pydict()
                ids = table.get("image_id") or [None] * batch.num_rows
                for name, data, given in zip(table["file_name"], table["image"], ids):
                    uri = f"{shard}#{name}"
                    yield uri, _image_id(uri, name, manifest, given), data, None
    except Exception as e:
        yield shard, derived_image_id(shard), None, f"shard unreadable: {type(e).__name__}: {e}"


def read_unit(
    unit: dict[str, Any], root: str, manifest: dict[str, int] | None, skip: list[tuple[int, int]]
) -> Iterator[dict[str, Any]]:
    """Stream the rows of one unit, leaving out indices in the half-open ``skip`` ranges."""
    if unit["kind"] == "images":
        items = _read_files(unit["uris"], unit["image_ids"])
    elif unit["kind"] == "tar":
        items = _nonempty(unit["uris"][0], _read_tar(unit["uris"][0], root, manifest))
    else:
        items = _nonempty(unit["uris"][0], _read_parquet(unit["uris"][0], manifest))
    for row in _rows(unit["unit"], items):
        if not any(a <= row["index"] < b for a, b in skip):
            yield row


def _nonempty(shard: str, items: Iterator[tuple[str, int, bytes | None, str | None]]):
    """A shard that holds no image is recorded as one error row, so that its unit completes."""
    empty = True
    for item in items:
        empty = False
        yield item
    if empty:
        yield shard, derived_image_id(shard), None, "shard holds no images"
