"""YOLO txt labels: one file per image, a line per box ``CLASS CX CY W H``, normalised to the image size.

``CLASS`` is a 0-based index into the names list (``data.yaml`` ``names``, or a names file with one name a
line); ``CX CY W H`` are the box centre and size divided by the image's width and height. So a pixel box
needs the image's size, which detbatch reads from the image header (:func:`detbatch.datasets.labels.image_size`).

Numbers are written as float64's shortest ``repr`` (17 significant digits at most), so a pixel box read
back differs from the one written only by float64 rounding in ``(cx - w / 2) * W`` (about 1e-13 px at
640 px), never by a text rounding such as ``%.6f`` (0.0003 px at 640 px).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import yaml

from detbatch import storage
from detbatch.datasets.voc import LabelParseError

# File names a names list goes by; ``classes.txt`` is also skipped when listing label files (LabelImg
# writes it among them).
NAMES_FILES = ("data.yaml", "data.yml", "classes.txt", "obj.names", "classes.names")


@dataclass(frozen=True)
class Categories:
    """The categories of a names list: YOLO class index ``k`` is COCO category ``ids[k]``, named ``names[k]``.

    ``ids`` default to ``k + 1``; a ``data.yaml`` written by detbatch carries ``category_ids`` when the
    COCO ids were not 1..K (COCO's own ids have gaps), so that they survive a round trip.
    """

    ids: list[int]
    names: list[str]

    def coco(self) -> list[dict[str, object]]:
        return [{"id": i, "name": n} for i, n in zip(self.ids, self.names)]


def read_categories(uri: str) -> Categories:
    """The names list at ``uri``: a YAML file (``names``: a list, or ``{index: name}``; ``category_ids``
    optional) or a text file with one name a line (blank lines skipped)."""
    from detbatch.errors import InputError

    text = storage.read_text(uri)
    if not uri.lower().endswith((".yaml", ".yml")):
        names = [line.strip() for line in text.splitlines() if line.strip()]
        return Categories(list(range(1, len(names) + 1)), names)
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise InputError(f"{uri}: not YAML ({e}); give a data.yaml with a names list") from None
    names = doc.get("names") if isinstance(doc, dict) else None
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise InputError(f"{uri}: names keys are {sorted(names)}; YOLO class indices run 0..{len(names) - 1}")
        names = [names[k] for k in range(len(names))]
    if not isinstance(names, list) or not names:
        raise InputError(f"{uri}: no names list; give data.yaml with 'names: [cat, dog, ...]'")
    ids = doc.get("category_ids", list(range(1, len(names) + 1)))
    if not (isinstance(ids, list) and len(ids) == len(names) and len(set(ids)) == len(ids) and all(type(i) is int for i in ids)):
        raise InputError(f"{uri}: category_ids must be {len(names)} distinct integers, one per name")
    return Categories(ids, [str(n) for n in names])


def categories_yaml(categories: Categories) -> str:
    """A ``data.yaml`` of ``categories``: Ultralytics' ``nc`` and ``names``, and ``category_ids`` when they
    are not 1..K."""
    doc: dict[str, object] = {"nc": len(categories.names), "names": list(categories.names)}
    if categories.ids != list(range(1, len(categories.ids) + 1)):
        doc["category_ids"] = list(categories.ids)
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


@dataclass(frozen=True)
class YoloBox:
    """One line: ``class_index`` as written (may be out of range), ``box`` normalised ``cx, cy, w, h``."""

    class_index: int
    box: tuple[float, float, float, float]


def parse_yolo(text: str) -> list[YoloBox]:
    """The boxes of one YOLO txt file (raises :class:`LabelParseError` for a line that is not 5 numbers).

    Polygon lines (segmentation labels, more than 5 numbers) are not read: they are a parse error.
    """
    boxes = []
    for n, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5:
            raise LabelParseError(f"line {n} has {len(fields)} fields, not 5 (class cx cy w h): {line.strip()[:80]!r}")
        try:
            values = [float(f) for f in fields]
        except ValueError:
            raise LabelParseError(f"line {n} holds a field that is not a number: {line.strip()[:80]!r}") from None
        if not all(math.isfinite(v) for v in values) or not values[0].is_integer():
            raise LabelParseError(f"line {n}: class must be an integer and every number finite: {line.strip()[:80]!r}")
        boxes.append(YoloBox(int(values[0]), (values[1], values[2], values[3], values[4])))
    return boxes


def yolo_to_coco_box(box: tuple[float, float, float, float], width: int, height: int) -> tuple[float, float, float, float]:
    """Normalised ``cx, cy, w, h`` -> COCO ``[x, y, w, h]`` in pixels of a ``width`` x ``height`` image."""
    cx, cy, w, h = box
    return (cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height


def yolo_line(class_index: int, bbox: list[float], width: int, height: int) -> str:
    """The line of a COCO ``[x, y, w, h]`` box of category ``class_index``."""
    x, y, w, h = (float(v) for v in bbox)
    values = ((x + w / 2) / width, (y + h / 2) / height, w / width, h / height)
    return " ".join([str(class_index), *(repr(v) for v in values)])
