"""Listing the input and cutting it into units: image files, WebDataset tar shards, Parquet shards.

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
from typing import Any

from detbatch import storage
from detbatch.errors import InputError
from detbatch.metrics.coco_json import InvalidCocoError, check_ids, json_ids
from detbatch.metrics.pairing import SHARD_EXTENSIONS, normalize_name, relative_name

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm"})


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
    versions: tuple[str, ...] = ()
    """Per file, what changes when its bytes change: ``size:ETag`` on object stores, ``size:mtime`` locally."""

    @property
    def digest(self) -> str:
        """Fingerprint of the file names: a rerun on another set of files is refused rather than mixed."""
        return _digest(self.uris)

    @property
    def content_digest(self) -> str:
        """Fingerprint of names and versions: a file replaced under the same name changes it too."""
        return _digest(f"{u}\0{v}" for u, v in zip(self.uris, self.versions, strict=True))

    def relative_name(self, uri: str) -> str:
        """``uri``'s name below the listing's root, as a manifest's ``file_name`` gives it."""
        return relative_name(uri, self.root, self.kind)


def _digest(items: Any) -> str:
    h = hashlib.sha256()
    for item in items:
        h.update(item.encode())
        h.update(b"\0")
    return h.hexdigest()


def file_version(info: dict[str, Any]) -> str:
    """``size:ETag`` (S3, GCS) or ``size:mtime`` (local) from an fsspec ``info`` dict."""
    tag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("mtime") or info.get("LastModified") or ""
    return f"{info.get('size')}:{str(tag).strip(chr(34))}"


def _extension(path: str) -> str:
    return posixpath.splitext(path)[1].lower()


def list_input(uri: str, format: str = "auto") -> InputListing:
    """List ``uri`` (a file, a folder/prefix, or a glob) into a sorted :class:`InputListing`."""
    fs, path = storage.resolve(uri)

    def listed() -> tuple[dict[str, Any], str]:
        fs.invalidate_cache(path)
        if any(c in path for c in "*?["):
            fixed = path.split("*", 1)[0].split("?", 1)[0].split("[", 1)[0]
            root_path = fixed if fixed.endswith("/") else posixpath.dirname(fixed)
            return {p: i for p, i in fs.glob(path, detail=True).items() if i.get("type") == "file"}, root_path
        # info(), not isfile()/isdir(): those take any error, a 500 included, for "no such thing"
        try:
            info = fs.info(path)
        except FileNotFoundError:
            raise InputError(f"{uri}: no such file, folder or prefix (check the URI and your credentials)") from None
        if info.get("type") == "file":
            return {path: info}, posixpath.dirname(path)
        return fs.find(path, detail=True), path

    try:
        infos, root_path = storage.retrying(listed, f"{uri}: list")
    except (InputError, storage.TransientStorageError):
        raise
    except Exception as e:  # network and permission errors of every fsspec backend
        raise storage.StorageError(storage.describe_error(uri, e)) from e
    paths = sorted(infos)

    by_kind = {
        "images": [p for p in paths if _extension(p) in IMAGE_EXTENSIONS],
        **{kind: [p for p in paths if _extension(p) == ext] for kind, ext in SHARD_EXTENSIONS.items()},
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
    return InputListing(kind=format, root=root, uris=tuple(storage.to_uri(fs, p) for p in chosen),
                        versions=tuple(file_version(infos[p]) for p in chosen))


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
    """Cut the listing into units: rows of ``unit``, ``kind``, ``uris``, ``image_ids`` (images only)."""
    if listing.kind != "images":
        return [{"unit": i, "kind": listing.kind, "uris": [u], "image_ids": []} for i, u in enumerate(listing.uris)]
    units = []
    for i, start in enumerate(range(0, len(listing.uris), images_per_unit)):
        uris = list(listing.uris[start : start + images_per_unit])
        ids = [image_id_for(u, listing.relative_name(u), manifest, None) for u in uris]
        units.append({"unit": i, "kind": "images", "uris": uris, "image_ids": ids})
    return units


def image_id_for(uri: str, name: str, manifest: dict[str, int] | None, given: Any) -> int:
    """The image id a run records: ``given`` (a shard's own), else the manifest's for ``name``, else derived."""
    if given is not None:
        return int(given)
    if manifest is not None and name in manifest:
        return manifest[name]
    return derived_image_id(uri)
