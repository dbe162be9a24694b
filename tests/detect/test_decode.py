"""Decoding: bytes -> RGB pixels, or an error row with the reason."""

import io

import numpy as np
import pytest
from PIL import Image

from detbatch.detect.decode import decode_batch, decode_image, decode_sample
from tests.helpers.images import png_bytes


@pytest.mark.parametrize(
    "data, message",
    [(b"", "empty file"), (b"hello, not an image", "not an image"), (None, "no data")],
)
def test_decode_errors(data, message):
    array, error = decode_image(data)
    assert array is None and message in error


def test_decode_truncated_jpeg():
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(buf, format="JPEG")
    array, error = decode_image(buf.getvalue()[:400])
    assert array is None and "corrupt" in error


@pytest.mark.parametrize("mode, color", [("L", 128), ("RGBA", (1, 2, 3, 4)), ("P", 3)])
def test_decode_converts_to_rgb(mode, color):
    array, error = decode_image(png_bytes(color, (7, 5), mode))
    assert error is None and array.shape == (5, 7, 3) and array.dtype == np.uint8


def test_decode_batch_keeps_bad_rows():
    batch = {
        "unit": np.array([0, 0]), "index": np.array([0, 1]), "last": np.array([False, True]),
        "uri": np.array(["a", "b"], object), "image_id": np.array([1, 2]),
        "data": np.array([png_bytes(size=(4, 3)), b"bad"], object), "error": np.array([None, None], object),
    }
    table = decode_batch(batch).to_pydict()
    assert table["status"] == ["ok", "error"] and (table["width"], table["height"]) == ([4, 0], [3, 0])
    assert len(table["pixels"][0]) == 4 * 3 * 3 and table["error"][0] is None


def test_decode_sample_carries_the_read_error():
    assert decode_sample(png_bytes(), "file not found") == (None, "file not found")
    array, error = decode_sample(png_bytes(size=(4, 3)), None)
    assert error is None and array.shape == (3, 4, 3)
    assert decode_sample(b"", None) == (None, "empty file")
