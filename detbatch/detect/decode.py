"""Decode stage: encoded image bytes -> RGB pixels, on CPU, one Ray task per batch.

A row that cannot be decoded (corrupt, truncated, empty, not an image, unreadable) keeps flowing with
``status="error"`` and a message, so that it is recorded in the output instead of stopping the job.

Pixels travel as raw bytes (``pixels``: uint8, H×W×3, row-major) with ``width``/``height`` beside
them: a plain Arrow binary column, no tensor extension types. EXIF orientation is *not* applied,
matching torchvision.io and COCO, whose boxes refer to the stored pixel grid.
"""

from __future__ import annotations

import io
import numpy as np
import pyarrow as pa


def decode_image(data: bytes | None) -> tuple[np.ndarray | None, str | None]:
    """``(H×W×3 uint8 array, None)`` or ``(None, reason)``."""
    from PIL import Image, UnidentifiedImageError

    if data is None:
        return None, "no data"
    if len(data) == 0:
        return None, "empty file"
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # decode now: a truncated file fails here, not later in the detector
            rgb = img.convert("RGB")
        return np.asarray(rgb), None
    except UnidentifiedImageError:
        return None, "not an image (unrecognised format)"
    except Image.DecompressionBombError as e:
        return None, f"image too large: {e}"
    except (OSError, SyntaxError, ValueError) as e:
        return None, f"corrupt image: {e}"


DECODED_SCHEMA = pa.schema(
    [
        ("unit", pa.int64()),
        ("index", pa.int64()),
        ("last", pa.bool_()),
        ("uri", pa.string()),
        ("image_id", pa.int64()),
        ("pixels", pa.binary()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("status", pa.string()),
        ("error", pa.string()),
    ]
)


def decode_batch(batch: dict[str, np.ndarray]) -> pa.Table:
    """Ray Data batch of read rows (``data``, ``error``, ...) -> rows of :data:`DECODED_SCHEMA`."""
    n = len(batch["uri"])
    pixels, widths, heights, status, errors = [], np.zeros(n, np.int32), np.zeros(n, np.int32), [], []
    for i in range(n):
        error = batch["error"][i]
        array = None
        if error is None:
            array, error = decode_image(batch["data"][i])
        if array is None:
            pixels.append(b"")
            status.append("error")
            errors.append(error)
        else:
            heights[i], widths[i] = array.shape[:2]
            pixels.append(array.tobytes())
            status.append("ok")
            errors.append(None)
    columns = {k: batch[k] for k in ("unit", "index", "last", "uri", "image_id")}
    columns.update(pixels=pixels, width=widths, height=heights, status=status, error=errors)
    return pa.Table.from_pydict(columns, schema=DECODED_SCHEMA)
