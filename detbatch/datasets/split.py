"""``detbatch split``: one dataset into train / val / test COCO JSONs, seeded, stratified, group-aware.

The unit of assignment is a **group** of images that must stay together (the frames of one video, the
photos of one site): by default each image is its own group; ``group_by`` makes groups from a regular
expression on ``file_name`` (the first capture group, else the whole match, is the key) or, written
``field:NAME``, from a field of the COCO image entries. An image the pattern does not match, or without
the field, is a group of its own (counted in the report).

Assignment, all from ``numpy.random.default_rng(seed)`` over the groups in sorted key order (so the input's
order does not matter, and the same seed gives the same split):

1. **Presence**: categories in order of rarity (fewest groups first). A category found in at least as many
   groups as there are splits gets, in each split that lacks it, the smallest unassigned group holding it.
2. **Sizes**: the other groups, largest first, each to the split furthest below its share of the images.

So every category with enough groups is in every split, unless a rarer category's groups took all of
its own first (possible only when groups hold several categories); the report lists any such gap.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detbatch import storage
from detbatch.errors import InputError

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# Fractions may be written with a few decimals (0.33, 0.33, 0.34): sums this close to 1 are fine.
_SUM_TOLERANCE = 1e-6


@dataclass(frozen=True)
class SplitResult:
    """``splits``: split name -> COCO dict (every category in each). ``report``: the counts of
    :func:`split_report`. ``missing``: split -> category names with enough groups that it lacks."""

    splits: dict[str, dict[str, Any]]
    report: dict[str, Any]
    missing: dict[str, list[str]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """A table: images, groups and boxes per split, and boxes per category."""
        names = [c["name"] for c in self.report["categories"]]
        head = ["split", "images", "groups", "boxes", *names]
        rows = [[s, str(r["images"]), str(r["groups"]), str(r["boxes"]), *(str(r["boxes_per_category"][n]) for n in names)]
                for s, r in self.report["splits"].items()]  # fmt: skip
        widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
        table = ["  " + "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths))) for row in [head, *rows]]
        gaps = [f"  {s} lacks {', '.join(cats)} (their groups went to rarer categories first)" for s, cats in self.missing.items() if cats]
        return table + gaps


def split_dataset(
    coco: dict[str, Any], fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0, group_by: str | None = None
) -> SplitResult:
    """Split the COCO dict ``coco`` into :data:`SPLITS` by ``fractions`` of its images (a fraction of 0:
    no such split). ``group_by``: a regex on ``file_name``, ``field:NAME``, or None (module docstring)."""
    if len(fractions) != len(SPLITS) or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > _SUM_TOLERANCE:
        raise InputError(f"fractions {list(fractions)}: give three numbers >= 0 (train, val, test) that sum to 1")
    images = coco["images"]
    if not images:
        raise InputError("the dataset has no images to split")
    keys, ungrouped = group_keys(images, group_by)
    categories = sorted(coco.get("categories", []), key=lambda c: int(c["id"]))
    by_image: dict[int, list[dict[str, Any]]] = {int(im["id"]): [] for im in images}
    for ann in coco.get("annotations", []):
        by_image.setdefault(int(ann["image_id"]), []).append(ann)

    group_names = sorted(set(keys))
    index = {k: g for g, k in enumerate(group_names)}
    members: list[list[int]] = [[] for _ in group_names]
    for i, key in enumerate(keys):
        members[index[key]].append(i)
    cats_of = [{int(a["category_id"]) for i in m for a in by_image[int(images[i]["id"])]} for m in members]
    assignment = assign_groups([len(m) for m in members], cats_of, fractions, np.random.default_rng(seed))

    splits = {}
    for s, name in enumerate(SPLITS):
        if fractions[s] == 0:
            continue
        chosen = sorted(i for g, m in enumerate(members) if assignment[g] == s for i in m)
        split_images = [images[i] for i in chosen]
        anns = [a for im in split_images for a in by_image[int(im["id"])]]
        splits[name] = {k: v for k, v in coco.items() if k not in ("images", "annotations")} | {
            "images": split_images, "annotations": anns, "categories": categories}
    groups = Counter(SPLITS[s] for s in assignment)
    report = split_report(splits, categories, groups) | {
        "seed": seed, "fractions": list(fractions), "group_by": group_by, "groups": len(group_names), "ungrouped_images": ungrouped}
    enough = {int(c["id"]) for c in categories if sum(int(c["id"]) in cats for cats in cats_of) >= len(splits)}
    missing = {name: [c["name"] for c in categories if int(c["id"]) in enough and not report["splits"][name]["boxes_per_category"][c["name"]]]
               for name in splits}  # fmt: skip
    for name, cats in missing.items():
        if cats:
            logger.warning("split %s lacks categories %s", name, cats)
    return SplitResult(splits, report, missing)


def group_keys(images: list[dict[str, Any]], group_by: str | None) -> tuple[list[str], int]:
    """The group key of each image entry, and how many images are a group of their own because the
    pattern did not match or the field is absent (each image alone, without ``group_by``)."""
    alone = [f"\0{im['file_name']}\0{im['id']}" for im in images]  # never equal to a pattern's or field's key
    if group_by is None:
        return alone, 0
    keys: list[str | None]
    if group_by.startswith("field:"):
        name = group_by[len("field:") :]
        keys = [None if im.get(name) is None else f"field:{im[name]}" for im in images]
    else:
        try:
            pattern = re.compile(group_by)
        except re.error as e:
            raise InputError(f"--group-by {group_by!r} is not a regular expression ({e}); or write field:NAME for an image field") from None
        matches = [pattern.search(str(im["file_name"])) for im in images]
        keys = [None if m is None else "re:" + (m.group(1) if pattern.groups else m.group(0)) for m in matches]
    ungrouped = sum(k is None for k in keys)
    if ungrouped:
        logger.warning("--group-by %r: %d of %d images have no group key and are each a group alone", group_by, ungrouped, len(images))
    return [a if k is None else k for k, a in zip(keys, alone)], ungrouped


def assign_groups(sizes: list[int], categories: list[set[int]], fractions: tuple[float, ...], rng: np.random.Generator) -> list[int]:
    """The split (an index of ``fractions``) of each group: ``sizes`` images, ``categories`` held (both
    per group, in sorted key order). The two passes of the module docstring."""
    active = [s for s, f in enumerate(fractions) if f > 0]
    order = rng.permutation(len(sizes)).tolist()  # the random tie-break among equal choices
    rank = {g: r for r, g in enumerate(order)}
    assignment = [-1] * len(sizes)
    count = dict.fromkeys(active, 0)
    present: dict[int, set[int]] = {s: set() for s in active}

    def assign(g: int, s: int) -> None:
        assignment[g] = s
        count[s] += sizes[g]
        present[s] |= categories[g]

    groups_of: dict[int, list[int]] = {}
    for g in order:
        for c in categories[g]:
            groups_of.setdefault(c, []).append(g)
    for c in sorted(groups_of, key=lambda c: (len(groups_of[c]), c)):
        if len(groups_of[c]) < len(active):
            continue
        for s in active:
            free = [g for g in groups_of[c] if assignment[g] < 0]
            if c in present[s] or not free:
                continue
            assign(min(free, key=lambda g: (sizes[g], rank[g])), s)
    total = sum(sizes)
    for g in sorted((g for g in order if assignment[g] < 0), key=lambda g: (-sizes[g], rank[g])):
        assign(g, max(active, key=lambda s: (fractions[s] * total - count[s], -s)))
    return assignment


def split_report(splits: dict[str, dict[str, Any]], categories: list[dict[str, Any]], groups: Counter) -> dict[str, Any]:
    """Per split: images, groups, boxes, and boxes and images per category name."""
    names = {int(c["id"]): c["name"] for c in categories}
    out = {}
    for name, coco in splits.items():
        boxes = Counter(names.get(int(a["category_id"]), "?") for a in coco["annotations"])
        pairs = {(int(a["image_id"]), int(a["category_id"])) for a in coco["annotations"]}
        with_cat = Counter(names.get(c, "?") for _, c in pairs)
        out[name] = {
            "images": len(coco["images"]), "groups": groups[name], "boxes": len(coco["annotations"]),
            "boxes_per_category": {n: boxes[n] for n in names.values()},
            "images_per_category": {n: with_cat[n] for n in names.values()},
        }  # fmt: skip
    return {"categories": [{"id": int(c["id"]), "name": c["name"]} for c in categories], "splits": out}


def write_splits(result: SplitResult, out: str) -> dict[str, str]:
    """``out/{train,val,test}.json`` (the splits made) and ``out/split.json`` (the report); split -> URI."""
    uris = {}
    for name, coco in result.splits.items():
        uris[name] = storage.join(out, f"{name}.json")
        storage.write_text(uris[name], json.dumps(coco, separators=(",", ":")))
    storage.write_text(storage.join(out, "split.json"), json.dumps(result.report | {"missing": result.missing}, indent=1))
    return uris
