"""Small encoded images for tests."""

from __future__ import annotations

import io

from PIL import Image


def png_bytes(color=(255, 0, 0), size=(20, 10), mode="RGB") -> bytes:
    """A PNG of one ``color``, ``size`` = (width, height), in PIL ``mode``."""
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()
