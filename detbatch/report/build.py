"""``detbatch report``: read what the page shows, make the thumbnails, write ``OUT/index.html``."""

from __future__ import annotations

import io
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from detbatch import storage
from detbatch.errors import InputError
from detbatch.metrics.pairing import shard_member
from detbatch.report.data import choose_sample, open_parts, read_errors, read_images_of, scan_summary
from detbatch.report.html import Page, link_of, render_page
from detbatch.report.truth import Truth, load_truth, match_detections

logger = logging.getLogger(__name__)

# Gallery images by default: a few screens of thumbnails, a page of a few MB.
DEFAULT_SAMPLES = 300
# Thumbnails' longest side, pixels: sharp in a 220 px grid cell on a 2x display.
THUMB_SIZE = 320
# Thumbnails are read and encoded in threads: mostly waiting on storage.
THUMB_THREADS = 8
THUMBS = "thumbs"
# Files of an evaluation folder shown as they are, when present (the evaluate issue's diagnostics).
DIAGNOSTICS = ("report.md", "thresholds.json", "diagnostics.json", "confusion.json", "error_types.json", "slices.json")
# Pictures of an evaluation folder, copied beside the page: PR curves, and issue 15's diagnostics.
PICTURES = ("pr_curves.png", "thresholds.png", "confusion.png", "errors.png")  # as `detbatch evaluate` writes them


@dataclass(frozen=True)
class ReportResult:
    index: str
    images_shown: int
    thumbnails: int
    seconds: float


def write_report(
    detections: str,
    out: str,
    ground_truth: str | None = None,
    evaluation: str | None = None,
    samples: int = DEFAULT_SAMPLES,
    annotations_format: str = "auto",
    images: str | None = None,
    names: str | None = None,
) -> ReportResult:
    """Write the report of the detect output ``detections`` to ``out`` (``index.html``, ``thumbs/``,
    the evaluation's pictures with ``evaluation``). ``ground_truth``: labels (:func:`detbatch.datasets.labels.load_annotations`)
    for TP / FP / FN and the worst images, read as ``annotations_format`` (VOC and YOLO: with their
    ``images`` folder and class ``names`` list, default found beside the labels); ``evaluation``: a
    ``detbatch evaluate --out`` folder."""
    if samples < 1:
        raise InputError(f"samples={samples}: the gallery needs at least 1 image (--samples, default {DEFAULT_SAMPLES})")
    started = time.perf_counter()
    run = open_parts(detections)
    summary, per_category, any_image = scan_summary(run, per_category=samples, overall=samples)
    chosen = choose_sample(per_category, any_image, samples)
    sampled = set(chosen)
    truth = None
    if ground_truth:
        from detbatch.datasets.labels import load_annotations

        labels = load_annotations(ground_truth, annotations_format, images=images, names=names)
        truth = load_truth(run, labels.coco)
        for r, _ in truth.worst_missed + truth.worst_false:
            chosen.setdefault(r, truth.parts[r])
    images, dets = read_images_of(run, chosen)
    categories = list(summary.categories)
    if truth:
        categories += sorted(set(truth.names.values()) - set(categories))
    entries = _entries(run.info, images, dets, truth, categories, sampled)
    thumbs = _write_thumbnails(out, entries, (run.info or {}).get("input", {}).get("kind"))
    metrics, pictures, diagnostics = _evaluation(evaluation, out)
    worst = []
    if truth:
        worst = [("Most missed objects", [r for r, _ in truth.worst_missed]),
                 ("Highest-scoring false positives", [r for r, _ in truth.worst_false])]
    errors = read_errors(run)
    page = Page(
        title=f"detbatch report: {detections}", summary=summary, info=run.info, categories=categories,
        images=entries, worst=worst, errors=list(zip(errors["uri"].to_pylist(), errors["error"].to_pylist())),
        has_truth=truth is not None, metrics=metrics, pictures=pictures, diagnostics=diagnostics,
    )
    index = storage.join(out, "index.html")
    storage.write_text(index, render_page(page))
    return ReportResult(index, len(entries), thumbs, time.perf_counter() - started)


def _entries(info: dict[str, Any] | None, images: Any, dets: Any, truth: Truth | None, categories: list[str],
             sampled: set[int]) -> list[dict[str, Any]]:
    """The page's data for each shown image: its boxes as ``[x0, y0, x1, y1, score, category, tp]`` (tp: 1, 0,
    or -1 without ground truth) and its ground truth as ``[x0, y0, x1, y1, category, score that took it or -1]``."""
    index_of = {c: i for i, c in enumerate(categories)}
    boxes = {r: truth.boxes[r] for r in images["image_id"].to_pylist() if r in truth.boxes} if truth else {}
    matched = match_detections(dets, boxes) if truth else None
    table = matched.table if matched else dets
    tp = matched.tp.astype(np.int64) if matched else np.full(len(table), -1)
    rows: dict[int, list[list[Any]]] = {}
    for r, c, s, x0, y0, x1, y1, t in zip(*(table[k].to_pylist() for k in ("image_id", "category", "score", "x_min",
                                                                          "y_min", "x_max", "y_max")), tp.tolist()):
        rows.setdefault(r, []).append([round(x0, 1), round(y0, 1), round(x1, 1), round(y1, 1), round(s, 4),
                                       index_of[c], t])
    entries = []
    for r, uri, w, h in zip(*(images[k].to_pylist() for k in ("image_id", "uri", "width", "height"))):
        entry = {"id": r, "uri": uri, "href": link_of(uri), "w": w, "h": h, "dets": rows.get(r, []),
                 "sampled": r in sampled}
        if truth and r in boxes:
            gt_boxes, gt_category = boxes[r]
            taken = matched.missed[r]
            entry["gt"] = [[*np.round(b, 1).tolist(), index_of[truth.names[int(c)]],
                            -1 if np.isnan(s) else round(float(s), 4)] for b, c, s in zip(gt_boxes, gt_category, taken)]
        entries.append(entry)
    entries.sort(key=lambda e: (not e["sampled"], e["uri"]))
    return entries


def _thumbnail(uri: str) -> bytes:
    from PIL import Image

    with Image.open(io.BytesIO(storage.read_bytes(uri))) as im:
        im = im.convert("RGB")
        im.thumbnail((THUMB_SIZE, THUMB_SIZE))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=80)
        return buf.getvalue()


def _write_thumbnails(out: str, entries: list[dict[str, Any]], kind: str | None) -> int:
    """Write ``out/thumbs/ID.jpg`` for each entry that can be read as a file; set ``entry["thumb"]``. A shard
    member, or an image that cannot be read now, gets no thumbnail: its boxes are drawn on grey."""

    def one(entry: dict[str, Any]) -> None:
        if shard_member(entry["uri"], kind) is not None:
            return
        try:
            data = _thumbnail(entry["uri"])
        except Exception as e:  # a vanished or unreadable image is shown without pixels, not a failed report
            logger.debug("%s: no thumbnail: %s", entry["uri"], e)
            failed.append(f"{entry['uri']}: {e}")
            return
        name = f"{THUMBS}/{entry['id']}.jpg"
        storage.write_bytes(storage.join(out, *name.split("/")), data)
        entry["thumb"] = name

    failed: list[str] = []
    with ThreadPoolExecutor(THUMB_THREADS) as pool:
        list(pool.map(one, entries))
    if failed:
        logger.warning("%d gallery images could not be read for a thumbnail (their boxes are drawn on grey); "
                       "the first: %s", len(failed), failed[0])
    return sum(1 for e in entries if e.get("thumb"))


def _evaluation(evaluation: str | None, out: str) -> tuple[dict[str, Any] | None, list[str], dict[str, str]]:
    """metrics.json, the :data:`PICTURES` found (copied beside the page) and the diagnostics in ``evaluation``."""
    if not evaluation:
        return None, [], {}
    names = set(storage.list_names(evaluation))
    metrics = json.loads(storage.read_text(storage.join(evaluation, "metrics.json"))) if "metrics.json" in names else None
    pictures = [n for n in PICTURES if n in names]
    for n in pictures:
        storage.write_bytes(storage.join(out, n), storage.read_bytes(storage.join(evaluation, n)))
    diagnostics = {n: storage.read_text(storage.join(evaluation, n)) for n in DIAGNOSTICS if n in names}
    return metrics, pictures, diagnostics
