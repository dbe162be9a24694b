"""Ground truth and detect outputs for the evaluate tests, and the pycocotools oracle check."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from detbatch import storage
from detbatch.metrics import STAT_KEYS

from tests.helpers.detect_output import write_detect_output
from tests.helpers.oracle import adversarial_coco, per_category_ap, pycocotools_eval


def setup_run(root: str, data_seed: int = 3, files: int = 3, manifest: bool = True, **kw):
    """Ground truth at ``root/gt.json`` and a detect output at ``root/run``; ``kw`` go to
    :func:`write_detect_output` (``seed`` deals the rows into files, ``row_group_size``)."""
    dataset, dt = adversarial_coco(data_seed)
    gt_uri = storage.join(root, "gt.json")
    storage.write_text(gt_uri, json.dumps(dataset))
    images = [{"image_id": im["id"], "uri": f"s3://data/images/{im['file_name']}"} for im in dataset["images"]]
    run = storage.join(root, "run")
    write_detect_output(run, dt, images, input_uri="s3://data/images", manifest=gt_uri if manifest else None, files=files, **kw)
    return dataset, dt, gt_uri, run


def assert_equals_pycocotools(metrics, dataset, dt):
    ev = pycocotools_eval(dataset, dt)
    np.testing.assert_allclose([metrics[k] for k in STAT_KEYS], ev.stats, rtol=0, atol=1e-9)
    names = {c["id"]: c["name"] for c in dataset["categories"]}
    for cat, ap in per_category_ap(ev).items():
        assert metrics["per_category"][names[cat]]["AP"] == pytest.approx(ap, abs=1e-9)


def without_execution(metrics):
    return {k: v for k, v in metrics.items() if k != "execution"}


def uri_hash(uri: str) -> int:
    """A stable 63-bit image id from a URI, as a run without a manifest has (any id pairs by file name)."""
    return int.from_bytes(hashlib.blake2b(uri.encode(), digest_size=8).digest(), "little") >> 1
