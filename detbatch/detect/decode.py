"""Decode stage: encoded image bytes -> RGB pixels, on CPU, one Ray task per batch; and the JPEG decode in
the detector actors (``inference.decode: gpu``).

A row that cannot be decoded (corrupt, truncated, empty, not an image, unreadable, over
``input.max_pixels``) keeps flowing with ``status="error"`` and a message, so that it is recorded in the
output instead of stopping the job.

Pixels travel as raw bytes (``pixels``: uint8, H×W×3, row-major) with ``width``/``height`` beside
them: a plain Arrow binary column, no tensor extension types. EXIF orientation is *not* applied,
matching torchvision.io and COCO, whose boxes refer to the stored pixel grid. How each PIL pixel mode
becomes 8-bit RGB (16-bit, float, alpha, palettes, CMYK, animations) is :func:`rgb_pixels`, and
docs/data.md ("Pixels").

With ``inference.decode: gpu`` the decode task reads every file's header (the caps apply as before) and
decodes all but plain JPEGs as above; a plain JPEG (baseline or progressive, RGB or grey, ending in its EOI
marker) leaves it undecoded, as status :data:`ENCODED`, for :func:`decode_jpegs` in the actor, which decodes
a mini-batch at once with ``torchvision.io.decode_jpeg`` on the actor's device and falls back to
:func:`decode_image` for any image that the batch decode fails on, so that a file gives the same pixels or
the same error row either way (docs/detect.md, "JPEG decode on the GPU").
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from detbatch.detect.read import ROW_ID_FIELDS

if TYPE_CHECKING:
    import torch
    from PIL import Image

# Where a pixel is (partly) transparent its colour is blended with this one, as browsers and most
# viewers show such images on a white page. The colour stored under a transparent pixel is arbitrary
# (often black, or whatever was erased) and must not reach the detector as if it were visible.
ALPHA_BACKGROUND = (255, 255, 255)

# Modes with an alpha channel (La and RGBa are premultiplied; PIL's RGBA conversion undoes that).
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
# Modes whose transparency is a palette entry or one colour key in ``info["transparency"]`` (GIF, PNG tRNS).
_KEYED_MODES = frozenset({"P", "L", "RGB"})
# One 16-bit (or 32-bit integer) grey channel: 16-bit PNGs and TIFFs.
_WIDE_GREY_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def rgb_pixels(img: "Image.Image") -> np.ndarray:
    """A loaded PIL image (its current frame) -> uint8 H×W×3 RGB, C-contiguous.

    - alpha (``RGBA``, ``LA``, ``PA``; ``P``/``L``/``RGB`` with a ``transparency`` key): composited on
      :data:`ALPHA_BACKGROUND`, ``out = round((c·a + bg·(255 - a)) / 255)``;
    - 16-bit grey (``I;16``, ``I;16B``, ...): ``v >> 8``, the high byte, which is what Pillow itself keeps
      of 16-bit RGB PNGs, so grey and colour 16-bit files darken alike; ``I`` (32-bit) is clipped to
      0..65535 first;
    - float (``F``): ``round(v · 255)`` when every finite value is in [0, 1], else min-max stretched to
      0..255 (a constant image outside [0, 1]: 0); NaN and ±inf become 0;
    - everything else (``L``, ``1``, ``P``, ``CMYK``, ``YCbCr``, ...): PIL's conversion to RGB.
    """
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return np.asarray(img)  # the common case: no conversion, no copy beyond PIL's own
    if mode in _ALPHA_MODES or (mode in _KEYED_MODES and "transparency" in img.info):
        return _composite(np.asarray(img.convert("RGBA")))
    if mode in _WIDE_GREY_MODES:
        return _grey_to_rgb((np.clip(np.asarray(img), 0, 65535) >> 8).astype(np.uint8))
    if mode == "F":
        return _grey_to_rgb(_float_to_uint8(np.asarray(img)))
    return np.asarray(img.convert("RGB"))


def _composite(rgba: np.ndarray) -> np.ndarray:
    """uint8 H×W×4 -> H×W×3 on :data:`ALPHA_BACKGROUND`, rounded to nearest (uint16 holds 255·255 + 127)."""
    alpha = rgba[..., 3:]
    if alpha.min() == 255:  # an alpha channel that hides nothing (common in screenshots): skip the maths
        return np.ascontiguousarray(rgba[..., :3])
    a = alpha.astype(np.uint16)
    blended = rgba[..., :3] * a + np.asarray(ALPHA_BACKGROUND, np.uint16) * (255 - a)
    return ((blended + 127) // 255).astype(np.uint8)


def _float_to_uint8(values: np.ndarray) -> np.ndarray:
    """Float grey -> uint8 by the rule in :func:`rgb_pixels`."""
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, np.uint8)
    lo, hi = float(values[finite].min()), float(values[finite].max())
    if 0.0 <= lo and hi <= 1.0:
        scaled = values * 255.0
    elif hi > lo:
        scaled = (values - lo) * (255.0 / (hi - lo))
    else:
        scaled = np.zeros(values.shape, np.float32)
    return np.where(finite, np.rint(scaled), 0).astype(np.uint8)


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2)


# Status of a decoded row whose ``pixels`` still hold the file's JPEG bytes (``inference.decode: gpu``),
# width and height from its header: the actor decodes it (:func:`decode_jpegs`). Never in the output.
ENCODED = "encoded"

# The JPEGs that travel undecoded: PIL modes that nvJPEG and torchvision's decode_jpeg turn into RGB as PIL
# does (CMYK and YCCK need Adobe's inversion, which nvJPEG lacks: those are decoded on CPU).
DEFERRED_JPEG_MODES = frozenset({"RGB", "L"})
_JPEG_EOI = b"\xff\xd9"


class TooLarge(str):
    """A reason of :func:`decode_image` that says the image is over a size cap (``input.max_pixels``, or
    Pillow's own), not that it is broken: a ``str`` like the others, which a caller may tell apart
    (``detbatch serve`` answers it 413, not 400)."""


def decode_image(data: bytes | None, max_pixels: int | None = None) -> tuple[np.ndarray | None, str | None]:
    """``(H×W×3 uint8 array, None)`` or ``(None, reason)``; the first frame of an animation.

    ``max_pixels``: images whose width × height, read from the header before anything is decoded, is
    larger are refused (``input.max_pixels``); None: no cap but Pillow's own (~179 Mpx).
    """
    pixels, error = decode_or_keep_jpeg(data, max_pixels, keep_jpeg=False)
    assert not isinstance(pixels, tuple)
    return pixels, error


def decode_or_keep_jpeg(
    data: bytes | None, max_pixels: int | None, keep_jpeg: bool
) -> tuple[np.ndarray | tuple[int, int] | None, str | None]:
    """:func:`decode_image`, except that with ``keep_jpeg`` a plain JPEG (:data:`DEFERRED_JPEG_MODES`, ending
    in its EOI marker, so that a truncated file is decoded here and fails with PIL's message) is not decoded:
    ``((width, height), None)``, its header's size, after the ``max_pixels`` check."""
    from PIL import Image, UnidentifiedImageError

    if data is None:
        return None, "no data"
    if len(data) == 0:
        return None, "empty file"
    try:
        with Image.open(io.BytesIO(data)) as img:  # reads the header only
            width, height = img.size
            if max_pixels is not None and width * height > max_pixels:
                return None, TooLarge(f"image of {width}x{height} = {width * height} pixels exceeds "
                                      f"input.max_pixels={max_pixels}")
            if keep_jpeg and img.format == "JPEG" and img.mode in DEFERRED_JPEG_MODES and data.endswith(_JPEG_EOI):
                return (width, height), None
            img.load()  # decode now: a truncated file fails here, not later in the detector
            try:
                return rgb_pixels(img), None
            except ValueError as e:  # PIL knows no conversion of this mode to RGB
                return None, f"unsupported pixel mode {img.mode}: {e}"
    except UnidentifiedImageError:
        return None, "not an image (unrecognised format)"
    except Image.DecompressionBombError as e:
        return None, TooLarge(f"image too large: {e}")
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        return None, f"corrupt image: {e}"
    except Exception as e:  # a crafted file makes some plugins raise anything (struct.error, IndexError):
        return None, f"corrupt image: {type(e).__name__}: {e}"  # still this image's failure, not the job's


def decode_sample(
    data: bytes | None, error: str | None, max_pixels: int | None = None
) -> tuple[np.ndarray | None, str | None]:
    """A read sample (its bytes, or the reason they could not be read) -> ``(H×W×3 uint8 array, None)``,
    or ``(None, reason)``: the read's reason when there is one, else the decoder's (:func:`decode_image`)."""
    if error is not None:
        return None, error
    return decode_image(data, max_pixels)


# Rows of the decode stage: the read row's id columns, then the pixels (see the module docstring); an
# error row has ``status="error"``, empty ``pixels`` and width = height = 0; an :data:`ENCODED` row holds the
# JPEG file's bytes in ``pixels``.
DECODED_SCHEMA = pa.schema(
    [*ROW_ID_FIELDS, pa.field("pixels", pa.binary()), pa.field("width", pa.int32()), pa.field("height", pa.int32()),
     pa.field("status", pa.string()), pa.field("error", pa.string())]
)


def decode_batch(batch: dict[str, np.ndarray], max_pixels: int | None = None, keep_jpeg: bool = False) -> pa.Table:
    """Ray Data batch of read rows (``data``, ``error``, ...) -> rows of :data:`DECODED_SCHEMA`.
    ``max_pixels``, ``keep_jpeg``: see :func:`decode_or_keep_jpeg` (a kept JPEG: status :data:`ENCODED`)."""
    n = len(batch["uri"])
    pixels, widths, heights, status, errors = [], np.zeros(n, np.int32), np.zeros(n, np.int32), [], []
    for i in range(n):
        error = batch["error"][i]
        array, error = (None, error) if error is not None else decode_or_keep_jpeg(batch["data"][i], max_pixels, keep_jpeg)
        if array is None:
            pixels.append(b"")
            status.append("error")
            errors.append(error)
        elif isinstance(array, tuple):  # a JPEG left for the actor: its bytes, its header's size
            widths[i], heights[i] = array
            pixels.append(batch["data"][i])
            status.append(ENCODED)
            errors.append(None)
        else:
            heights[i], widths[i] = array.shape[:2]
            # bytes, not the array's memoryview: pyarrow 26 keeps every buffer-protocol object it converts
            # to binary alive, so each decoded image leaked (~1 MB a COCO image, in every decode worker).
            # The second copy costs ~0.1 ms for a COCO image, against ~5 ms to decode it.
            pixels.append(array.tobytes())
            status.append("ok")
            errors.append(None)
    columns = {f.name: batch[f.name] for f in ROW_ID_FIELDS}
    columns.update(pixels=pixels, width=widths, height=heights, status=status, error=errors)
    return pa.Table.from_pydict(columns, schema=DECODED_SCHEMA)


def decode_jpegs(
    data: list[bytes], device: str, max_pixels: int | None = None
) -> list[tuple["torch.Tensor | np.ndarray | None", str | None]]:
    """JPEG files (rows of status :data:`ENCODED`) -> per file ``(pixels, None)`` or ``(None, reason)``.

    ``pixels``: uint8 [3, H, W] on ``device`` when ``torchvision.io.decode_jpeg`` decoded it there, all of
    ``data`` in one batched call (nvJPEG on CUDA); else uint8 H×W×3 numpy from :func:`decode_image`, the CPU
    decoder, which is what a file that the batch call fails on gets (alone: one bad file does not send the
    others back to the CPU), so that its pixels or its error are the CPU path's.
    """
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    tensors = [torch.frombuffer(bytearray(blob), dtype=torch.uint8) for blob in data]
    try:
        return [(t, None) for t in decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)]
    except Exception:  # one file the batch call cannot decode fails it whole: each on its own
        pass
    results: list[tuple[torch.Tensor | np.ndarray | None, str | None]] = []
    for blob, tensor in zip(data, tensors):
        try:
            results.append((decode_jpeg(tensor, mode=ImageReadMode.RGB, device=device), None))
        except Exception:  # nvJPEG refuses what libjpeg takes (some progressive or odd-sampled files)
            results.append(decode_image(blob, max_pixels))
    return results
