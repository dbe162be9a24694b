"""What the report shows, read from a detect output in bounded work.

Three kinds of read, each projected to the columns it needs:

- **Summary scans** over every committed part: ``images`` (``image_id``, ``status``) and ``detections``
  (``image_id``, ``category``, ``score``), one file at a time, reduced on the fly to counts, score histograms
  and per-category samples; memory holds one file plus the reductions.
- **Errors**: ``uri``, ``error`` of the images rows with ``status == "error"`` (a filter the scan pushes down).
- **Gallery**: the full rows of the sampled images only, from the parts that hold them (an image's ``images``
  and ``detections`` rows sit in the part files of one name), filtered by ``image_id``.

Which files count comes from :func:`detbatch.detect.sink.read_commit_log`: debris is never read.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from detbatch import storage
from detbatch.errors import InputError

logger = logging.getLogger(__name__)

# Score histogram bins over [0, 1]: 0.05 wide, fine enough to see a threshold, small in the page.
SCORE_BINS = 20
# A multiplicative hash (Knuth's, 2^64 / golden ratio) spreads image ids, so "the k smallest keys" is a
# uniform, deterministic and mergeable sample: the same images on every report of the same run.
_HASH = np.uint64(0x9E3779B97F4A7C15)


def sample_key(image_id: np.ndarray) -> np.ndarray:
    """uint64 [N] sampling keys of int64 [N] image ids."""
    with np.errstate(over="ignore"):
        return np.asarray(image_id, dtype=np.int64).view(np.uint64) * _HASH


@dataclass
class BottomK:
    """The ``k`` smallest sampling keys seen so far, with their image id and part index; mergeable."""

    k: int
    keys: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint64))
    ids: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    parts: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))

    def bound(self) -> np.uint64:
        """Keys at or above this cannot enter: the k-th smallest key once full, else the largest key + 1."""
        return self.keys[-1] if len(self.keys) >= self.k else np.uint64(2**64 - 1)

    def add(self, image_id: np.ndarray, part: int) -> None:
        keys = np.concatenate([self.keys, sample_key(image_id)])
        ids = np.concatenate([self.ids, image_id.astype(np.int64)])
        parts = np.concatenate([self.parts, np.full(len(image_id), part, np.int64)])
        _, first = np.unique(keys, return_index=True)  # sorted by key, one row per image
        keep = first[: self.k]
        self.keys, self.ids, self.parts = keys[keep], ids[keep], parts[keep]


@dataclass
class Summary:
    images_ok: int = 0
    images_error: int = 0
    detections: int = 0
    categories: list[str] = field(default_factory=list)
    """Category names in order of first appearance; ``histograms`` rows follow it."""
    histograms: np.ndarray = field(default_factory=lambda: np.zeros((0, SCORE_BINS), np.int64))
    """int64 [C, SCORE_BINS] detections per category and score bin."""

    def category_counts(self) -> dict[str, int]:
        return {c: int(n) for c, n in zip(self.categories, self.histograms.sum(axis=1))}


@dataclass(frozen=True)
class RunParts:
    """A detect output's committed parts: filesystem paths of ``images`` and ``detections`` files, paired by
    index, and ``run.json`` (None for an unfinished run)."""

    uri: str
    fs: Any
    images: list[str]
    detections: list[str]
    info: dict[str, Any] | None


def open_parts(uri: str) -> RunParts:
    from detbatch.detect.sink import read_commit_log  # inside: detbatch.detect imports the detect driver

    storage.check_readable(uri)
    log = read_commit_log(uri)
    fs, _ = storage.resolve(uri)
    paths = {t: [storage.resolve(f)[1] for f in log.files(uri, t)] for t in ("images", "detections")}
    info = None
    if storage.exists(storage.join(uri, "run.json")):
        info = json.loads(storage.read_text(storage.join(uri, "run.json")))
    if info is None and not log.parts:
        raise InputError(f"{uri}: not a detect output (no committed parts, no run.json); --detections takes the "
                         f"folder `detbatch detect --output` wrote")
    if info is None:
        logger.warning("%s: no run.json, the run is not finished; the report shows the committed parts", uri)
    return RunParts(uri, fs, paths["images"], paths["detections"], info)


def fragments(run: RunParts, files: list[str], **scan: Any) -> list[Any]:
    """One pyarrow fragment per file, in order (none for no files)."""
    return list(_dataset(run, files).get_fragments(**scan)) if files else []


def _dataset(run: RunParts, files: list[str]) -> pads.Dataset:
    return pads.dataset(files, filesystem=run.fs, format="parquet")


def scan_summary(run: RunParts, per_category: int, overall: int) -> tuple[Summary, list[BottomK], BottomK]:
    """Counts and histograms over every committed part, and the samples: ``per_category`` images per
    category (from its detections) and ``overall`` ok images (any, with or without detections)."""
    summary = Summary()
    code_of: dict[str, int] = {}
    samples: list[BottomK] = []
    hist: list[np.ndarray] = []
    any_image = BottomK(overall)
    for part, fragment in enumerate(fragments(run, run.images)):
        t = fragment.to_table(columns=["image_id", "status"])
        ok = pc.equal(t["status"], "ok").to_numpy(zero_copy_only=False)
        summary.images_ok += int(ok.sum())
        summary.images_error += int((~ok).sum())
        any_image.add(t["image_id"].to_numpy()[ok], part)
    for part, fragment in enumerate(fragments(run, run.detections)):
        t = fragment.to_table(columns=["image_id", "category", "score"])
        summary.detections += t.num_rows
        if not t.num_rows:
            continue
        encoded = pc.dictionary_encode(t["category"]).combine_chunks()
        for name in encoded.dictionary.to_pylist():
            if name not in code_of:
                code_of[name] = len(summary.categories)
                summary.categories.append(name)
                samples.append(BottomK(per_category))
        # Run-wide category codes of this file's rows; one bincount makes every category's histogram.
        to_code = np.array([code_of[n] for n in encoded.dictionary.to_pylist()], np.int64)
        codes = to_code[encoded.indices.to_numpy(zero_copy_only=False)]
        bins = np.clip((t["score"].to_numpy() * SCORE_BINS).astype(np.int64), 0, SCORE_BINS - 1)
        counts = np.bincount(codes * SCORE_BINS + bins, minlength=len(samples) * SCORE_BINS)
        hist += [np.zeros(SCORE_BINS, np.int64)] * (len(samples) - len(hist))
        hist = [h + counts[c * SCORE_BINS : (c + 1) * SCORE_BINS] for c, h in enumerate(hist)]
        # Only rows whose key beats their category's current k-th key can enter its sample: once the samples
        # are full, that is a few rows a file, so the per-category work below stays small.
        ids = t["image_id"].to_numpy()
        bound = np.array([s.bound() for s in samples], np.uint64)
        candidate = sample_key(ids) < bound[codes]
        for c in np.unique(codes[candidate]).tolist():
            samples[c].add(np.unique(ids[candidate & (codes == c)]), part)
    if hist:
        summary.histograms = np.stack(hist)
    return summary, samples, any_image


def read_errors(run: RunParts) -> pa.Table:
    """``uri``, ``error`` of every image in error, in part order."""
    if not run.images:
        return pa.table({"uri": pa.array([], pa.string()), "error": pa.array([], pa.string())})
    return _dataset(run, run.images).to_table(columns=["uri", "error"], filter=pc.field("status") == "error")


def choose_sample(samples: list[BottomK], any_image: BottomK, limit: int) -> dict[int, int]:
    """image id -> part index of the gallery: per category first (every category appears), then the
    overall sample, up to ``limit`` images (more only when there are more categories than ``limit``)."""
    chosen: dict[int, int] = {}
    rank = 0
    while True:  # round robin over the categories, so a small limit still shows each of them
        added = False
        for s in samples:
            if rank < len(s.ids):
                added = True
                if len(chosen) < max(limit, len(samples)) or rank == 0:
                    chosen.setdefault(int(s.ids[rank]), int(s.parts[rank]))
        rank += 1
        if not added or len(chosen) >= limit:
            break
    for i, p in zip(any_image.ids.tolist(), any_image.parts.tolist()):
        if len(chosen) >= limit:
            break
        chosen.setdefault(int(i), int(p))
    return chosen


def read_images_of(run: RunParts, chosen: dict[int, int]) -> tuple[pa.Table, pa.Table]:
    """(images rows, detections rows) of the ``chosen`` images (id -> part index), from their parts only."""
    parts = sorted(set(chosen.values()))
    ids = pa.array(sorted(chosen), pa.int64())
    keep = pc.field("image_id").isin(ids)
    images = _dataset(run, [run.images[p] for p in parts]).to_table(
        columns=["image_id", "uri", "width", "height", "num_detections", "status"], filter=keep)
    detections = _dataset(run, [run.detections[p] for p in parts]).to_table(
        columns=["image_id", "category_id", "category", "score", "x_min", "y_min", "x_max", "y_max"], filter=keep)
    return images, detections
