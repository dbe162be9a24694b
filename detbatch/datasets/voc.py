"""Pascal VOC XML: one file per image, boxes in VOC's 1-based inclusive pixel indices.

VOC numbers pixel columns from 1 and a box's ``xmax`` is the last column it covers; COCO numbers them
from 0 and a box ends where its last column ends (column ``c`` covers ``[c, c + 1)``). So, exactly as
Detectron2's VOC loader does::

    COCO x = xmin - 1     y = ymin - 1     w = xmax - xmin + 1     h = ymax - ymin + 1
    VOC  xmin = x + 1     ymin = y + 1     xmax = x + w            ymax = y + h

The sums are done in decimal on the numbers' shortest text (``repr``), so COCO -> VOC -> COCO gives back
the same float64 bbox, bit for bit (``120.31`` is written ``121.31`` and read back as ``120.31``).
"""

from __future__ import annotations

import posixpath
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation, localcontext
from typing import Any

# Decimal digits for the box sums: far beyond float64's 17, so no sum of two float64 reprs rounds.
_DECIMAL_DIGITS = 80


class LabelParseError(ValueError):
    """A label file that cannot be read; the message says what is wrong in it."""


@dataclass(frozen=True)
class VocObject:
    """One ``<object>``: ``bbox`` COCO xywh in pixels (float64), already converted from VOC's indices."""

    name: str
    bbox: tuple[float, float, float, float]
    difficult: bool
    truncated: bool


@dataclass(frozen=True)
class VocAnnotation:
    """A parsed VOC file. ``width``/``height``: from ``<size>``, None when absent or 0 (some tools write 0)."""

    filename: str | None
    width: int | None
    height: int | None
    objects: list[VocObject]


def parse_voc(data: bytes) -> VocAnnotation:
    """Parse one VOC XML file (raises :class:`LabelParseError` naming what is wrong)."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        raise LabelParseError(f"not XML ({e})") from None
    if root.tag != "annotation":
        raise LabelParseError(f"root element is <{root.tag}>, not <annotation>")
    size = root.find("size")
    width = _size(size, "width")
    height = _size(size, "height")
    objects = []
    for i, obj in enumerate(root.findall("object")):
        name = (obj.findtext("name") or "").strip()
        box = obj.find("bndbox")
        if not name or box is None:
            raise LabelParseError(f"<object> {i + 1} has no <name> or no <bndbox>")
        corners = [_decimal(box.findtext(tag), f"<object> {i + 1} <{tag}>") for tag in ("xmin", "ymin", "xmax", "ymax")]
        objects.append(VocObject(name, voc_to_coco_box(*corners), _flag(obj, "difficult"), _flag(obj, "truncated")))
    filename = (root.findtext("filename") or "").strip() or None
    return VocAnnotation(filename, width, height, objects)


def voc_to_coco_box(xmin: Decimal, ymin: Decimal, xmax: Decimal, ymax: Decimal) -> tuple[float, float, float, float]:
    """VOC corners (1-based, inclusive) -> COCO ``[x, y, w, h]``, computed exactly in decimal."""
    with localcontext() as ctx:
        ctx.prec = _DECIMAL_DIGITS
        return float(xmin - 1), float(ymin - 1), float(xmax - xmin + 1), float(ymax - ymin + 1)


def coco_to_voc_box(bbox: list[float]) -> tuple[str, str, str, str]:
    """COCO ``[x, y, w, h]`` -> VOC ``xmin, ymin, xmax, ymax`` as text (integers without ``.0``)."""
    x, y, w, h = (Decimal(repr(float(v))) for v in bbox)
    with localcontext() as ctx:
        ctx.prec = _DECIMAL_DIGITS
        return tuple(_text(v) for v in (x + 1, y + 1, x + w, y + h))  # type: ignore[return-value]


def voc_xml(file_name: str, width: int, height: int, annotations: list[dict[str, Any]], names: dict[int, str]) -> bytes:
    """The VOC XML of one image: ``annotations`` are COCO dicts, ``names`` category id -> name.

    ``difficult`` is 1 for an annotation with a true ``difficult`` or ``iscrowd`` (VOC has no crowds; both
    are regions evaluation ignores); ``truncated`` is the annotation's ``truncated`` (default 0).
    """
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = posixpath.basename(file_name)
    ET.SubElement(ET.SubElement(root, "source"), "database").text = "detbatch"
    size = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(int(value))
    ET.SubElement(root, "segmented").text = "0"
    for ann in annotations:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = names[int(ann["category_id"])]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = str(int(bool(ann.get("truncated", 0))))
        ET.SubElement(obj, "difficult").text = str(int(bool(ann.get("difficult", 0)) or bool(ann.get("iscrowd", 0))))
        box = ET.SubElement(obj, "bndbox")
        for tag, text in zip(("xmin", "ymin", "xmax", "ymax"), coco_to_voc_box(ann["bbox"])):
            ET.SubElement(box, tag).text = text
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=False) + b"\n"


def _text(value: Decimal) -> str:
    """``48`` for 48.0, else the plain decimal (no exponent): what VOC tools' ``float()`` and ``int()`` read."""
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def _decimal(text: str | None, what: str) -> Decimal:
    try:
        value = Decimal((text or "").strip())
    except InvalidOperation:
        raise LabelParseError(f"{what} is {text!r}, not a number") from None
    if not value.is_finite():
        raise LabelParseError(f"{what} is {text!r}, not a finite number")
    return value


def _size(size: ET.Element | None, tag: str) -> int | None:
    text = size.findtext(tag) if size is not None else None
    if text is None or not text.strip():
        return None
    value = _decimal(text, f"<size> <{tag}>")
    if value != value.to_integral_value() or value < 0:
        raise LabelParseError(f"<size> <{tag}> is {text!r}, not a whole number of pixels")
    return int(value) or None


def _flag(obj: ET.Element, tag: str) -> bool:
    """``<difficult>1</difficult>``: absent or empty is 0; ``1``, ``1.0`` and ``true`` are true."""
    text = (obj.findtext(tag) or "0").strip().lower()
    if text in ("true", "false"):
        return text == "true"
    try:
        return float(text) != 0
    except ValueError:
        raise LabelParseError(f"<{tag}> is {text!r}, not 0 or 1") from None
