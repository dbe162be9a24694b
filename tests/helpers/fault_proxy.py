"""A flaky S3: a threaded HTTP reverse proxy in front of an S3 endpoint (moto) that injects storage faults.

Point a client at :attr:`FaultProxy.url` (``AWS_ENDPOINT_URL``) and every request is forwarded unchanged to
the upstream endpoint: method, request target (path and query), headers in their order and spelling (``Host``
and ``Authorization`` included: a SigV4 client signs for the proxy's ``host:port``, which is what it sends),
bodies with ``Content-Length`` or ``Transfer-Encoding: chunked`` (forwarded chunked, byte for byte, so
``aws-chunked`` uploads and their trailers pass through), and responses streamed back. Only the hop-by-hop
headers (``Connection``, ``Keep-Alive``, ``Expect``: the proxy answers ``100 Continue`` itself) are the
proxy's own on each side.

Faults follow :class:`FaultRule` s, decided per request by a seeded hash of ``(seed, rule, operation, key,
n)``, where ``key`` is the object key (without its bucket, whose name tests draw at random) and ``n`` counts the
requests of that operation on that key so far. So the schedule is deterministic whatever the interleaving
of threads and processes: the third GET of ``images/a.png`` fails or not the same way in every run. The
kinds (:data:`KINDS`):

``503``             ``503 Slow Down`` with S3's XML ``SlowDown`` error body; the request never reaches S3.
``500``             ``500 Internal Server Error`` with S3's XML ``InternalError`` body; never reaches S3.
``reset``           the connection is reset (RST) before any byte of a response; never reaches S3.
``reset_mid_body``  the real status, headers and part of the body, then a reset (responses with a body only).
``short``           the real status and the full ``Content-Length``, part of the body, then a clean close
                    (responses with a body only): a body cut short.
``lost_reply``      the request reaches S3 and takes effect (a PUT lands), then the connection is reset
                    before the reply: the client cannot tell whether it happened.

Every injected fault is counted (:meth:`FaultProxy.count`), so a test can assert that its faults fired. A fault
that a rule chose but could not apply (``short`` on a response without a body) is not injected, not counted.
Stdlib only.
"""

from __future__ import annotations

import fnmatch
import hashlib
import http.client
import http.server
import socket
import socketserver
import struct
import threading
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

KINDS = ("503", "500", "reset", "reset_mid_body", "short", "lost_reply")
# Operations a rule may name: the HTTP method, except that a GET of a bucket (no key) is a LIST.
OPERATIONS = ("GET", "PUT", "HEAD", "LIST", "POST", "DELETE")

_ERRORS = {
    "503": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
    "500": (500, "Internal Server Error", "InternalError", "We encountered an internal error. Please try again."),
}
# Hop-by-hop headers (RFC 9110 7.6.1) are each connection's own; the rest is forwarded as it came.
# (Transfer-Encoding of a request is forwarded: the body is forwarded as it was framed.)
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
                         "te", "upgrade", "expect"})
# Response bodies are relayed in pieces of this size, so a multi-MB GET streams instead of being held.
_RELAY_CHUNK = 64 * 1024
# How long the proxy waits on a silent client or upstream before giving up the connection.
_SOCKET_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class FaultRule:
    """Inject ``kind`` into the requests of ``operations`` on keys matching ``keys`` with probability ``rate``.

    ``keys``: an fnmatch pattern over ``bucket/key`` (``*`` crosses ``/``): ``"*.tar"``, ``"my-bucket/out/*"``;
    a LIST is named by its prefix, ``bucket/prefix``.
    ``max_per_key``: at most this many faults of this rule on one (operation, key), so that a key gets through
    eventually however the dice fall (``None``: no cap; with ``rate=1`` nothing ever gets through).
    ``limit``: at most this many faults of this rule in all.
    """

    kind: str
    operations: tuple[str, ...] = ("GET",)
    keys: str = "*"
    rate: float = 1.0
    max_per_key: int | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; choose one of {KINDS}")
        unknown = set(self.operations) - set(OPERATIONS)
        if unknown:
            raise ValueError(f"unknown operations {sorted(unknown)}; choose from {OPERATIONS}")


class Fault(NamedTuple):
    """One injected fault, as :attr:`FaultProxy.injected` records it."""

    kind: str
    operation: str
    key: str
    """``bucket/key``; for a LIST, ``bucket/prefix``."""


def _unit(*parts: object) -> float:
    """A number in [0, 1) fixed by ``parts``: the proxy's dice."""
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class FaultProxy:
    """The proxy: ``with FaultProxy(upstream, rules, seed) as proxy:`` serves on ``proxy.url`` until the end."""

    def __init__(self, upstream: str, rules: Iterable[FaultRule] = (), seed: int = 0):
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream {upstream!r}: expected http://host:port")
        self.upstream = (parts.hostname, parts.port or 80)
        self.seed = seed
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = list(rules)
        self._seen: Counter[tuple[str, str]] = Counter()  # (operation, key) -> requests so far
        self._fired: Counter[tuple[int, str, str]] = Counter()  # (rule, operation, key) -> faults
        self.injected: list[Fault] = []
        self.requests: Counter[str] = Counter()  # operation -> requests that reached the proxy
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        # A short poll, so that stopping the proxy takes milliseconds, not serve_forever's default half second.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="fault-proxy", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FaultProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_rules(self, rules: Iterable[FaultRule]) -> None:
        """Replace the rules (counts of injected faults are kept; the dice go on from where they were)."""
        with self._lock:
            self._rules = list(rules)

    def count(self, kind: str | None = None, operation: str | None = None, keys: str = "*") -> int:
        """Faults injected so far, of ``kind`` and ``operation`` (None: any) on keys matching ``keys``."""
        with self._lock:
            return sum(1 for f in self.injected if (kind is None or f.kind == kind)
                       and (operation is None or f.operation == operation) and fnmatch.fnmatchcase(f.key, keys))

    def counts(self, keys: str = "*") -> dict[tuple[str, str], int]:
        """``{(kind, operation): faults}`` injected so far on keys matching ``keys``."""
        with self._lock:
            return dict(Counter((f.kind, f.operation) for f in self.injected if fnmatch.fnmatchcase(f.key, keys)))

    # -- used by the handler threads

    def _choose(self, operation: str, bucket: str, key: str) -> tuple[str, float] | None:
        """The fault kind for this request (and a number in [0, 1) that places a cut), or None.

        The dice read the key without its bucket, so that a test's schedule does not change with the
        random name of its bucket."""
        name = f"{bucket}/{key}"
        with self._lock:
            n = self._seen[(operation, name)]
            self._seen[(operation, name)] += 1
            for i, rule in enumerate(self._rules):
                if operation not in rule.operations or not fnmatch.fnmatchcase(name, rule.keys):
                    continue
                if rule.max_per_key is not None and self._fired[(i, operation, name)] >= rule.max_per_key:
                    continue
                if rule.limit is not None and sum(v for (j, _, _), v in self._fired.items() if j == i) >= rule.limit:
                    continue
                if _unit(self.seed, i, operation, key, n) < rule.rate:
                    self._fired[(i, operation, name)] += 1
                    return rule.kind, _unit(self.seed, i, operation, key, n, "cut")
        return None

    def _record(self, kind: str, operation: str, key: str) -> None:
        with self._lock:
            self.injected.append(Fault(kind, operation, key))


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    proxy: FaultProxy


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and 100-continue answered for clients that ask
    timeout = _SOCKET_TIMEOUT_S
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # quiet: pytest shows stderr of failures
        pass

    def _dispatch(self) -> None:
        proxy = self.server.proxy
        target = urlsplit(self.path)
        bucket, _, key = unquote(target.path).lstrip("/").partition("/")
        operation = self.command
        if operation == "GET" and not key:  # a bucket's listing: named by its prefix
            operation, key = "LIST", parse_qs(target.query).get("prefix", [""])[0]
        name = f"{bucket}/{key}"
        body = self._read_body()
        with proxy._lock:
            proxy.requests[operation] += 1
        chosen = proxy._choose(operation, bucket, key)
        kind, cut = chosen if chosen else (None, 0.0)
        if kind in _ERRORS:
            proxy._record(kind, operation, name)
            self._send_error(kind, target.path)
            return
        if kind == "reset":
            proxy._record(kind, operation, name)
            self._reset()
            return
        host, port = proxy.upstream
        conn = http.client.HTTPConnection(host, port, timeout=_SOCKET_TIMEOUT_S)
        try:
            try:
                upstream = self._forward(conn, body)
            except OSError as e:  # upstream unreachable: what a gateway says
                self._send_plain(502, f"fault proxy: upstream {proxy.upstream}: {e}".encode())
                return
            self._relay(upstream, kind, cut, operation, name)
        finally:
            conn.close()

    do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _dispatch

    def _read_body(self) -> bytes:
        """The request body as it came on the wire (chunked framing and trailers kept)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raw = bytearray()
            while True:
                line = self.rfile.readline(65537)
                raw += line
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    break
                raw += self.rfile.read(size + 2)  # the chunk and its CRLF
            while True:  # trailer fields, then the empty line
                line = self.rfile.readline(65537)
                raw += line
                if line in (b"\r\n", b"\n", b""):
                    break
            return bytes(raw)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _forward(self, conn: http.client.HTTPConnection, body: bytes) -> http.client.HTTPResponse:
        conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        for name, value in self.headers.items():
            if name.lower() not in _HOP_BY_HOP:
                conn.putheader(name, value)
        conn.putheader("Connection", "close")
        conn.endheaders()
        if body:
            conn.send(body)
        return conn.getresponse()

    def _relay(self, upstream: http.client.HTTPResponse, kind: str | None, cut: float, operation: str,
               name: str) -> None:
        proxy = self.server.proxy
        length_header = upstream.getheader("Content-Length")
        has_body = self.command != "HEAD" and upstream.status not in (204, 304) and upstream.status >= 200
        if has_body and length_header is None:  # upstream streamed it chunked: pass it on with a length
            data = upstream.read()
            length, source = len(data), _Bytes(data)
        else:
            length, source = int(length_header or 0), upstream
        if kind == "lost_reply":
            upstream.read()  # S3 has done it; the client never hears
            proxy._record(kind, operation, name)
            self._reset()
            return
        if kind in ("short", "reset_mid_body") and not (has_body and length > 0 and upstream.status < 300):
            kind = None  # no object body to cut: forwarded as it is, not counted
        self.send_response_only(upstream.status, upstream.reason)
        for header, value in upstream.getheaders():
            if header.lower() not in _HOP_BY_HOP and header.lower() != "transfer-encoding":
                self.send_header(header, value)
        if has_body and length_header is None:
            self.send_header("Content-Length", str(length))
        if kind is not None:
            self.send_header("Connection", "close")
        self.end_headers()
        if not has_body:
            return
        stop = int(cut * length) if kind is not None else length  # bytes to send, fewer than the length
        sent = 0
        while sent < stop:
            piece = source.read(min(_RELAY_CHUNK, stop - sent))
            if not piece:
                break
            self.wfile.write(piece)
            sent += len(piece)
        if kind is None:
            return
        proxy._record(kind, operation, name)
        if kind == "short":
            self.close_connection = True
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)  # a clean end of stream, short of Content-Length
        else:
            self._reset()

    def _send_error(self, kind: str, resource: str) -> None:
        status, reason, code, message = _ERRORS[kind]
        request_id = uuid.uuid4().hex[:16].upper()
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
                f"<Resource>{resource}</Resource><RequestId>{request_id}</RequestId>"
                f"<HostId>fault-proxy</HostId></Error>").encode()
        self.send_response_only(status, reason)
        self.send_header("Content-Type", "application/xml")
        self.send_header("x-amz-request-id", request_id)
        self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_plain(self, status: int, body: bytes) -> None:
        self.send_response_only(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def _reset(self) -> None:
        """Abort the client connection with a TCP reset (SO_LINGER 0), not a clean close."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.connection.close()


class _Bytes:
    """A response body already read whole, read on like a stream."""

    def __init__(self, data: bytes):
        self._data, self._pos = data, 0

    def read(self, n: int) -> bytes:
        piece = self._data[self._pos : self._pos + n]
        self._pos += len(piece)
        return piece
