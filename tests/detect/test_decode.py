"""Decoding: bytes -> RGB pixels, or an error row with the reason."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from detbatch.detect.decode import (
    ALPHA_BACKGROUND,
    ENCODED,
    decode_batch,
    decode_image,
    decode_jpegs,
    decode_sample,
    rgb_pixels,
)
from tests.helpers.images import jpeg_bytes, png_bytes


def _encoded(img: Image.Image, format: str = "PNG", **save) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=format, **save)
    return buf.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A PNG of just a signature, an 8-bit grey IHDR of that size, and IEND: no pixels."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + chunk(b"IEND", b"")


def _decoded(data: bytes) -> np.ndarray:
    array, error = decode_image(data)
    assert error is None, error
    assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3
    return array


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


# 16-bit grey keeps its high byte (v >> 8): 257·k -> k, as Pillow keeps of 16-bit RGB PNGs.
SIXTEEN_BIT = np.array([[0, 255, 256, 257 * 100, 32768, 65535]], np.uint16)
SIXTEEN_BIT_AS_8 = np.array([[0, 0, 1, 100, 128, 255]], np.uint8)


@pytest.mark.parametrize("mode, format", [("I;16", "PNG"), ("I;16", "TIFF"), ("I;16B", "TIFF"), ("I", "TIFF")])
def test_16_bit_grey_scales_to_8_bits(mode, format):
    if mode == "I;16B":
        img = Image.frombytes(mode, (6, 1), SIXTEEN_BIT.astype(">u2").tobytes())
    else:
        img = Image.fromarray(SIXTEEN_BIT.astype(np.int32 if mode == "I" else np.uint16))
    data = _encoded(img, format)
    assert Image.open(io.BytesIO(data)).mode == mode  # the file really is in that mode
    array = _decoded(data)
    assert (array == SIXTEEN_BIT_AS_8[..., None]).all()  # grey: R = G = B


def test_32_bit_integers_are_clipped_to_16_bits_first():
    img = Image.fromarray(np.array([[-5, 70000, 65535, 25600]], np.int32))
    assert rgb_pixels(img)[0, :, 0].tolist() == [0, 255, 255, 100]


@pytest.mark.parametrize("values, expected", [
    ([0.0, 0.25, 0.5, 1.0], [0, 64, 128, 255]),  # within [0, 1]: v · 255, rounded
    ([0.0, 0.5, 2.0, 4.0], [0, 32, 128, 255]),  # beyond: min-max
    ([-1.0, 0.0, 0.5, 1.0], [0, 128, 191, 255]),  # negative: min-max, nothing clipped away
    ([np.nan, 0.5, np.inf, 1.0], [0, 128, 0, 255]),  # non-finite: 0, the rest by the rule
    ([3.0, 3.0, 3.0, 3.0], [0, 0, 0, 0]),  # constant outside [0, 1]: no range to stretch
])  # fmt: skip
def test_float_images_follow_the_documented_rule(values, expected):
    data = _encoded(Image.fromarray(np.array([values], np.float32)), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    assert _decoded(data)[0, :, 0].tolist() == expected


def _blend(color, alpha):
    """The documented composite of one colour at ``alpha`` on ALPHA_BACKGROUND."""
    return [round((c * alpha + b * (255 - alpha)) / 255) for c, b in zip(color, ALPHA_BACKGROUND)]


def test_rgba_is_composited_on_the_background_not_shown_with_its_hidden_colour():
    rgba = np.array([[[200, 10, 10, 0], [200, 10, 10, 255], [200, 10, 10, 128], [0, 0, 0, 0]]], np.uint8)
    array = _decoded(_encoded(Image.fromarray(rgba, "RGBA")))
    assert array[0].tolist() == [list(ALPHA_BACKGROUND), [200, 10, 10], _blend((200, 10, 10), 128), list(ALPHA_BACKGROUND)]
    opaque = rgba.copy()
    opaque[..., 3] = 255  # an alpha channel that hides nothing: the colours as stored
    assert _decoded(_encoded(Image.fromarray(opaque, "RGBA")))[0].tolist() == opaque[0, :, :3].tolist()


def test_grey_with_alpha_is_composited():
    la = np.array([[[0, 0], [0, 255], [100, 51]]], np.uint8)
    array = _decoded(_encoded(Image.fromarray(la, "LA")))
    assert array[0].tolist() == [list(ALPHA_BACKGROUND), [0, 0, 0], _blend((100, 100, 100), 51)]


def _palette_image(transparency: int | None) -> Image.Image:
    img = Image.fromarray(np.array([[0, 1, 2]], np.uint8), "P")
    img.putpalette([10, 20, 30, 200, 100, 50, 0, 0, 0] + [0] * (256 - 3) * 3)
    if transparency is not None:
        img.info["transparency"] = transparency
    return img


@pytest.mark.parametrize("format", ["PNG", "GIF"])
def test_palette_images_with_and_without_a_transparent_entry(format):
    assert _decoded(_encoded(_palette_image(None), format))[0].tolist() == [[10, 20, 30], [200, 100, 50], [0, 0, 0]]
    data = _encoded(_palette_image(1), format, transparency=1)
    assert _decoded(data)[0].tolist() == [[10, 20, 30], list(ALPHA_BACKGROUND), [0, 0, 0]]


def test_palette_with_alpha_and_colour_keys_are_composited():
    pa_img = _palette_image(None).convert("PA")  # PA: palette index + alpha (Pillow cannot save it as PNG)
    pa_img.putalpha(Image.fromarray(np.array([[255, 0, 255]], np.uint8)))
    assert rgb_pixels(pa_img)[0].tolist() == [[10, 20, 30], list(ALPHA_BACKGROUND), [0, 0, 0]]
    # PNG tRNS on RGB / L: one colour is transparent
    rgb = Image.fromarray(np.array([[[1, 2, 3], [9, 9, 9]]], np.uint8), "RGB")
    assert _decoded(_encoded(rgb, transparency=(1, 2, 3)))[0].tolist() == [list(ALPHA_BACKGROUND), [9, 9, 9]]
    grey = Image.fromarray(np.array([[7, 8]], np.uint8), "L")
    assert _decoded(_encoded(grey, transparency=7))[0].tolist() == [list(ALPHA_BACKGROUND), [8, 8, 8]]


def test_grey_bilevel_and_cmyk_convert_to_rgb():
    grey = Image.fromarray(np.array([[0, 77, 255]], np.uint8), "L")
    assert _decoded(_encoded(grey))[0].tolist() == [[0, 0, 0], [77, 77, 77], [255, 255, 255]]
    bilevel = Image.fromarray(np.array([[False, True]]))
    assert _decoded(_encoded(bilevel))[0].tolist() == [[0, 0, 0], [255, 255, 255]]
    cmyk = Image.new("CMYK", (3, 1))
    cmyk.putdata([(0, 0, 0, 0), (255, 0, 0, 0), (0, 0, 0, 255)])  # white, cyan, black
    for format in ("JPEG", "TIFF"):
        data = _encoded(cmyk, format, **({"quality": 100} if format == "JPEG" else {}))
        assert Image.open(io.BytesIO(data)).mode == "CMYK"
        got = _decoded(data)[0].astype(int)
        assert (abs(got - [[255, 255, 255], [0, 255, 255], [0, 0, 0]]) <= 3).all(), (format, got.tolist())


@pytest.mark.parametrize("format", ["GIF", "WEBP", "PNG"])
def test_animations_give_their_first_frame(format):
    frames = [Image.new("RGB", (8, 8), color) for color in ((250, 0, 0), (0, 0, 250), (0, 250, 0))]
    data = _encoded(frames[0], format, save_all=True, append_images=frames[1:], duration=100,
                    **({"lossless": True} if format == "WEBP" else {}))
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    array = _decoded(data)
    assert (abs(array.astype(int) - [250, 0, 0]) <= 4).all()


def test_pixel_cap_is_checked_from_the_header_before_decoding():
    data = png_bytes(size=(40, 30))
    assert decode_image(data, max_pixels=1200)[1] is None  # at the cap: fine
    array, error = decode_image(data, max_pixels=1199)
    assert array is None and error == "image of 40x30 = 1200 pixels exceeds input.max_pixels=1199"
    # 57 bytes whose header claims 12000 x 10000 (120 Mpx, 360 MB decoded; under Pillow's own ~179 Mpx
    # limit): refused from the header. There are no pixel data at all, so any attempt to decode would
    # fail as corrupt instead.
    with pytest.warns(Image.DecompressionBombWarning):  # Pillow's warning at ~89 Mpx, from Image.open
        array, error = decode_image(_png_header(12000, 10000), max_pixels=100_000_000)
    assert array is None and error == "image of 12000x10000 = 120000000 pixels exceeds input.max_pixels=100000000"
    with pytest.warns(Image.DecompressionBombWarning):
        assert decode_image(_png_header(12000, 10000))[1].startswith("corrupt image")
    assert decode_sample(data, None, max_pixels=10)[1].endswith("exceeds input.max_pixels=10")


def test_decode_batch_keeps_bad_rows():
    batch = {
        "unit": np.array([0, 0, 0]), "index": np.array([0, 1, 2]), "last": np.array([False, False, True]),
        "uri": np.array(["a", "b", "c"], object), "image_id": np.array([1, 2, 3]),
        "data": np.array([png_bytes(size=(4, 3)), b"bad", png_bytes(size=(40, 30))], object),
        "error": np.array([None, None, None], object),
    }
    table = decode_batch(batch, max_pixels=100).to_pydict()
    assert table["status"] == ["ok", "error", "error"] and (table["width"], table["height"]) == ([4, 0, 0], [3, 0, 0])
    assert table["pixels"][0] == bytes([255, 0, 0]) * 12 and table["error"][0] is None
    assert table["error"][2] == "image of 40x30 = 1200 pixels exceeds input.max_pixels=100"


def test_decode_sample_carries_the_read_error():
    assert decode_sample(png_bytes(), "file not found") == (None, "file not found")
    array, error = decode_sample(png_bytes(size=(4, 3)), None)
    assert error is None and array.shape == (3, 4, 3)
    assert decode_sample(b"", None) == (None, "empty file")


# --- inference.decode: gpu -------------------------------------------------------------------------------

_JPEG = jpeg_bytes(seed=1)
# Files of every route of the GPU decode: (name, bytes, left undecoded for the actor).
_ROUTED = [
    ("rgb", _JPEG, True),
    ("grey", jpeg_bytes(mode="L", seed=2), True),
    ("progressive 4:4:4", jpeg_bytes(seed=3, progressive=True, subsampling=0), True),
    ("cmyk", jpeg_bytes(mode="CMYK", seed=4), False),  # nvJPEG has no Adobe CMYK: decoded on CPU
    ("png", png_bytes(size=(9, 7)), False),
    ("truncated", _JPEG[: len(_JPEG) // 2], False),  # no EOI marker: PIL's "truncated" error row
    ("trailing bytes", _JPEG + b"\x00" * 16, False),
    ("too large", jpeg_bytes(size=(200, 100), seed=5), False),  # over max_pixels, from the header
    ("not an image", b"GIF89a nonsense", False),
]


def _batch(datas: list[bytes]) -> dict[str, np.ndarray]:
    n = len(datas)
    return {"unit": np.zeros(n, np.int64), "index": np.arange(n), "last": np.zeros(n, bool),
            "uri": np.array([f"f{i}" for i in range(n)], object), "image_id": np.arange(n),
            "data": np.array(datas, object), "error": np.array([None] * n, object)}


def test_keep_jpeg_leaves_plain_jpegs_undecoded_and_decodes_the_rest_as_before():
    batch = _batch([data for _, data, _ in _ROUTED])
    cpu = decode_batch(batch, max_pixels=10_000).to_pydict()
    kept = decode_batch(batch, max_pixels=10_000, keep_jpeg=True).to_pydict()
    for i, (name, data, undecoded) in enumerate(_ROUTED):
        if undecoded:
            assert (kept["status"][i], kept["pixels"][i], kept["error"][i]) == (ENCODED, data, None), name
            assert (kept["width"][i], kept["height"][i]) == (cpu["width"][i], cpu["height"][i]), name  # the header's
        else:
            assert {k: v[i] for k, v in kept.items()} == {k: v[i] for k, v in cpu.items()}, name
    assert cpu["status"][3:5] == ["ok", "ok"]
    assert cpu["error"][5].startswith("corrupt image: image file is truncated")
    assert cpu["error"][7] == "image of 200x100 = 20000 pixels exceeds input.max_pixels=10000"


def test_decode_jpegs_gives_the_cpu_decoders_pixels_and_errors():
    """torchvision's decode_jpeg (here on CPU, as nvJPEG on a GPU) in one batch; a file it refuses sends the
    batch to one-by-one decoding, and that file to decode_image: the same error as on the CPU path."""
    header_only = _JPEG[: _JPEG.index(b"\xff\xda")] + b"\xff\xd9"  # passes the header checks, then has no scan: both decoders fail
    datas = [data for _, data, undecoded in _ROUTED if undecoded]
    for batch in (datas, [*datas[:2], header_only, datas[2]]):
        decoded = decode_jpegs(batch, "cpu")
        assert len(decoded) == len(batch)
        for data, (pixels, error) in zip(batch, decoded):
            expected, expected_error = decode_image(data)
            if expected is None:
                assert pixels is None and error == expected_error and error.startswith("corrupt image"), error
                continue
            assert error is None and not isinstance(pixels, np.ndarray)  # torchvision's [3, H, W], not the fallback's
            np.testing.assert_array_equal(pixels.permute(1, 2, 0).numpy(), expected)  # libjpeg-turbo either way: bit-identical


def test_decode_batch_keeps_no_decoded_image_alive():
    # pyarrow 26 keeps every buffer-protocol object that it converts to binary alive: pixels handed to it as
    # memoryviews were never freed, ~4 KB per 32x32 image and ~1 MB per COCO image in each decode worker
    # (docs/benchmarks.md, "One million images end to end"). 800 images of 256x256 would leak 150 MiB.
    from detbatch.runtime import proc_status_mib

    n = 8
    batch = {"unit": np.zeros(n, np.int64), "index": np.arange(n), "last": np.zeros(n, bool),
             "uri": np.array([f"in/{i}.png" for i in range(n)], dtype=object), "image_id": np.arange(n),
             "data": np.array([png_bytes((10, 200, 30), size=(256, 256))] * n, dtype=object),
             "error": np.array([None] * n, dtype=object)}
    assert decode_batch(batch)["status"].to_pylist() == ["ok"] * n
    before = proc_status_mib("RssAnon")
    for _ in range(100):
        decode_batch(batch)
    assert proc_status_mib("RssAnon") - before < 40
