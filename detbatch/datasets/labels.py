"""Labels in COCO JSON, Pascal VOC XML or YOLO txt, read into one COCO instances dict.

:func:`load_annotations` is the one reader of labels: ``train``, ``evaluate``, ``prepare``, ``convert``
and ``split`` call it. A COCO JSON is read as it always was; VOC and YOLO folders are read a file at a
time (a window of reads in flight), so a folder of millions of label files on any fsspec URI is fine.
Formats, matching and conventions: docs/data.md, "Labels".

Bad labels are data: each becomes a :class:`LabelProblem` (the file, a kind of :data:`PROBLEM_KINDS`,
a reason) and the rest is read. Only what stops the whole read (no label files, no names list for YOLO,
an images folder that is not there) raises :class:`~detbatch.errors.InputError`.
"""

from __future__ import annotations

import io
import logging
import posixpath
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from detbatch import storage
from detbatch.datasets.prepare import list_image_files, load_coco
from detbatch.datasets.voc import LabelParseError, parse_voc
from detbatch.datasets.yolo import NAMES_FILES, Categories, parse_yolo, read_categories, yolo_to_coco_box
from detbatch.errors import InputError

logger = logging.getLogger(__name__)

FORMATS = ("coco", "voc", "yolo")
LABEL_EXTENSIONS = {"voc": "xml", "yolo": "txt"}
# Each problem's kind, and what happens to the data it is about.
PROBLEM_KINDS = (
    "unparsable",  # XML or txt that will not parse: the image is left out (its labels are unknown)
    "label_without_image",  # a label file (or COCO image entry) whose image is not there: left out
    "ambiguous_image",  # several images share the label file's name (a.jpg, a.png): left out
    "image_without_labels",  # an image without a label file: kept as a negative, or left out (negatives=False)
    "unreadable_image",  # an image whose header cannot be read, so its size is unknown: left out
    "size_mismatch",  # the size a label file (or COCO entry) gives is not the header's: the header's is used
    "unknown_class",  # a class index or name not in the names list: the box is dropped
    "empty_box",  # zero or negative width or height: the box is dropped
    "box_outside_image",  # a box reaching outside its image: the box is dropped
)
# A box may reach this far outside its image and is clipped back in: float rounding of YOLO's normalised
# numbers, not a labelling error (1e-6 px is far below any annotation's precision).
OUTSIDE_TOLERANCE_PX = 1e-6
# Reads in flight: object-store GETs are latency-bound; the window bounds what is held at once.
_READ_THREADS = 16
_READ_WINDOW = 256
# Where an images folder is looked for, beside a label file or folder (synth, COCO, YOLO and VOC layouts).
_IMAGE_FOLDERS = ("images", "JPEGImages")

T = TypeVar("T")


@dataclass(frozen=True)
class LabelProblem:
    """One bad label: ``file`` the label file's (or image's) URI, ``kind`` of :data:`PROBLEM_KINDS`."""

    file: str
    kind: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"file": self.file, "kind": self.kind, "message": self.message}


@dataclass(frozen=True)
class Labels:
    """A dataset's labels as a COCO instances dict (``images`` with ``id``, ``file_name`` relative to the
    images folder, ``width``, ``height``; ``annotations``; ``categories``), and the problems found."""

    coco: dict[str, Any]
    format: str
    problems: list[LabelProblem]

    def counts(self) -> dict[str, int]:
        """Problems by kind, the kinds that occurred, in :data:`PROBLEM_KINDS` order."""
        found = Counter(p.kind for p in self.problems)
        return {kind: found[kind] for kind in PROBLEM_KINDS if found[kind]}

    def summary(self) -> str:
        """``"12 images, 30 boxes; problems: 2 empty_box, 1 unparsable"``."""
        counts = self.counts()
        problems = ", ".join(f"{n} {kind}" for kind, n in counts.items()) if counts else "none"
        return f"{len(self.coco['images'])} images, {len(self.coco['annotations'])} boxes; problems: {problems}"


def detect_format(uri: str) -> str:
    """``coco`` for a file (a JSON), else ``voc`` or ``yolo`` by the label files in the folder: raises
    :class:`InputError` when the folder holds both ``.xml`` and ``.txt`` files, or neither."""
    fs, path = storage.resolve(uri)
    try:
        if path.lower().endswith(".json") or fs.isfile(path):  # a missing JSON: load_coco says so
            return "coco"
        if not fs.isdir(path):
            storage.check_readable(uri)  # raises, naming what is missing
        found = {ext for ext in (_extension(p) for p in fs.find(path)) if ext in LABEL_EXTENSIONS.values()}
    except storage.StorageError:
        raise
    except Exception as e:  # botocore/aiohttp raise many types; all mean "cannot list"
        raise storage.StorageError(storage.describe_error(uri, e)) from e
    kinds = [fmt for fmt, ext in LABEL_EXTENSIONS.items() if ext in found]
    if len(kinds) != 1:
        what = "both .xml and .txt files" if kinds else "no .xml or .txt files"
        raise InputError(f"{uri}: holds {what}, so its label format is not clear; give --annotations-format coco|voc|yolo")
    return kinds[0]


def load_annotations(
    uri: str,
    format: str = "auto",
    images: str | None = None,
    names: str | None = None,
    negatives: bool = True,
    check: bool = False,
) -> Labels:
    """Read the labels at ``uri`` into a COCO dict.

    Args:
        uri: a COCO JSON, or a folder (listed recursively) of VOC ``.xml`` or YOLO ``.txt`` files.
        format: ``coco``, ``voc``, ``yolo`` or ``auto`` (:func:`detect_format`).
        images: the images folder the labels belong to; default :func:`default_images`. YOLO needs it
            (sizes come from image headers); VOC without it takes ``<filename>`` and ``<size>`` as given.
        names: the names list (``data.yaml``, ``classes.txt``, ...); default :func:`find_names`. YOLO needs
            it; VOC without it numbers the names found in sorted order.
        negatives: keep images without a label file as negatives (VOC, YOLO); False leaves them out.
        check: for a COCO JSON, read every image's header and check sizes and boxes as VOC and YOLO labels
            always are (``convert`` does); otherwise a COCO JSON is passed through unchanged.
    """
    if format == "auto":
        format = detect_format(uri)
    if format not in FORMATS:
        raise InputError(f"unknown annotations format {format!r}; choose one of: auto, {', '.join(FORMATS)}")
    if format == "coco":
        coco = load_coco(uri)
        if not check:
            return Labels(coco, "coco", [])
        return _checked_coco(coco, images or default_images(uri), uri)
    images = images or default_images(uri)
    if images is None and format == "yolo":
        raise InputError(
            f"{uri}: YOLO boxes are relative to the image sizes, and no images folder was found beside the labels "
            f"(looked for {' or '.join(_IMAGE_FOLDERS)}); give the images folder (--images / --train-images)"
        )
    names = names or find_names(uri)
    if names is None and format == "yolo":
        raise InputError(
            f"{uri}: no names list for the YOLO class indices (looked for {', '.join(NAMES_FILES)} in the folder "
            f"and its parent); give --names data.yaml or a file with one class name a line"
        )
    categories = read_categories(names) if names else None
    if names:
        logger.info("category names from %s", names)
    return _read_label_folder(uri, format, images, categories, negatives)


def default_images(uri: str) -> str | None:
    """The images folder beside a label file or folder: ``images/`` or ``JPEGImages/`` in its folder or
    the one above (``OUT/annotations.json`` + ``OUT/images``; ``DATA/labels`` + ``DATA/images``; VOC's
    ``Annotations`` + ``JPEGImages``), or None."""
    fs, path = storage.resolve(uri)
    folder = path.rstrip("/") if fs.isdir(path) else posixpath.dirname(path.rstrip("/"))
    for base in (folder, posixpath.dirname(folder)):
        for name in _IMAGE_FOLDERS:
            candidate = posixpath.join(base, name)
            if fs.isdir(candidate):
                logger.info("images of %s: %s", uri, storage.to_uri(fs, candidate))
                return storage.to_uri(fs, candidate)
    return None


def find_names(uri: str) -> str | None:
    """The names list of a label folder: the first of :data:`NAMES_FILES` (in that order) found in the
    folder or the folder above it, or None."""
    fs, path = storage.resolve(uri)
    folder = path.rstrip("/")
    for name in NAMES_FILES:
        for base in (folder, posixpath.dirname(folder)):
            if fs.isfile(posixpath.join(base, name)):
                return storage.to_uri(fs, posixpath.join(base, name))
    return None


def image_size(uri: str) -> tuple[int, int]:
    """``(width, height)`` from the image's header: Pillow reads only the first few KB, not the pixels."""
    from PIL import Image

    with storage.open_input(uri) as raw, io.BufferedReader(raw, 64 * 1024) as f, Image.open(f) as image:
        return image.size


def check_boxes(annotations: list[dict[str, Any]], width: int, height: int, file: str) -> tuple[list[dict[str, Any]], list[LabelProblem]]:
    """The annotations of one ``width`` x ``height`` image whose boxes are usable, and a problem for each
    other: ``empty_box`` (w or h <= 0), ``box_outside_image`` (past an edge by more than
    :data:`OUTSIDE_TOLERANCE_PX`; within it, clipped to the edge)."""
    kept, problems = [], []
    for ann in annotations:
        x, y, w, h = (float(v) for v in ann["bbox"])
        if not w > 0 or not h > 0:
            problems.append(LabelProblem(file, "empty_box", f"box {_box(ann)} has zero or negative size"))
            continue
        t = OUTSIDE_TOLERANCE_PX
        if x < -t or y < -t or x + w > width + t or y + h > height + t:
            problems.append(LabelProblem(file, "box_outside_image", f"box {_box(ann)} reaches outside the {width}x{height} image"))
            continue
        if x < 0 or y < 0 or x + w > width or y + h > height:
            x0, y0 = max(x, 0.0), max(y, 0.0)
            x1, y1 = min(x + w, float(width)), min(y + h, float(height))
            ann = ann | {"bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0)}
        kept.append(ann)
    return kept, problems


# ---------------------------------------------------------------------------------------------
# VOC and YOLO folders
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Image:
    """One image read from its label file: ``objects`` are ``(class: name or index, bbox, extras)``."""

    file_name: str
    width: int
    height: int
    objects: list[tuple[str | int, tuple[float, float, float, float], dict[str, int]]]
    source: str  # the label file's URI (the image's, for a negative)


def _read_label_folder(uri: str, format: str, images: str | None, categories: Categories | None, negatives: bool) -> Labels:
    fs, root = storage.resolve(uri)
    ext = LABEL_EXTENSIONS[format]
    try:
        fs.invalidate_cache(root)
        label_files = sorted(
            p[len(root.rstrip("/")) :].lstrip("/") for p in fs.find(root)
            if _extension(p) == ext and posixpath.basename(p) not in NAMES_FILES
        )  # fmt: skip
    except Exception as e:
        raise storage.StorageError(storage.describe_error(uri, e)) from e
    if not label_files:
        raise InputError(f"{uri}: no .{ext} label files under it (looked recursively); check the URI and --annotations-format")

    problems: list[LabelProblem] = []
    by_stem: dict[str, list[str]] = {}
    if images is not None:
        for name in list_image_files(images):
            by_stem.setdefault(posixpath.splitext(name)[0], []).append(name)
    matched: set[str] = set()
    tasks = []
    for label in label_files:
        label_uri = storage.join(uri, label)
        if images is None:
            tasks.append((label, label_uri, None))
            continue
        candidates = by_stem.get(posixpath.splitext(label)[0], [])
        matched.update(candidates)  # an ambiguous label file's images are not negatives either
        if len(candidates) != 1:
            kind, why = ("label_without_image", f"no image named {posixpath.splitext(label)[0]}.* under {images}") if not candidates else (
                "ambiguous_image", f"several images share its name: {', '.join(candidates)}; rename all but one")
            problems.append(LabelProblem(label_uri, kind, why))
            continue
        tasks.append((label, label_uri, candidates[0]))

    read = _read_voc if format == "voc" else _read_yolo
    parsed: list[_Image] = []
    for image, found in in_threads(lambda task: read(*task, images), tasks):
        problems.extend(found)
        if image is not None:
            parsed.append(image)
    unlabelled = sorted(name for names in by_stem.values() for name in names if name not in matched)
    for name, (size, found) in zip(unlabelled, in_threads(lambda n: _header_size(storage.join(images, n)), unlabelled)):
        problems.append(LabelProblem(storage.join(images, name), "image_without_labels",
                                     "no label file; kept as a negative" if negatives else "no label file; left out"))  # fmt: skip
        if negatives:
            problems.extend(found)
            if size is not None:
                parsed.append(_Image(name, size[0], size[1], [], storage.join(images, name)))
    return _assemble(parsed, categories, problems, format, uri)


def _read_voc(label: str, label_uri: str, image_name: str | None, images: str | None) -> tuple[_Image | None, list[LabelProblem]]:
    try:
        voc = parse_voc(storage.read_bytes(label_uri))
    except LabelParseError as e:
        return None, [LabelProblem(label_uri, "unparsable", str(e))]
    problems = []
    if image_name is None:  # no images folder: the XML's own <filename> and <size>
        if voc.filename is None or voc.width is None or voc.height is None:
            return None, [LabelProblem(label_uri, "label_without_image", "no <filename> or <size>, and no images folder to find them")]
        # in the label file's folder: Annotations/a/x.xml names the image a/<filename>
        image_name = posixpath.join(posixpath.dirname(label), posixpath.basename(voc.filename))
        width, height = voc.width, voc.height
    else:
        assert images is not None
        size, problems = _header_size(storage.join(images, image_name))
        if size is None:
            return None, problems
        width, height = size
        if voc.width is not None and voc.height is not None and (voc.width, voc.height) != size:
            problems.append(LabelProblem(label_uri, "size_mismatch", f"<size> says {voc.width}x{voc.height}, the image is {width}x{height}; using the image's"))
    objects = [(o.name, o.bbox, {"difficult": int(o.difficult), "truncated": int(o.truncated)}) for o in voc.objects]
    return _Image(image_name, width, height, objects, label_uri), problems


def _read_yolo(label: str, label_uri: str, image_name: str | None, images: str | None) -> tuple[_Image | None, list[LabelProblem]]:
    assert image_name is not None and images is not None
    try:
        boxes = parse_yolo(storage.read_bytes(label_uri).decode("utf-8"))
    except (LabelParseError, UnicodeDecodeError) as e:
        return None, [LabelProblem(label_uri, "unparsable", str(e))]
    size, problems = _header_size(storage.join(images, image_name))
    if size is None:
        return None, problems
    objects = [(b.class_index, yolo_to_coco_box(b.box, *size), {}) for b in boxes]
    return _Image(image_name, size[0], size[1], objects, label_uri), problems


def _header_size(uri: str, missing: str = "unreadable_image") -> tuple[tuple[int, int] | None, list[LabelProblem]]:
    """The image's size, or None and a problem (``missing``: the kind for an image that is not there)."""
    try:
        return image_size(uri), []
    except storage.StorageError:  # storage that kept failing is not a fact about this image
        raise
    except FileNotFoundError:
        return None, [LabelProblem(uri, missing, "the image is not there")]
    except Exception as e:  # Pillow raises OSError, ValueError, SyntaxError and others for broken headers
        return None, [LabelProblem(uri, "unreadable_image", f"cannot read the image header: {type(e).__name__}: {e}")]


def _assemble(parsed: list[_Image], categories: Categories | None, problems: list[LabelProblem], format: str, uri: str) -> Labels:
    """The COCO dict of ``parsed`` images: ids 1..N in ``file_name`` order, annotation ids 1..M in that order."""
    if categories is None:  # VOC without a names list: the names found, in sorted order
        found = sorted({cls for im in parsed for cls, _, _ in im.objects if isinstance(cls, str)})
        categories = Categories(list(range(1, len(found) + 1)), found)
    by_name = dict(zip(categories.names, categories.ids))
    coco_images, annotations = [], []
    seen: dict[str, int] = {}
    for im in sorted(parsed, key=lambda im: im.file_name):
        if im.file_name in seen:  # VOC without images: two files naming one <filename>
            problems.append(LabelProblem(im.source, "ambiguous_image", "two label files name this image; the first is kept"))
            continue
        image_id = seen[im.file_name] = len(coco_images) + 1
        coco_images.append({"id": image_id, "file_name": im.file_name, "width": im.width, "height": im.height})
        anns = []
        for cls, (x, y, w, h), extras in im.objects:
            if isinstance(cls, str):
                category_id = by_name.get(cls)
            else:
                category_id = categories.ids[cls] if 0 <= cls < len(categories.ids) else None
            if category_id is None:
                problems.append(LabelProblem(im.source, "unknown_class", f"class {cls!r} is not in the names list ({len(categories.names)} names)"))
                continue
            crowd = extras.get("difficult", 0)  # VOC ignores difficult objects; COCO ignores crowds
            anns.append({"image_id": image_id, "category_id": category_id, "bbox": [x, y, w, h], "area": w * h, "iscrowd": crowd, **extras})
        kept, found = check_boxes(anns, im.width, im.height, im.source)
        problems.extend(found)
        for ann in kept:
            annotations.append({"id": len(annotations) + 1, **ann})
    labels = Labels({"images": coco_images, "annotations": annotations, "categories": categories.coco()}, format, problems)
    _log(labels, uri)
    return labels


# ---------------------------------------------------------------------------------------------
# COCO, checked
# ---------------------------------------------------------------------------------------------


def _checked_coco(coco: dict[str, Any], images: str | None, uri: str) -> Labels:
    """``coco`` with every image's header read: missing or unreadable images left out, sizes from the
    headers, unusable boxes dropped (each a :class:`LabelProblem`)."""
    if images is None:
        raise InputError(f"{uri}: checking sizes needs the images; give the images folder (--images)")
    problems: list[LabelProblem] = []
    known = {int(c["id"]) for c in coco.get("categories", [])}
    by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in coco.get("annotations", []):
        by_image.setdefault(int(ann["image_id"]), []).append(ann)
    entries = list(coco["images"])
    kept_images, annotations = [], []
    sizes = in_threads(lambda e: _header_size(storage.join(images, str(e["file_name"])), "label_without_image"), entries)
    for entry, (size, found) in zip(entries, sizes):
        problems.extend(found)
        if size is None:
            continue
        where = storage.join(images, str(entry["file_name"]))
        if (entry.get("width"), entry.get("height")) != size:
            problems.append(LabelProblem(where, "size_mismatch", f"the JSON says {entry.get('width')}x{entry.get('height')}, the image is {size[0]}x{size[1]}; using the image's"))
            entry = entry | {"width": size[0], "height": size[1]}
        kept_images.append(entry)
        anns = []
        for ann in by_image.get(int(entry["id"]), []):
            if int(ann["category_id"]) in known:
                anns.append(ann)
            else:
                problems.append(LabelProblem(where, "unknown_class", f"category_id {ann['category_id']} is not in the categories"))
        kept, found = check_boxes(anns, *size, where)
        problems.extend(found)
        annotations.extend(kept)
    labels = Labels(coco | {"images": kept_images, "annotations": annotations}, "coco", problems)
    _log(labels, uri)
    return labels


# ---------------------------------------------------------------------------------------------


def in_threads(fn: Callable[[Any], T], items: Iterable[Any]) -> Iterator[T]:
    """``fn(item)`` for each item, in order, :data:`_READ_THREADS` at a time, :data:`_READ_WINDOW` held."""
    items = list(items)
    with ThreadPoolExecutor(max_workers=_READ_THREADS) as pool:
        for start in range(0, len(items), _READ_WINDOW):
            yield from pool.map(fn, items[start : start + _READ_WINDOW])


def _extension(path: str) -> str:
    return posixpath.splitext(path)[1][1:].lower()


def _box(ann: dict[str, Any]) -> str:
    return "[" + ", ".join(f"{float(v):g}" for v in ann["bbox"]) + "]"


def _log(labels: Labels, uri: str) -> None:
    if labels.problems:
        examples = "; ".join(f"{p.file}: {p.message}" for p in labels.problems[:3])
        logger.warning("%s: %s (e.g. %s)", uri, labels.summary(), examples)
    else:
        logger.info("%s: %s", uri, labels.summary())
