"""The TIDE error breakdown: hand-built cases where each error type and its dAP are known, the base AP50
against COCO's, and the whole breakdown against ``tidecv`` on COCO128 with perturbed detections."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detbatch.metrics import Detections, GroundTruth, MatchRecords, count_ground_truth, evaluate_coco
from detbatch.metrics.coco import RECALL_THRESHOLDS, matching
from detbatch.metrics.grouping import accumulate_by_category, every_category
from detbatch.metrics.order import accumulation_order, record_order
from detbatch.metrics.tide import (
    BEST, BKG, BOTH, CLS, DUPE, ERROR_TYPES, LOC, SPECIAL_TYPES, TRANSFER, _ap50, accumulate_errors, category_errors,
    error_codes, error_records, errors_dict, evaluate_errors,
)  # fmt: skip

from tests.helpers.oracle import adversarial_coco, tie_order

R = 101  # recall thresholds


def _ann(i, image, cat, bbox, crowd=0):
    return {"id": i, "image_id": image, "category_id": cat, "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": crowd}


def _detections(rows):
    """Detections from (image, category, score, [x, y, w, h]) rows."""
    boxes = np.array([[x, y, x + w, y + h] for *_, (x, y, w, h) in rows], dtype=np.float32).reshape(-1, 4)
    return Detections([r[0] for r in rows], [r[1] for r in rows], np.array([r[2] for r in rows], np.float32), boxes)


def _codes_by_score(records):
    """{score: code} of the detections' records (transfers left out)."""
    own = records.rank < 1 << 20
    return {round(float(s), 3): int(c) for s, c in zip(records.score[own], error_codes(records)[own])}


def test_each_error_type_on_a_hand_built_case():
    """One image per error type, categories 1 (cat) and 2 (dog), each with the AP50 it would have fixed."""
    anns = [
        _ann(1, 1, 1, [0, 0, 10, 10]),  # image 1: a cat found (true positive) and found twice (duplicate)
        _ann(2, 2, 1, [0, 0, 10, 10]),  # image 2: a cat boxed badly (localisation): IoU 1/3
        _ann(3, 3, 1, [0, 0, 10, 10]),  # image 3: a cat called a dog (classification), and its dog found
        _ann(4, 3, 2, [50, 50, 10, 10]),
        _ann(5, 4, 1, [0, 0, 10, 10]),  # image 4: a dog box half off a cat (both), a box on nothing (background)
        _ann(6, 5, 2, [0, 0, 10, 10]),  # image 5: a dog no detection is near (missed)
        _ann(7, 6, 1, [0, 0, 40, 40], crowd=1),  # image 6: a crowd of cats: a detection on it is ignored, no error
    ]
    dataset = {"images": [{"id": i} for i in range(1, 7)], "categories": [{"id": 1}, {"id": 2}], "annotations": anns}
    gt = GroundTruth.from_coco(dataset)
    dt = _detections([
        (1, 1, 0.95, [0, 0, 10, 10]), (1, 1, 0.30, [0.5, 0, 10, 10]),
        (2, 1, 0.90, [5, 0, 10, 10]),
        (3, 2, 0.85, [0, 0, 10, 10]), (3, 2, 0.80, [50, 50, 10, 10]),
        (4, 2, 0.70, [5, 0, 10, 10]), (4, 1, 0.60, [200, 200, 10, 10]),
        (6, 1, 0.50, [1, 1, 30, 30]),
    ])  # fmt: skip
    records = error_records(gt, matching(gt, dt))
    assert _codes_by_score(records) == {
        0.95: 0, 0.3: DUPE, 0.9: LOC | BEST, 0.85: CLS | BEST, 0.8: 0, 0.7: BOTH, 0.6: BKG, 0.5: 0,
    }
    moved = error_codes(records) == TRANSFER | BEST  # the classification error, as the cat it would be
    assert records.category_id[moved].tolist() == [1] and records.score[moved].tolist() == [np.float32(0.85)]

    b = evaluate_errors(gt, matching(gt, dt))
    m = errors_dict(b, {1: "cat", 2: "dog"})
    assert m["counts"] == {"classification": 1, "localisation": 1, "both": 1, "duplicate": 1, "background": 1, "missed": 2}
    # cat: 4 ground truth; by score 0.95 TP, 0.9 loc, 0.6 bkg, 0.3 dupe -> P 1 at R 1/4, its only true positive
    cat = m["per_category"]["cat"]
    assert cat["AP50"] == pytest.approx(26 / R)
    # localisation fixed: TP 0.95, TP 0.9 -> recall 1/2 at precision 1
    assert cat["dAP"]["localisation"] == pytest.approx(51 / R - 26 / R)
    # classification fixed: the dog at 0.85 is a cat TP: list 0.95 TP, 0.9 FP, 0.85 TP -> P 2/3 at R 1/2
    assert cat["dAP"]["classification"] == pytest.approx(26 / R + 25 / R * 2 / 3 - 26 / R)
    # missed: the cat of image 4 (both points at no cat; a dog box) is missed: 3 ground truth left
    assert cat["counts"]["missed"] == 1 and cat["dAP"]["missed"] == pytest.approx(34 / R - 26 / R)
    # false negatives fixed: one ground truth, the TP: AP 1 at the first position
    assert cat["dAP"]["false_negatives"] == pytest.approx(1 - 26 / R)
    for name in ("both", "duplicate", "background", "false_positives"):
        assert cat["dAP"][name] == pytest.approx(0.0, abs=1e-12)  # all below its only true positive
    dog = m["per_category"]["dog"]  # 2 ground truth; 0.85 cls FP, 0.8 TP, 0.7 both FP
    assert dog["AP50"] == pytest.approx(51 / R * 0.5)
    assert dog["dAP"]["both"] == pytest.approx(0.0, abs=1e-12)
    assert dog["dAP"]["classification"] == pytest.approx(51 / R - 51 / R * 0.5)  # its FP moved to the cats
    assert dog["dAP"]["missed"] == pytest.approx(0.5 - 51 / R * 0.5)  # the dog of image 5: its TP at P 1/2, R 1
    assert m["AP50"] == pytest.approx(evaluate_coco(gt, dt).stats[1], abs=0)
    assert m["dAP"]["localisation"] == pytest.approx((51 - 26) / R / 2)


def test_base_ap50_is_coco_ap50_bit_for_bit_and_the_map_is_a_map_over_images():
    dataset, dt = adversarial_coco(5)
    gt = GroundTruth.from_coco(dataset)
    result = evaluate_coco(gt, dt)
    whole = evaluate_errors(gt, matching(gt, dt))
    assert whole.ap50() == result.stats[1]
    for c, row in zip(whole.per_category, result.per_category()):
        assert (c.ap[0] if c.num_gt else -1.0) == row["AP50"]
    # Any split of the images gives the same records, codes and transfers included.
    pieces = [error_records(part, matching(part, dt.take(np.isin(dt.image_id, part.image_ids)))) for part in gt.split_images(3)]
    counts = count_ground_truth(gt)
    rows = every_category(gt.category_ids, counts, accumulate_by_category(MatchRecords.concat(pieces), gt.category_ids, counts, accumulate_errors), accumulate_errors)
    for a, (b, _) in zip(whole.per_category, rows):
        np.testing.assert_array_equal(a.ap, b.ap)
        np.testing.assert_array_equal(a.counts, b.counts)


def _masked_category_errors(records, n_gt):
    """The reduce written the plain way, as an oracle: one sorted list, each fix as a mask over it."""
    code = error_codes(records)
    kind, best = code & 7, (code & BEST) != 0
    own = (kind != TRANSFER) & (records.rank < 100) & ((records.ignored & np.uint64(1)) == 0)
    rows = np.flatnonzero(own | (kind == TRANSFER))
    rows = rows[record_order(records.score[rows], records.image_id[rows], records.rank[rows])]
    kind, best, own = kind[rows], best[rows], own[rows]
    tp, moved = own & ((records.tp[rows] & np.uint64(1)) != 0), kind == TRANSFER
    missed = n_gt - int(tp.sum()) - int((best & ((kind == LOC) | moved)).sum())
    aps = [_ap50(tp[own], n_gt), _ap50((tp | moved)[(own & (kind != CLS)) | moved], n_gt),
           _ap50((tp | ((kind == LOC) & best))[own & ((kind != LOC) | best)], n_gt),
           *(_ap50(tp[own & (kind != k)], n_gt) for k in (BOTH, DUPE, BKG)), _ap50(tp[own], n_gt - missed),
           _ap50(np.arange(int(own.sum())) < int(tp.sum()), n_gt), _ap50(tp[own], int(tp.sum()))]  # fmt: skip
    counts = [int((own & (kind == k)).sum()) for k in (CLS, LOC, BOTH, DUPE, BKG)] + [missed]
    return np.array(aps), counts, int(moved.sum())


@pytest.mark.parametrize("seed", [3, 7])
def test_the_position_sweep_equals_masked_lists_with_and_without_the_shared_order(seed):
    """The reduce's AP50s from positions in one sort (the COCO reduce's, transfers merged in, or its own)
    equal each fix applied as a mask to the sorted list, on records in any order; scores rounded to a
    few values so that transfers tie own records of their image and score (they must come after them)."""
    dataset, dt = adversarial_coco(seed)
    dt = Detections(dt.image_id, dt.category_id, np.round(dt.score * 4).astype(np.float32) / 4, dt.boxes)
    gt = GroundTruth.from_coco(dataset)
    records = error_records(gt, matching(gt, dt))
    records = records.take(np.random.default_rng(seed).permutation(len(records)))  # any order
    counts = count_ground_truth(gt)
    transfers = 0
    for k, cat in enumerate(gt.category_ids):
        mine = records.take(np.flatnonzero(records.category_id == cat))
        aps, errors, moved = _masked_category_errors(mine, int(counts[k, 0]))
        transfers += moved
        for order in (None, accumulation_order(mine, max_rank=100)):
            c = category_errors(mine, counts[k], order)
            np.testing.assert_array_equal(c.ap, aps if c.num_gt else np.full(9, np.nan))
            assert c.counts.tolist() == errors and c.transfers == moved
    assert transfers > 0


def test_a_transfer_follows_the_own_records_of_its_score_and_image():
    """A dog box on a cat (classification) ties a cat box on nothing (background) in score and image: fixed,
    the cat list is 0.9 TP, 0.8 FP, 0.8 TP (rank decides: the transfer's is beyond every own rank)."""
    anns = [_ann(1, 1, 1, [0, 0, 10, 10]), _ann(2, 2, 1, [0, 0, 10, 10]), _ann(3, 1, 2, [50, 50, 10, 10])]
    gt = GroundTruth.from_coco({"images": [{"id": 1}, {"id": 2}], "categories": [{"id": 1}, {"id": 2}], "annotations": anns})
    dt = _detections([(1, 2, 0.8, [0, 0, 10, 10]), (1, 1, 0.8, [100, 100, 10, 10]), (2, 1, 0.9, [0, 0, 10, 10])])
    records = error_records(gt, matching(gt, dt))
    cat = records.take(np.flatnonzero(records.category_id == 1))
    for order in (None, accumulation_order(cat, max_rank=100)):
        c = category_errors(cat, 2, order)
        assert c.ap[1] == pytest.approx(51 / R + 50 / R * 2 / 3)  # classification fixed: P 1 at R 1/2, 2/3 at R 1


# ------------------------------------------------------------------------------------------ against tidecv


def perturbed_detections(dataset, seed: int) -> Detections:
    """Detections that make every error type on real ground truth: per regular annotation a true positive
    (40%), a box shifted by half its width (localisation), a wrong category (classification), both, a true
    positive and a duplicate, or nothing (missed, 15%); plus a few random boxes per image. Categories only
    among those with ground truth, scores continuous, fewer than 100 per image (docs: where detbatch and
    tidecv agree)."""
    rng = np.random.default_rng(seed)
    anns = [a for a in dataset["annotations"] if not a.get("iscrowd")]
    present = sorted({a["category_id"] for a in anns})
    size = {im["id"]: (im["width"], im["height"]) for im in dataset["images"]}
    rows = []

    def jitter(x, y, w, h, s):
        return [x + rng.normal(0, s) * w, y + rng.normal(0, s) * h, max(w * (1 + rng.normal(0, s)), 1.0), max(h * (1 + rng.normal(0, s)), 1.0)]

    for a in anns:
        x, y, w, h = a["bbox"]
        cat, other = a["category_id"], int(rng.choice([c for c in present if c != a["category_id"]]))
        u = rng.random()
        if u < 0.15:
            continue
        shifted = [x + 0.5 * w, y, w, h]
        box, c = (jitter(x, y, w, h, 0.04), cat) if u < 0.55 else (shifted, cat) if u < 0.65 else \
            (jitter(x, y, w, h, 0.03), other) if u < 0.75 else (shifted, other) if u < 0.82 else (jitter(x, y, w, h, 0.04), cat)
        rows.append((a["image_id"], c, rng.uniform(0.05, 1.0), box))
        if u >= 0.82:  # and a duplicate
            rows.append((a["image_id"], cat, rng.uniform(0.05, 1.0), jitter(x, y, w, h, 0.06)))
    for image, (width, height) in size.items():
        for _ in range(rng.poisson(3)):
            w, h = rng.uniform(8, width / 3), rng.uniform(8, height / 3)
            rows.append((image, int(rng.choice(present)), rng.uniform(0.0, 0.6), [rng.uniform(0, width - w), rng.uniform(0, height - h), w, h]))
    return _detections(rows)


def _ap(points: dict, num_gt: int, recall_points: np.ndarray) -> float:
    """AP of one of tidecv's ``APDataObject``s (``data_points``: id -> (score, is_true, info)) as its
    ``get_ap`` integrates it, sampled at ``recall_points``; NaN for an empty one (out of tidecv's mean)."""
    if not points and num_gt == 0:
        return float("nan")
    if num_gt == 0:
        return 0.0
    is_true = np.array([t for _, t, _ in sorted(points.values(), key=lambda p: -p[0])], dtype=bool)
    tp = np.cumsum(is_true)
    precision = tp / np.arange(1, len(tp) + 1)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    at = np.searchsorted(tp / num_gt, recall_points, side="left")
    return float(np.mean(np.where(at < len(tp), envelope[np.minimum(at, len(tp) - 1)], 0.0))) if len(tp) else 0.0


def tidecv_breakdown(dataset, dt: Detections) -> dict:
    """tidecv's breakdown, on detbatch's scale (AP / 100): the counts of errors of counted detections, and
    the AP50 of every class as it is and with each type fixed (NaN where the class has none), and their
    dAP; each AP integrated from tidecv's own precision/recall points, at pycocotools' recall thresholds
    (tidecv samples at ``x / 100``, pycocotools at ``np.linspace(0, 1, 101)``, whose points differ in the
    last bit: a recall that lands on one, 7/10 say, takes the next precision in one and not the other)."""
    from tidecv import TIDE, Data
    from tidecv.errors.main_errors import BackgroundError, BoxError, ClassError, DuplicateError, MissedError, OtherError

    gt, preds = Data("gt"), Data("dt")
    for im in dataset["images"]:
        gt.add_image(im["id"], im.get("file_name", str(im["id"])))
    for c in dataset["categories"]:
        gt.add_class(c["id"], c.get("name", str(c["id"])))
    for a in dataset["annotations"]:
        (gt.add_ignore_region if a.get("iscrowd") else gt.add_ground_truth)(a["image_id"], a["category_id"], a["bbox"])
    for i in tie_order(dt):
        x1, y1, x2, y2 = (float(v) for v in dt.boxes[i])
        preds.add_detection(int(dt.image_id[i]), int(dt.category_id[i]), float(dt.score[i]), [x1, y1, x2 - x1, y2 - y1])
    run = TIDE().evaluate(gt, preds)
    types = dict(zip(ERROR_TYPES, (ClassError, BoxError, OtherError, DuplicateError, BackgroundError, MissedError)))
    variants = [run.ap_data] + [run.fix_errors(lambda e, t=t: isinstance(e, t)) for t in types.values()]
    variants += [run.fix_errors(transform=lambda s, c, i: (1, True, i) if c else (0, False, i)),  # FalsePositiveError.fix
                 run.fix_errors(false_neg_dict=run.false_negatives)]  # fmt: skip
    classes = sorted(run.ap_data.objs)
    per_class = {c: np.array([_ap(v.objs[c].data_points, v.objs[c].num_gt_positives, RECALL_THRESHOLDS) for v in variants]) for c in classes}
    # The transcription integrates as tidecv does: at its own recall points it gives tidecv's AP.
    assert _ap(run.ap_data.objs[classes[0]].data_points, run.ap_data.objs[classes[0]].num_gt_positives, np.arange(101) / 100) == \
        pytest.approx(run.ap_data.objs[classes[0]].get_ap() / 100, abs=1e-12)
    means = np.nanmean(np.array(list(per_class.values())), axis=0)
    names = ERROR_TYPES + SPECIAL_TYPES
    dap = {n: (max(means[1 + i] - means[0], 0.0) if n in ERROR_TYPES else means[1 + i] - means[0]) for i, n in enumerate(names)}
    counts = {name: sum(getattr(e, "pred", {}).get("used", False) is not None for e in run.error_dict[t]) for name, t in types.items()}
    return {"AP50": means[0], "dAP": dap, "counts": counts, "per_class": {c: v[1:] for c, v in per_class.items()}}


@pytest.mark.parametrize("seed", [0, 1])
def test_equals_tidecv_on_coco128_with_perturbed_detections(coco128, seed):
    pytest.importorskip("tidecv")
    dataset = json.loads((coco128 / "annotations" / "instances.json").read_text())
    gt = GroundTruth.from_coco(dataset)
    # Without the detections COCO ignores (on a crowd of their category): tidecv gives those an error type
    # too, and fixes them into true positives (docs/evaluate.md, "Against tidecv").
    m = matching(gt, perturbed_detections(dataset, seed))
    dt = m.dt.take((m.records.ignored & np.uint64(1)) == 0)
    assert len(dt) < len(m.dt) and np.bincount(dt.image_id).max() < 100  # tidecv keeps 100 per image
    b = evaluate_errors(gt, matching(gt, dt))
    ours = errors_dict(b, {int(k): int(k) for k in gt.category_ids})
    theirs = tidecv_breakdown(dataset, dt)
    assert ours["counts"] == theirs["counts"]
    assert min(ours["counts"].values()) > 0  # every type occurs
    assert ours["AP50"] == pytest.approx(theirs["AP50"], abs=1e-9)
    for name in ERROR_TYPES + SPECIAL_TYPES:
        assert ours["dAP"][name] == pytest.approx(theirs["dAP"][name], abs=1e-9), name
    for k, c in zip(gt.category_ids, b.per_category):
        if c.num_gt:
            np.testing.assert_allclose(c.ap[1:], theirs["per_class"][int(k)], rtol=0, atol=1e-9, err_msg=str(k))
