"""A labelled synthetic detection dataset: coloured shapes on textured backgrounds, in COCO format.

Three classes (square, circle, triangle), flat-filled in colours chosen to stand out from the
background they sit on, placed so that no two shapes share a pixel. Each box is the tight box of the
shape's drawn pixels, so the labels are exact. The task is small enough that a tiny detector learns
it on CPU in minutes, and varied enough (sizes 12-48 px at 128 px, rotated triangles, textured
backgrounds, up to several objects) that a detector that has not learnt it scores badly.

Layout written under ``OUT`` (see ``docs/data.md``)::

    OUT/images/000001.png ... OUT/images/{N:06d}.png   RGB PNG, image_size x image_size; the name is
                                                       the COCO image id
    OUT/annotations.json                               COCO instances JSON, written last

Image ``id`` depends only on ``(seed, id, image_size, max_objects)``, not on ``num_images``: the first
100 images of a 1,000-image dataset are the 100 images of a 100-image one with the same seed.
"""

from __future__ import annotations

import io
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from detbatch import storage
from detbatch.config import ConfigError

logger = logging.getLogger(__name__)

CATEGORIES = [
    {"id": 1, "name": "square", "supercategory": "shape"},
    {"id": 2, "name": "circle", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
]
SQUARE, CIRCLE, TRIANGLE = 1, 2, 3

# Shape extent (side, diameter, circumscribed-circle diameter) in pixels at 128 px; scaled with
# image_size so that the task looks the same at every resolution.
_MIN_SIZE_128, _MAX_SIZE_128 = 12, 48
# Two shapes whose boxes overlap more than this are re-placed: enough overlap to teach NMS that
# neighbours exist, not so much that boxes become ambiguous.
_MAX_BOX_IOU = 0.1
# Tries to place one more shape before the image keeps the shapes it has.
_PLACEMENT_TRIES = 50
# A shape colour must be at least this far (Euclidean, RGB 0-255) from every background pixel
# around it and from every other shape's colour, so that the shape is visible and its pixels can
# be told apart by colour alone (the tests rely on that). Best of the tries if none reaches it.
_MIN_COLOR_DISTANCE = 60.0
_COLOR_TRIES = 20
# Images written concurrently: writes to object stores are latency-bound.
_WRITE_THREADS = 16
# Images rendered ahead of the writers; bounds memory whatever num_images is.
_WRITE_CHUNK = 64


@dataclass(frozen=True)
class SynthResult:
    out: str
    images_uri: str
    annotations_uri: str
    num_images: int
    num_annotations: int


@dataclass(frozen=True)
class SynthImage:
    """One rendered image and its exact labels.

    ``pixels``: uint8 [H, W, 3] RGB. ``boxes``: float32 [N, 4] COCO xywh in pixels, tight around the
    shape's pixels (a shape covering columns x0..x1 has x = x0, w = x1 - x0 + 1). ``labels``: int64
    [N] category ids (1 square, 2 circle, 3 triangle). ``areas``: int64 [N] pixel counts.
    ``masks``: bool [N, H, W]. ``colors``: uint8 [N, 3], the fill colour of each shape.
    """

    pixels: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    areas: np.ndarray
    masks: np.ndarray
    colors: np.ndarray


def synthesize(
    out: str,
    num_images: int,
    seed: int = 0,
    image_size: int = 128,
    max_objects: int = 4,
    format: str = "coco",
) -> SynthResult:
    """Write ``num_images`` labelled images and their annotations under ``out``.

    ``out`` is a local path or URI (``s3://bucket/prefix``). Same arguments, byte-identical files.
    Existing files of the same names are overwritten; the labels are written last, so their presence
    means the images they list are all there. ``format``: ``coco`` (``OUT/annotations.json``), ``voc``
    (``OUT/Annotations/*.xml``) or ``yolo`` (``OUT/labels/*.txt``), the last two with ``OUT/data.yaml``
    (:func:`detbatch.datasets.convert.write_labels`).
    """
    _check_args(num_images=num_images, seed=seed, image_size=image_size, max_objects=max_objects)
    if format not in ("coco", "voc", "yolo"):
        raise ConfigError(f"unknown labels format {format!r}; choose one of: coco, voc, yolo")
    images_uri = storage.join(out, "images")

    coco_images: list[dict] = []
    coco_annotations: list[dict] = []
    with ThreadPoolExecutor(max_workers=_WRITE_THREADS) as pool:
        for start in range(0, num_images, _WRITE_CHUNK):
            writes = []
            for image_id in range(start + 1, min(start + _WRITE_CHUNK, num_images) + 1):
                image = render_image(seed, image_id, image_size=image_size, max_objects=max_objects)
                file_name = f"{image_id:06d}.png"
                # Encoding in the pool too: zlib releases the GIL, so PNGs encode on every core.
                writes.append(pool.submit(_write_png, storage.join(images_uri, file_name), image.pixels))
                coco_images.append({"id": image_id, "file_name": file_name, "width": image_size, "height": image_size})
                for box, label, area in zip(image.boxes, image.labels, image.areas):
                    coco_annotations.append(
                        {
                            "id": len(coco_annotations) + 1,
                            "image_id": image_id,
                            "category_id": int(label),
                            "bbox": [float(v) for v in box],
                            "area": float(area),
                            "iscrowd": 0,
                        }
                    )
            for write in writes:
                write.result()  # re-raises the first failed write

    coco = {
        "info": {
            "description": "detbatch synthetic shapes",
            "version": "1",
            "seed": seed,
            "image_size": image_size,
            "max_objects": max_objects,
        },
        "licenses": [],
        "images": coco_images,
        "annotations": coco_annotations,
        "categories": CATEGORIES,
    }
    from detbatch.datasets.convert import write_labels  # inside: convert reads labels with prepare's helpers

    annotations_uri = write_labels(coco, out, format)
    logger.info("wrote %d images, %d objects to %s", num_images, len(coco_annotations), out)
    return SynthResult(
        out=out,
        images_uri=images_uri,
        annotations_uri=annotations_uri,
        num_images=num_images,
        num_annotations=len(coco_annotations),
    )


def render_image(seed: int, image_id: int, image_size: int = 128, max_objects: int = 4) -> SynthImage:
    """Image ``image_id`` (1-based) of the dataset with ``seed``: pixels and exact labels, nothing written."""
    rng = np.random.default_rng([seed, image_id])
    pixels = _background(rng, image_size)
    occupied = np.zeros((image_size, image_size), dtype=bool)
    boxes: list[tuple[int, int, int, int]] = []
    labels: list[int] = []
    masks: list[np.ndarray] = []
    colors: list[np.ndarray] = []

    wanted = int(rng.integers(1, max_objects + 1))
    for _ in range(wanted):
        placed = _place_shape(rng, image_size, occupied, boxes)
        if placed is None:
            break
        label, mask, box = placed
        color = _contrasting_color(rng, pixels, box, colors)
        pixels[mask] = color
        occupied |= mask
        boxes.append(box)
        labels.append(label)
        masks.append(mask)
        colors.append(color)

    return SynthImage(
        pixels=pixels,
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64),
        areas=np.asarray([int(m.sum()) for m in masks], dtype=np.int64),
        masks=np.asarray(masks, dtype=bool).reshape(-1, image_size, image_size),
        colors=np.asarray(colors, dtype=np.uint8).reshape(-1, 3),
    )


def _check_args(*, num_images: int, seed: int, image_size: int, max_objects: int) -> None:
    if not isinstance(num_images, int) or num_images < 1:
        raise ConfigError(f"num_images={num_images!r}: must be an integer >= 1")
    if not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed={seed!r}: must be an integer >= 0")
    if not isinstance(image_size, int) or image_size < 32:
        raise ConfigError(f"image_size={image_size!r}: must be an integer >= 32 (shapes are 12-48 px at 128 px)")
    if not isinstance(max_objects, int) or max_objects < 1:
        raise ConfigError(f"max_objects={max_objects!r}: must be an integer >= 1")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """uint8 [size, size, 3]: a colour gradient, smooth blotches and pixel noise."""
    from PIL import Image

    c0, c1 = rng.uniform(30, 225, size=(2, 3)).astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    coords = np.arange(size, dtype=np.float32) / (size - 1)
    t = np.float32(math.cos(angle)) * coords[None, :] + np.float32(math.sin(angle)) * coords[:, None]
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    image = c0 + t[..., None] * (c1 - c0)

    # Blotches the size of a shape or bigger, so that a detector cannot find shapes as "the only
    # low-frequency structure in the image".
    grid = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    blotches = np.asarray(Image.fromarray(grid).resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
    image = (np.float32(0.6) * image + np.float32(0.4) * blotches).astype(np.int16)
    # Uniform integer noise (sd ~7): as good a texture as Gaussian noise, at a fraction of the cost.
    image += rng.integers(-12, 13, size=image.shape, dtype=np.int16)
    return np.clip(image, 0, 255).astype(np.uint8)


def _place_shape(
    rng: np.random.Generator,
    image_size: int,
    occupied: np.ndarray,
    boxes: list[tuple[int, int, int, int]],
) -> tuple[int, np.ndarray, tuple[int, int, int, int]] | None:
    """A random shape that fits: ``(category_id, mask bool [H, W], tight box xywh)``, or None."""
    from PIL import Image, ImageDraw

    scale = image_size / 128
    lo, hi = round(_MIN_SIZE_128 * scale), round(_MAX_SIZE_128 * scale)
    for _ in range(_PLACEMENT_TRIES):
        label = int(rng.integers(1, len(CATEGORIES) + 1))
        extent = int(rng.integers(lo, hi + 1))
        x, y = (int(v) for v in rng.integers(0, image_size - extent + 1, size=2))
        canvas = Image.new("L", (image_size, image_size), 0)
        draw = ImageDraw.Draw(canvas)
        if label == SQUARE:
            draw.rectangle([x, y, x + extent - 1, y + extent - 1], fill=255)
        elif label == CIRCLE:
            draw.ellipse([x, y, x + extent - 1, y + extent - 1], fill=255)
        else:
            # An equilateral triangle in the extent's inscribed circle, at any rotation.
            r = (extent - 1) / 2
            cx, cy = x + r, y + r
            phase = rng.uniform(0, 2 * math.pi)
            vertices = [(cx + r * math.cos(phase + k * 2 * math.pi / 3), cy + r * math.sin(phase + k * 2 * math.pi / 3)) for k in range(3)]
            draw.polygon(vertices, fill=255)
        mask = np.asarray(canvas) > 0
        if not mask.any() or (mask & occupied).any():
            continue
        box = _tight_box(mask)
        if any(_iou_xywh(box, other) > _MAX_BOX_IOU for other in boxes):
            continue
        return label, mask, box
    return None


def _tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """COCO xywh of the True pixels of ``mask`` bool [H, W]: pixel (r, c) covers [c, c+1) x [r, r+1)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)


def _iou_xywh(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _contrasting_color(
    rng: np.random.Generator,
    pixels: np.ndarray,
    box: tuple[int, int, int, int],
    other_colors: list[np.ndarray],
) -> np.ndarray:
    """uint8 [3]: a colour far from the background in and around ``box`` and from ``other_colors``."""
    x, y, w, h = box
    region = pixels[max(y - 1, 0) : y + h + 1, max(x - 1, 0) : x + w + 1].reshape(-1, 3).astype(np.float32)
    references = np.concatenate([region, np.asarray(other_colors, dtype=np.float32).reshape(-1, 3)])
    best, best_distance = None, -1.0
    for _ in range(_COLOR_TRIES):
        color = rng.integers(0, 256, size=3).astype(np.float32)
        distance = float(np.sqrt(((references - color) ** 2).sum(axis=1)).min())
        if distance >= _MIN_COLOR_DISTANCE:
            return color.astype(np.uint8)
        if distance > best_distance:
            best, best_distance = color, distance
    return best.astype(np.uint8)


def _write_png(uri: str, pixels: np.ndarray) -> None:
    storage.write_bytes(uri, _png(pixels))


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    # Pixel noise leaves little for zlib to find; its fastest level is within a few % of its best.
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
