"""pycocotools as the oracle, and adversarial COCO data for differential tests."""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Any

import numpy as np

from detbatch.metrics import Detections


def tie_order(dt: Detections) -> np.ndarray:
    """detbatch's results order: image_id, category_id, score descending, x_min, y_min, x_max, y_max."""
    b = dt.boxes
    return np.lexsort((b[:, 3], b[:, 2], b[:, 1], b[:, 0], -dt.score, dt.category_id, dt.image_id))


def results_list(dt: Detections) -> list[dict[str, Any]]:
    """COCO results in the tie order; bbox is [x, y, x_max - x, y_max - y] computed in float64."""
    out = []
    for i in tie_order(dt):
        x1, y1, x2, y2 = (float(v) for v in dt.boxes[i])
        out.append({
            "image_id": int(dt.image_id[i]),
            "category_id": int(dt.category_id[i]),
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "score": float(dt.score[i]),
        })  # fmt: skip
    return out


def pycocotools_eval(dataset: dict[str, Any], dt: Detections):
    """``COCOeval`` after evaluate/accumulate/summarize, fed ``dt`` in the tie order (detections of
    images outside the ground truth are dropped first: pycocotools refuses them)."""
    known = np.isin(dt.image_id, [im["id"] for im in dataset["images"]])
    return pycocotools_eval_results(dataset, results_list(dt.take(known)))


def pycocotools_eval_results(dataset: dict[str, Any], results: list[dict[str, Any]]):
    """``COCOeval`` of a COCO results list, in the list's order."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = copy.deepcopy(dataset)
        gt.createIndex()
        dets = gt.loadRes(copy.deepcopy(results)) if results else _empty_results(gt)
        ev = COCOeval(gt, dets, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def _empty_results(gt):
    from pycocotools.coco import COCO

    res = COCO()
    res.dataset = {"images": list(gt.dataset["images"]), "categories": list(gt.dataset["categories"]), "annotations": []}
    res.createIndex()
    return res


def per_category_ap(ev) -> dict[int, float]:
    p = ev.eval["precision"][:, :, :, 0, 2]
    out = {}
    for k, cat in enumerate(ev.params.catIds):
        s = p[:, :, k]
        out[int(cat)] = float(np.mean(s[s > -1])) if (s > -1).any() else -1.0
    return out


def adversarial_coco(seed: int, n_images: int = 40, n_categories: int = 6) -> tuple[dict[str, Any], Detections]:
    """Ground truth and detections built to hit the edge cases of COCOeval.

    Integer boxes on a small grid (IoUs exactly on thresholds, duplicates), quantised scores (ties),
    crowd regions, ``area`` fields that differ from w*h or sit exactly on 32**2 and 96**2, images with no
    ground truth or no detections, > 100 detections for one image and category, non-contiguous ids, and
    detections of categories and images the ground truth does not have.
    """
    rng = np.random.default_rng(seed)
    image_ids = np.sort(rng.choice(10**6, size=n_images, replace=False)) + 1
    category_ids = np.sort(rng.choice(200, size=n_categories, replace=False)) + 1
    images = [{"id": int(i), "file_name": f"img_{i}.jpg", "width": 640, "height": 480} for i in image_ids]
    categories = [{"id": int(c), "name": f"cat{c}"} for c in category_ids]
    anns: list[dict[str, Any]] = []
    scale = rng.choice([1, 4, 16, 40], size=n_images)
    for n, img in enumerate(image_ids):
        if rng.random() < 0.15:
            continue  # no ground truth
        for _ in range(rng.integers(1, 12)):
            s = int(scale[n])
            x, y = (int(v) * s for v in rng.integers(0, 10, 2))
            w, h = (int(v) * s for v in rng.integers(1, 9, 2))
            area_kind = rng.random()
            area = float(w * h)
            if area_kind < 0.15:
                area = float(rng.choice([32**2, 96**2]))
            elif area_kind < 0.35:
                area = float(w * h) * float(rng.choice([0.5, 0.7, 1.3]))
            anns.append({
                "id": len(anns) + 1,
                "image_id": int(img),
                "category_id": int(rng.choice(category_ids)),
                "bbox": [float(x), float(y), float(w), float(h)],
                "area": area,
                "iscrowd": int(rng.random() < 0.1),
            })  # fmt: skip
    dataset = {"images": images, "categories": categories, "annotations": anns}

    rows: list[tuple[int, int, float, list[float]]] = []
    quant = rng.choice([2, 5, 10, 1000])
    for n, img in enumerate(image_ids):
        if rng.random() < 0.15:
            continue  # no detections
        own = [a for a in anns if a["image_id"] == img]
        s = int(scale[n])
        count = int(rng.integers(0, 30))
        if rng.random() < 0.1:
            count = 130  # beyond maxDets for one category
        forced_cat = int(rng.choice(category_ids))
        for _ in range(count):
            if own and rng.random() < 0.7:
                a = own[rng.integers(len(own))]
                x, y, w, h = a["bbox"]
                jitter = rng.integers(-1, 2, 4) * (rng.random(4) < 0.3)
                dx, dy, dw, dh = (float(v) * s for v in jitter)
                box = [x + dx, y + dy, x + dx + max(w + dw, s), y + dy + max(h + dh, s)]
                cat = a["category_id"] if rng.random() < 0.85 else int(rng.choice(category_ids))
            else:
                x, y = (float(v) * s for v in rng.integers(0, 10, 2))
                w, h = (float(v) * s for v in rng.integers(1, 6, 2))
                if rng.random() < 0.1:
                    w, h = float(rng.choice([32, 96])), float(rng.choice([32, 96]))
                box = [x, y, x + w, y + h]
                cat = int(rng.choice(category_ids))
            if count == 130:
                cat = forced_cat
            if rng.random() < 0.03:
                cat = 10_000  # not in the ground truth
            score = float(np.round(rng.random() * quant) / quant)
            rows.append((int(img), cat, score, box))
    rows.append((int(image_ids[0]) + 10**7, int(category_ids[0]), 0.9, [0.0, 0.0, 5.0, 5.0]))  # unknown image
    rng.shuffle(rows)  # the answer must not depend on the input order
    dt = Detections(
        image_id=np.array([r[0] for r in rows], dtype=np.int64),
        category_id=np.array([r[1] for r in rows], dtype=np.int64),
        score=np.array([r[2] for r in rows], dtype=np.float32),
        boxes=np.array([r[3] for r in rows], dtype=np.float32).reshape(-1, 4),
    )
    return dataset, dt


def classic_voc_eval(dataset: dict[str, Any], dt: Detections, plus_one: bool = False) -> dict[int, tuple[float, float]]:
    """The VOC devkit's ``voc_eval`` loop, written out plainly: {category id: (AP, 11-point AP)}.

    Detections are visited in the tie order (a stable sort on -score of the tie-ordered list); a ground
    truth is difficult if ``difficult`` or ``iscrowd``; classes without non-difficult ground truth are left out.
    """
    one = 1.0 if plus_one else 0.0
    image_ids = {im["id"] for im in dataset["images"]}
    out = {}
    order = tie_order(dt)
    for cat in (c["id"] for c in dataset["categories"]):
        recs: dict[int, dict[str, Any]] = {}
        for a in dataset["annotations"]:
            if a["category_id"] == cat and a["image_id"] in image_ids:
                r = recs.setdefault(a["image_id"], {"bbox": [], "difficult": [], "det": []})
                x, y, w, h = a["bbox"]
                r["bbox"].append([x, y, x + w, y + h])
                r["difficult"].append(bool(a.get("difficult", 0) or a.get("iscrowd", 0)))
                r["det"].append(False)
        npos = sum(not d for r in recs.values() for d in r["difficult"])
        idx = [i for i in order if dt.category_id[i] == cat and dt.image_id[i] in image_ids]
        idx = [idx[j] for j in np.argsort([-float(dt.score[i]) for i in idx], kind="mergesort")]
        tp, fp = np.zeros(len(idx)), np.zeros(len(idx))
        for d, i in enumerate(idx):
            r = recs.get(int(dt.image_id[i]))
            bb = dt.boxes[i].astype(np.float64)
            ovmax, jmax = -np.inf, -1
            if r is not None:
                g = np.array(r["bbox"])
                iw = np.maximum(np.minimum(g[:, 2], bb[2]) - np.maximum(g[:, 0], bb[0]) + one, 0.0)
                ih = np.maximum(np.minimum(g[:, 3], bb[3]) - np.maximum(g[:, 1], bb[1]) + one, 0.0)
                inters = iw * ih
                uni = (bb[2] - bb[0] + one) * (bb[3] - bb[1] + one) + (g[:, 2] - g[:, 0] + one) * (g[:, 3] - g[:, 1] + one) - inters
                ov = inters / uni
                ovmax, jmax = np.max(ov), int(np.argmax(ov))
            if ovmax > 0.5:
                if not r["difficult"][jmax]:
                    if not r["det"][jmax]:
                        tp[d] = 1.0
                        r["det"][jmax] = True
                    else:
                        fp[d] = 1.0
            else:
                fp[d] = 1.0
        if npos == 0:
            continue
        fp, tp = np.cumsum(fp), np.cumsum(tp)
        rec = tp / float(npos)
        prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        ap11 = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = 0.0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap11 = ap11 + p / 11.0
        mrec = np.concatenate(([0.0], rec, [1.0]))
        mpre = np.concatenate(([0.0], prec, [0.0]))
        for k in range(mpre.size - 1, 0, -1):
            mpre[k - 1] = np.maximum(mpre[k - 1], mpre[k])
        k = np.where(mrec[1:] != mrec[:-1])[0]
        out[int(cat)] = (float(np.sum((mrec[k + 1] - mrec[k]) * mpre[k + 1])), float(ap11))
    return out
