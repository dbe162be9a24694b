"""Small encoded images for tests."""

from __future__ import annotations

import io

from PIL import Image


def png_bytes(color=(255, 0, 0), size=(20, 10), mode="RGB") -> bytes:
    """A PNG of one ``color``, ``size`` = (width, height), in PIL ``mode``."""
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(size=(67, 45), mode="RGB", seed=0, **save: object) -> bytes:
    """A JPEG of seeded noise, ``size`` = (width, height), in PIL ``mode`` (RGB, L, CMYK); ``save``: PIL's
    JPEG options (``progressive=True``, ``subsampling=0``, ...)."""
    import numpy as np

    noise = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).convert(mode).save(buf, format="JPEG", **save)
    return buf.getvalue()
