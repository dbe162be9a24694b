"""Object storage: one fsspec filesystem per URI, S3-compatible endpoints included.

Every read and write in detbatch goes through :func:`filesystem`, so that a custom S3 endpoint
(MinIO, Ceph, moto) given the standard way, ``AWS_ENDPOINT_URL``, works everywhere. pyarrow's own
S3 client ignores that variable, which is why Parquet I/O is handed these fsspec filesystems too.

URIs are fsspec URIs (``s3://bucket/key``, ``gs://bucket/key``, ``file:///abs``) or plain local
paths. Functions that take a ``uri`` and return a path return the filesystem's own path form
(``bucket/key`` for object stores, an absolute path locally), ready for ``fs.open(path)``.

The module is longer than most (~410 lines) because it is one idea: every byte detbatch moves goes
through it, and so does everything that makes that safe (retries of transient faults, a reader that
survives a reset mid-stream, whole-file and exclusive writes).
"""

from __future__ import annotations

import errno
import io
import logging
import os
import posixpath
import random
import time
import uuid
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from detbatch.errors import DetbatchError
from detbatch.faults import failpoint

if TYPE_CHECKING:
    import fsspec


logger = logging.getLogger(__name__)
T = TypeVar("T")


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


# ------------------------------------------------------------------------------------------ transient faults
#
# Object stores fail transiently all the time: 503 SlowDown under load, 500 InternalError, connections
# reset, response bodies cut short. botocore and s3fs retry some of these themselves, never a body that
# ends early once the headers arrived. detbatch retries every transient failure here, with exponential
# backoff and jitter, before anything is recorded; only a permanent cause (not found, access denied,
# bytes that are not an image) becomes an error row. docs/reliability.md has the faults tried.

# Attempts of one storage call, and the backoff between them: 0.25 s doubling to 8 s, about 30 s in all,
# longer than S3's documented SlowDown bursts. Ray then retries the whole task on top. The longest wait
# can be set with DETBATCH_STORAGE_MAX_BACKOFF_S (a store that recovers fast, or a slower one), which
# detbatch forwards to the job's workers (detbatch.runtime).
RETRY_ATTEMPTS = 8
RETRY_FIRST_DELAY_S = 0.25
RETRY_MAX_DELAY_S = 8.0
MAX_BACKOFF_ENV = "DETBATCH_STORAGE_MAX_BACKOFF_S"


def max_backoff_s() -> float:
    """The longest wait between two attempts: ``DETBATCH_STORAGE_MAX_BACKOFF_S``, else ``RETRY_MAX_DELAY_S``."""
    value = os.environ.get(MAX_BACKOFF_ENV, "")
    if not value:
        return RETRY_MAX_DELAY_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= 600:
        from detbatch.config import ConfigError

        raise ConfigError(f"{MAX_BACKOFF_ENV}={value!r}: give seconds between 0 and 600 (default "
                          f"{RETRY_MAX_DELAY_S:g}), or unset it")
    return seconds

# HTTP statuses and S3 error codes that mean "try again" (AWS's retry guidance).
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_TRANSIENT_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeoutException",
     "InternalError", "ServiceUnavailable", "RequestLimitExceeded", "TooManyRequestsException"}
)
_TRANSIENT_ERRNOS = frozenset({errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE, errno.ETIMEDOUT, errno.ECONNREFUSED})
# Exception classes of the HTTP stacks under fsspec (aiohttp, botocore, urllib3, http.client) that mean a
# broken or cut-short exchange, by name: importing those packages here would slow every CLI start.
_TRANSIENT_CLASSES = frozenset(
    {"ClientPayloadError", "ServerDisconnectedError", "ClientConnectionError", "ClientOSError",
     "ServerTimeoutError", "ClientConnectorError", "EndpointConnectionError", "ConnectionClosedError",
     "ReadTimeoutError", "ConnectTimeoutError", "IncompleteReadError", "ResponseStreamingError",
     "IncompleteRead", "ProtocolError", "RemoteDisconnected", "ContentLengthError"}
)


class TransientStorageError(StorageError):
    """Storage kept failing transiently after every retry; nothing was recorded, a rerun tries again."""


class TruncatedRead(OSError):
    """A read ended before the object's size: a body cut short (retried like a reset connection)."""


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) is a failure worth retrying, not a fact about the object."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)):
            return False
        if isinstance(e, (ConnectionError, TimeoutError, TruncatedRead, TransientStorageError)):
            return True
        if type(e).__name__ in _TRANSIENT_CLASSES:
            return True
        response = getattr(e, "response", None)
        if isinstance(response, dict):  # botocore's ClientError
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            code = (response.get("Error") or {}).get("Code")
            if status in _TRANSIENT_STATUS or code in _TRANSIENT_CODES:
                return True
        if isinstance(e, OSError) and e.errno in _TRANSIENT_ERRNOS:
            return True
        e = e.__cause__ or e.__context__
    return False


def retrying(call: Callable[[], T], what: str) -> T:
    """``call()``, retried on transient failures with backoff; after the last attempt a
    :class:`TransientStorageError` naming ``what``. Permanent failures propagate at once."""
    longest = max_backoff_s()
    delay = min(RETRY_FIRST_DELAY_S, longest)
    for attempt in range(1, RETRY_ATTEMPTS + 1):
        try:
            return call()
        except Exception as e:
            if not is_transient(e):
                raise
            if attempt == RETRY_ATTEMPTS:
                raise TransientStorageError(
                    f"{what}: still failing after {RETRY_ATTEMPTS} attempts ({type(e).__name__}: {e}); "
                    f"nothing was recorded for it, rerun to try again"
                ) from e
            logger.warning("%s: %s: %s; retrying in %.1f s (attempt %d of %d)",
                           what, type(e).__name__, e, delay, attempt + 1, RETRY_ATTEMPTS)
            time.sleep(delay * (0.5 + random.random()))
            delay = min(longest, delay * 2)
    raise AssertionError("unreachable")


class RetryingReader(io.RawIOBase):
    """A seekable binary reader of one object that survives transient faults mid-stream.

    Each failed read (a reset, a 503, a body that ends before the object's size) reopens the object at the
    current offset and reads on, with :func:`retrying`'s backoff; so a tar or Parquet shard streamed by a
    reader is either read whole or fails with :class:`TransientStorageError`, never ends early looking
    complete.
    """

    def __init__(self, uri: str):
        self.uri = uri
        self._fs, self._path = resolve(uri)
        self.size = retrying(lambda: int(self._fs.size(self._path)), f"{uri}: size")
        self._pos = 0
        self._file: Any = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def _read_once(self, n: int) -> bytes:
        try:
            if self._file is None:
                # s3fs would otherwise ask for the size again on every reopen
                sized = {"size": self.size} if protocol_of(self.uri) in ("s3", "s3a") else {}
                self._file = self._fs.open(self._path, "rb", **sized)
            if self._file.tell() != self._pos:
                self._file.seek(self._pos)
            data = self._file.read(n)
        except Exception:
            self._drop()
            raise
        if not data and self._pos < self.size:
            self._drop()
            raise TruncatedRead(errno.EIO, f"{self.uri}: read ended at byte {self._pos} of {self.size}")
        return data

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.size - self._pos
        n = min(n, max(0, self.size - self._pos))
        if n == 0:
            return b""
        data = retrying(lambda: self._read_once(n), f"{self.uri}: read at byte {self._pos}")
        self._pos += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        return self.read(-1)

    def _drop(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except Exception:  # a broken connection may fail to close too; it is dropped either way
                pass
            self._file = None

    def close(self) -> None:
        self._drop()
        super().close()


def open_input(uri: str) -> RetryingReader:
    """``uri`` opened for streaming reads that retry transient faults (see :class:`RetryingReader`)."""
    return RetryingReader(uri)


def read_bytes(uri: str) -> bytes:
    """The whole object in one GET, transient faults retried. (A body cut short is caught by the HTTP
    client's Content-Length check and retried here; docs/reliability.md shows it tried.)"""
    fs, path = resolve(uri)
    return retrying(lambda: fs.cat_file(path), f"{uri}: read")


def _hidden_temporary(path: str) -> str:
    """A temporary beside ``path`` that no reader takes for data: pyarrow, pandas and detbatch's commit log
    all skip names that start with a dot."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _fsync_folder(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_local(path: str, data: bytes, exclusive: bool) -> bool:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = _hidden_temporary(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        failpoint("storage.after_temporary_write")
        # The same point for one folder's writes only (``storage.after_temporary_write:attempts``): an
        # actor's, and not its driver's, when both run with the variable set.
        failpoint(f"storage.after_temporary_write:{os.path.basename(os.path.dirname(path))}")
        if exclusive:
            try:
                os.link(tmp, path)  # atomic, and fails if the name exists
            except FileExistsError:
                return False
        else:
            os.replace(tmp, path)
        _fsync_folder(os.path.dirname(path))
        return True
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` to ``uri`` whole: an object PUT on object stores, rename-into-place locally.

    A reader never sees a partial file, which is what lets a rerun trust every file it finds. Locally the
    bytes are fsynced before the rename, and the temporary is hidden (a leading dot) so that no reader
    counts it if the process dies in between. Transient faults are retried (a PUT is idempotent).
    """
    fs, path = resolve(uri)
    if protocol_of(uri) == "file":
        _write_local(path, data, exclusive=False)
    else:
        retrying(lambda: fs.pipe_file(path, data), f"{uri}: write")


def create_exclusive(uri: str, data: bytes) -> bool:
    """Create ``uri`` with ``data`` only if it does not exist yet: True if this call created it.

    Atomic on local disks (a hard link of a complete temporary) and on S3 (a conditional PUT,
    ``If-None-Match: *``), so that of two racing writers exactly one wins. ``data`` should be unique to
    the caller: a retried PUT that had in fact succeeded is recognised by reading it back.
    """
    fs, path = resolve(uri)
    if protocol_of(uri) == "file":
        return _write_local(path, data, exclusive=True)
    if protocol_of(uri) not in ("s3", "s3a", "gs", "gcs"):
        logger.warning("%s: %s has no conditional writes that detbatch knows; exclusive create is best effort",
                       uri, protocol_of(uri))
    try:
        retrying(lambda: fs.pipe_file(path, data, mode="create"), f"{uri}: create")
        return True
    except FileExistsError:
        fs.invalidate_cache(path)
        return retrying(lambda: fs.cat_file(path), f"{uri}: read") == data


def exists(uri: str) -> bool:
    """Whether ``uri`` exists now (listing caches are bypassed)."""
    fs, path = resolve(uri)
    fs.invalidate_cache(path)
    return retrying(lambda: fs.exists(path), f"{uri}: exists")


def list_names(uri: str, hidden: bool = False) -> list[str]:
    """Names of the files directly under the folder/prefix ``uri`` ([] if it does not exist), listed
    afresh (s3fs caches listings per filesystem), all pages; hidden names (``.x``) only if ``hidden``."""
    fs, path = resolve(uri)
    fs.invalidate_cache(path)

    def names() -> list[str]:
        try:
            return [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)]
        except FileNotFoundError:
            return []

    return [n for n in retrying(names, f"{uri}: list") if hidden or not n.startswith(".")]


def remove(uris: list[str]) -> None:
    """Delete files; one already gone is fine."""
    for uri in uris:
        fs, path = resolve(uri)

        def rm() -> None:
            try:
                fs.rm_file(path)
            except FileNotFoundError:
                pass

        retrying(rm, f"{uri}: delete")


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))
