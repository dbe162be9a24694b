"""Pairing the images of a detect run with the images of a COCO ground truth, by file name.

When the detect run read a COCO manifest, its ``image_id`` is the ground-truth id and nothing is needed
here. Otherwise a run image is named by its URI; the rule (docs/evaluate.md):

1. its name is the URI relative to the run's input root (``run.json`` ``input.root``, else ``input.uri``);
   for a shard member (``SHARD_URI#member``, :func:`shard_member`) it is the member name;
2. exact match: the name equals a ground-truth ``file_name`` (both with ``\\`` as ``/`` and without a
   leading ``./`` or ``/``);
3. otherwise, basename match: the name's last path component equals the basename of exactly one
   ground-truth ``file_name``, and no other unpaired run image has that basename;
4. one to one: a name shared by several run images (the same file run twice, or two shards with the same
   member name) pairs none of them; they are reported as ambiguous.
"""

from __future__ import annotations

import logging
import posixpath
from collections import Counter
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)


def normalize_name(name: str) -> str:
    name = name.replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


# The input kinds that are shards, and the extension of their files (any case). detect.read gives a shard
# member the uri ``SHARD_URI#MEMBER``; a plain image file's uri is its path, and a '#' in it is part of the
# name, so a uri is a member only where '#' follows a shard's extension.
SHARD_EXTENSIONS = {"tar": ".tar", "parquet": ".parquet"}


def shard_member(uri: str, kind: str | None = None) -> str | None:
    """The member name of a shard member's uri ``SHARD_URI#MEMBER``, else None.

    ``kind`` is the input kind (``images``, ``tar``, ``parquet``; ``run.json`` ``input.kind``), or None
    when unknown: a uri is a member where ``.tar#`` or ``.parquet#`` (any case) first occurs in it, and
    never for ``images``, whose uris are plain paths (``x.tar#y.jpg`` is a file of that name there).
    """
    if kind == "images":
        return None
    lower = uri.lower()
    cuts = [at + len(ext) for ext in SHARD_EXTENSIONS.values() if (at := lower.find(ext + "#")) >= 0]
    return uri[min(cuts) + 1 :] if cuts else None


def relative_name(uri: str, root: str | None, kind: str | None = None) -> str:
    """The name of a run image: the member name of a shard member (:func:`shard_member`), else ``uri``
    relative to ``root``."""
    member = shard_member(uri, kind)
    if member is not None:
        return normalize_name(member)
    if root:
        prefix = root.rstrip("/") + "/"
        if uri.startswith(prefix):
            return normalize_name(uri[len(prefix) :])
    return normalize_name(uri.split("://", 1)[-1])


@dataclass(frozen=True)
class FileNamePairing:
    """For each run image, the index of its ground-truth image or -1.

    Attributes:
        gt_index: int64 [R], index into the ground-truth file names, -1 where unpaired.
        exact: number paired by exact relative name.  basename: number paired by basename.
        ambiguous: run images left unpaired because their name is not unique.
    """

    gt_index: np.ndarray
    exact: int
    basename: int
    ambiguous: int


def pair_file_names(
    run_uris: list[str], root: str | None, gt_file_names: list[str], kind: str | None = None
) -> FileNamePairing:
    """Pair run image URIs with ground-truth file names by the rule of this module (``kind``: the run's
    input kind, None if unknown; see :func:`shard_member`)."""
    names = [relative_name(u, root, kind) for u in run_uris]
    gt_names = [normalize_name(f) for f in gt_file_names]
    by_name: dict[str, int] = {}
    for i, f in enumerate(gt_names):
        by_name.setdefault(f, i)
    name_count = Counter(names)
    out = np.full(len(names), -1, dtype=np.int64)
    ambiguous = 0
    for r, name in enumerate(names):
        if name_count[name] > 1:
            ambiguous += 1
        elif name in by_name:
            out[r] = by_name[name]
    exact = int((out >= 0).sum())

    gt_base = Counter(posixpath.basename(f) for f in gt_names)
    base_to_gt = {posixpath.basename(f): i for i, f in enumerate(gt_names) if gt_base[posixpath.basename(f)] == 1}
    taken = set(out[out >= 0].tolist())
    open_runs = [r for r, name in enumerate(names) if out[r] < 0 and name_count[name] == 1]
    run_base = Counter(posixpath.basename(names[r]) for r in open_runs)
    basename = 0
    for r in open_runs:
        base = posixpath.basename(names[r])
        g = base_to_gt.get(base)
        if g is not None and run_base[base] == 1 and g not in taken:
            out[r] = g
            taken.add(g)
            basename += 1
    if ambiguous:
        logger.warning("%d run images share a file name with another run image: left unpaired", ambiguous)
    return FileNamePairing(gt_index=out, exact=exact, basename=basename, ambiguous=ambiguous)
