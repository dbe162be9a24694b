"""Object storage: one fsspec filesystem per URI, S3-compatible endpoints included.

Every read and write in detbatch goes through :func:`filesystem`, so that a custom S3 endpoint
(MinIO, Ceph, moto) given the standard way, ``AWS_ENDPOINT_URL``, works everywhere. pyarrow's own
S3 client ignores that variable, which is why Parquet I/O is handed these fsspec filesystems too.

URIs are fsspec URIs (``s3://bucket/key``, ``gs://bucket/key``, ``file:///abs``) or plain local
paths. Functions that take a ``uri`` and return a path return the filesystem's own path form
(``bucket/key`` for object stores, an absolute path locally), ready for ``fs.open(path)``.
"""

from __future__ import annotations

import os
import posixpath
from typing import TYPE_CHECKING, Any

from detbatch.errors import DetbatchError

if TYPE_CHECKING:
    import fsspec


class StorageError(DetbatchError):
    """A URI that cannot be read or written, with the reason and what to check."""


def protocol_of(uri: str) -> str:
    """``"s3"`` for ``s3://b/k``, ``"file"`` for plain paths and ``file://`` URIs."""
    if "://" in uri:
        return uri.split("://", 1)[0].lower()
    return "file"


def storage_options(protocol: str) -> dict[str, Any]:
    """Options for fsspec's filesystem of ``protocol`` taken from the standard environment.

    S3: ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) selects an S3-compatible endpoint;
    credentials come from botocore's usual chain (``AWS_ACCESS_KEY_ID``, profiles, instance roles).
    """
    if protocol in ("s3", "s3a"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        options: dict[str, Any] = {}
        if endpoint:
            options["endpoint_url"] = endpoint
        return options
    return {}


def filesystem(uri: str) -> "fsspec.AbstractFileSystem":
    """The fsspec filesystem that serves ``uri`` (cached per protocol and options by fsspec)."""
    import fsspec

    protocol = protocol_of(uri)
    try:
        return fsspec.filesystem(protocol, **storage_options(protocol))
    except (ImportError, ValueError) as e:
        raise StorageError(
            f"{uri}: no filesystem for protocol {protocol!r} ({e}); install its fsspec "
            f"package (s3fs for s3://, gcsfs for gs://, adlfs for az://)"
        ) from e


def resolve(uri: str) -> tuple["fsspec.AbstractFileSystem", str]:
    """``(filesystem, path)`` for ``uri``; ``path`` is what the filesystem's methods take."""
    fs = filesystem(uri)
    if protocol_of(uri) == "file":
        path = uri[len("file://") :] if uri.startswith("file://") else uri
        return fs, os.path.abspath(os.path.expanduser(path))
    from fsspec.core import url_to_fs

    _, path = url_to_fs(uri, **storage_options(protocol_of(uri)))
    return fs, path.rstrip("/")


def to_uri(fs: "fsspec.AbstractFileSystem", path: str) -> str:
    """The URI of a filesystem path: the inverse of :func:`resolve`."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        return path
    return f"{protocol}://{path}"


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI with ``/`` (also for local paths)."""
    return posixpath.join(uri.rstrip("/"), *parts) if "://" in uri else os.path.join(uri, *parts)


def describe_error(uri: str, error: BaseException) -> str:
    """A one-line reason for a failed storage call, with the setting to check."""
    text = f"{type(error).__name__}: {error}".strip()
    if protocol_of(uri) in ("s3", "s3a"):
        endpoint = storage_options("s3").get("endpoint_url", "AWS's default endpoint")
        hint = f"check the bucket name, AWS credentials / AWS_PROFILE, and AWS_ENDPOINT_URL (now: {endpoint})"
    else:
        hint = "check that the path exists and is readable"
    return f"{uri}: {text} ({hint})"


def check_readable(uri: str) -> None:
    """Raise :class:`StorageError` unless ``uri`` (a file or a prefix) exists and can be listed."""
    fs, path = resolve(uri)
    try:
        exists = fs.exists(path)
    except Exception as e:  # botocore/aiohttp raise many types; all mean "cannot reach"
        raise StorageError(describe_error(uri, e)) from e
    if not exists:
        raise StorageError(f"{uri}: no such file or prefix (check the URI; listing its parent may help)")


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open(path, "rb") as f:
        return f.read()


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` to ``uri`` whole: an object PUT on object stores, rename-into-place locally.

    A reader never sees a partial file, which is what lets a rerun trust every file it finds.
    """
    fs, path = resolve(uri)
    if protocol_of(uri) == "file":
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))
