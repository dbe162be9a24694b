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

from detbatch.detect.read import ROW_ID_FIELDS


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


def decode_sample(data: bytes | None, error: str | None) -> tuple[np.ndarray | None, str | None]:
    """A read sample (its bytes, or the reason they could not be read) -> ``(H×W×3 uint8 array, None)``,
    or ``(None, reason)``: the read's reason when there is one, else the decoder's (:func:`decode_image`)."""
    if error is not None:
        return None, error
    return decode_image(data)


# Rows of the decode stage: the read row's id columns, then the pixels (see the module docstring); an
# error row has ``status="error"``, empty ``pixels`` and width = height = 0.
DECODED_SCHEMA = pa.schema(
    [*ROW_ID_FIELDS, pa.field("pixels", pa.binary()), pa.field("width", pa.int32()), pa.field("height", pa.int32()),
     pa.field("status", pa.string()), pa.field("error", pa.string())]
)


def decode_batch(batch: dict[str, np.ndarray]) -> pa.Table:
    """Ray Data batch of read rows (``data``, ``error``, ...) -> rows of :data:`DECODED_SCHEMA`."""
    n = len(batch["uri"])
    pixels, widths, heights, status, errors = [], np.zeros(n, np.int32), np.zeros(n, np.int32), [], []
    for i in range(n):
        array, error = decode_sample(batch["data"][i], batch["error"][i])
        if array is None:
            pixels.append(b"")
            status.append("error")
            errors.append(error)
        else:
            heights[i], widths[i] = array.shape[:2]
            pixels.append(array.tobytes())
            status.append("ok")
            errors.append(None)
    columns = {f.name: batch[f.name] for f in ROW_ID_FIELDS}
    columns.update(pixels=pixels, width=widths, height=heights, status=status, error=errors)
    return pa.Table.from_pydict(columns, schema=DECODED_SCHEMA)
