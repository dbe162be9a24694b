"""Pairing the images of a detect run with the images of a COCO ground truth, by file name.

When the detect run read a COCO manifest, its ``image_id`` is the ground-truth id and nothing is needed
here. Otherwise a run image is named by its URI; the rule (docs/evaluate.md):

1. its name is the URI relative to the run's input root (``run.json`` ``input.uri``); for a shard
   member (``SHARD_URI#member``) it is the member name;
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


def relative_name(uri: str, root: str | None) -> str:
    """The name of a run image: member name for ``SHARD#member``, else ``uri`` relative to ``root``."""
    if "#" in uri:
        return normalize_name(uri.split("#", 1)[1])
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


def pair_file_names(run_uris: list[str], root: str | None, gt_file_names: list[str]) -> FileNamePairing:
    """Pair run image URIs with ground-truth file names by the rule of this module."""
    names = [relative_name(u, root) for u in run_uris]
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
