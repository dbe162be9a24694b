"""A ``POST /detect`` request -> the image's pixels and the request's options, or the HTTP error that answers it.

Two forms of request:

- an image body (JPEG, PNG, WebP, ... anything the decoder reads), options in the query string:
  ``POST /detect?score_threshold=0.5``;
- ``Content-Type: application/json``, ``{"uri": "s3://bucket/x.jpg", "score_threshold": 0.5}``, for an image
  in storage under one of ``input.uri_prefixes``.

Every refusal is a :class:`RequestError` with its status and a message that names the value and the fix:
400 a body that is not an image (the decoder's reason, as detect records it), not JSON, or a file that cannot
be read; 403 a URI outside the allowed prefixes; 404 a URI that names nothing; 413 over ``input.max_bytes``
(from ``Content-Length`` or the file's size, before anything is read; a body without a length is read up
to the cap and no further) or ``input.max_pixels`` (from the image header, before it is decoded); 422 an
unknown or invalid option.

Plain functions of bytes, headers and query strings: :mod:`detbatch.serve.app` adapts Starlette's request.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from typing import Any, AsyncIterator, Mapping

import numpy as np

from detbatch.detect.decode import TooLarge, decode_image
from detbatch.detect.read import over_max_bytes, read_file
from detbatch.errors import DetbatchError

JSON_TYPE = "application/json"
# The options of a request, in the query string (image body) or the JSON object (with "uri").
QUERY_FIELDS = ("score_threshold",)
JSON_FIELDS = ("uri", "score_threshold")


class RequestError(DetbatchError):
    """A request refused with HTTP ``status``; the message says why and what to send instead."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class DetectRequest:
    """What a request asks for, checked."""

    score_threshold: float | None = None
    """Keep detections scoring at least this; None: the served model's thresholds alone."""
    uri: str | None = None
    """The image in storage (a JSON request); None: the image is the body."""


def parse_query(query: Mapping[str, str]) -> DetectRequest:
    """An image body's options, from the query string."""
    _check_fields("query parameter", query, QUERY_FIELDS)
    return DetectRequest(score_threshold=_threshold(query.get("score_threshold")))


def parse_json(body: bytes) -> DetectRequest:
    """A JSON request's options: ``{"uri": ..., "score_threshold": ...}``."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(400, f"body is not JSON ({e}); send {{\"uri\": ...}} with Content-Type: {JSON_TYPE}, "
                                f"or the image itself with another Content-Type") from None
    if not isinstance(data, dict):
        raise RequestError(422, f"expected a JSON object {{\"uri\": ...}}, got a {type(data).__name__}")
    _check_fields("field", data, JSON_FIELDS)
    uri = data.get("uri")
    if not isinstance(uri, str) or not uri:
        raise RequestError(422, f"field 'uri' must be a non-empty string (the image's URI), got {uri!r}")
    return DetectRequest(score_threshold=_threshold(data.get("score_threshold")), uri=uri)


def check_threshold(request: DetectRequest, floor: float) -> None:
    """A request may raise the served model's threshold, never lower it: boxes below ``floor`` were never kept."""
    t = request.score_threshold
    if t is not None and t < floor:
        raise RequestError(422, f"score_threshold {t} is below the served model's {floor}: the model keeps no box "
                                f"under it; give at least {floor}, or leave it out")


def _check_fields(what: str, given: Mapping[str, Any], known: tuple[str, ...]) -> None:
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise RequestError(422, f"unknown {what} {unknown[0]!r}; known: {', '.join(known)}")


def _threshold(value: Any) -> float | None:
    if value is None:
        return None
    try:
        score = float(value)
    except (TypeError, ValueError):
        score = None
    if isinstance(value, bool) or score is None or not 0.0 <= score <= 1.0:
        raise RequestError(422, f"score_threshold {value!r} is not a score in [0, 1]")
    return score


def check_length(content_length: str | None, max_bytes: int | None) -> None:
    """Refuse a body whose declared length is over the cap, before any of it is read."""
    if content_length is None:
        return
    try:
        size = int(content_length)
    except ValueError:
        raise RequestError(400, f"Content-Length {content_length!r} is not a number of bytes") from None
    if error := over_max_bytes("request body", size, max_bytes):
        raise RequestError(413, f"{error}; send a smaller image")


async def read_body(chunks: AsyncIterator[bytes], max_bytes: int | None) -> bytes:
    """The body from its chunks, refused (413) as soon as it passes ``max_bytes``; the rest is never read."""
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if error := over_max_bytes("request body (read so far)", size, max_bytes):
            raise RequestError(413, f"{error}; send a smaller image")
        parts.append(chunk)
    return b"".join(parts)


def decode_request_image(data: bytes, max_pixels: int | None) -> np.ndarray:
    """uint8 H×W×3 RGB pixels of an encoded image, decoded exactly as detect decodes it."""
    if not data:
        raise RequestError(400, "empty body: send the image's bytes, or JSON {\"uri\": ...} with "
                                f"Content-Type: {JSON_TYPE}")
    pixels, reason = decode_image(data, max_pixels)
    if pixels is None:
        raise RequestError(413 if isinstance(reason, TooLarge) else 400, str(reason))
    return pixels


def read_uri(uri: str, prefixes: list[str], max_bytes: int | None) -> bytes:
    """The bytes of the image at ``uri``, which must lie under one of ``prefixes`` (``input.uri_prefixes``)."""
    from detbatch import storage

    if not prefixes:
        raise RequestError(403, f"uri {uri!r}: this server reads no URIs (input.uri_prefixes is empty); send the "
                                f"image as the body, or start serve with --allow-uri PREFIX")
    if ".." in uri.split("/") or not any(uri.startswith(p.rstrip("/") + "/") for p in prefixes):
        raise RequestError(403, f"uri {uri!r} is not under an allowed prefix ({', '.join(prefixes)}); "
                                f"send the image as the body instead")
    fs, path = storage.resolve(uri)
    try:
        size = fs.size(path)
    except FileNotFoundError:
        raise RequestError(404, f"uri {uri!r}: no such file") from None
    except Exception as e:
        raise RequestError(400, f"uri {uri!r}: {storage.describe_error(uri, e)}") from None
    if error := over_max_bytes(f"file {posixpath.basename(path)}", int(size or 0), max_bytes):
        raise RequestError(413, error)
    data, reason = read_file(uri, max_bytes)
    if data is None:
        raise RequestError(400, f"uri {uri!r}: {reason}")
    return data
