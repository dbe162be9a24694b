"""The benchmark-only ``null`` detector: built by name with ``weights: none``, run by the real Detector
(scoring and the Parquet commit), it commits every decodable image as ``ok`` with no detections."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from detbatch.detect.decode import decode_batch
from detbatch.detect.detector import Detector
from detbatch.detect.sink import read_commit_log
from detbatch.models import build_detector
from tests.helpers.images import png_bytes

pytestmark = pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")


def test_null_detector_commits_every_image_with_no_detections(tmp_path):
    loaded = build_detector("null", "none")
    assert loaded.categories.num_classes == 2 and [c for c in loaded.categories.labels if c] == [(1, "object")]

    read = {"unit": [0, 0, 0], "index": [0, 1, 2], "last": [False, False, True],
            "uri": ["in/a.png", "in/b.png", "in/c.png"], "image_id": [1, 2, 3],
            "data": [png_bytes((255, 0, 0), size=(32, 32)), b"not an image", png_bytes((0, 0, 255), size=(48, 16))],
            "error": [None, None, None]}
    decoded = decode_batch({k: np.array(v, dtype=object) for k, v in read.items()})
    batch = {n: decoded[n].to_numpy(zero_copy_only=False) for n in decoded.column_names}
    counts = Detector.configured(model="null", weights="none", score_threshold=0.0, detections_per_image=100,
                                 device="cpu", batch_size=2, output=str(tmp_path))()(batch)

    assert counts.to_pylist() == [{"unit": 0, "images_ok": 2, "images_error": 1, "detections": 0}]
    assert read_commit_log(str(tmp_path)).finished == {0}
    (part,) = (tmp_path / "images").glob("*.parquet")
    images = pq.read_table(part)
    assert images["status"].to_pylist() == ["ok", "error", "ok"]
    assert images["num_detections"].to_pylist() == [0, 0, 0]
    assert (images["width"].to_pylist(), images["height"].to_pylist()) == ([32, 0, 48], [32, 0, 16])
    assert pq.read_table(tmp_path / "detections" / part.name).num_rows == 0
