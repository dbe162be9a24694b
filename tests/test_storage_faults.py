"""detbatch/storage.py under transient storage faults, through a real flaky S3 (tests/helpers/fault_proxy.py).

Every test talks HTTP to moto through the fault proxy, with the real HTTP stack (s3fs, aiobotocore,
aiohttp) in between. Three layers retry a failed call: botocore (503/500/resets), s3fs (SlowDown, bodies
cut short) and detbatch's ``retrying``. The ``proxy`` fixture turns botocore's off (``AWS_MAX_ATTEMPTS=1``)
so that the faults a test injects reach the layers above it; tests that are about detbatch's layer alone
turn s3fs's off too (``fs.retries = 1``). Each test asserts that its faults fired.
"""

from __future__ import annotations

import http.client
import io
import logging
import os
import re
import subprocess
import sys
import tarfile
import uuid
from urllib.parse import urlsplit

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from detbatch import storage
from detbatch.detect import read
from tests.helpers.fault_proxy import FaultProxy, FaultRule

# Faults per key in the tests that must get through: more than s3fs's own 5 attempts, so that detbatch's
# retrying is what gets the call through, and fewer than its RETRY_ATTEMPTS.
FAULTS_PER_KEY = 6
GET_KINDS = ("503", "500", "reset", "reset_mid_body", "short", "lost_reply")
PUT_KINDS = ("503", "500", "reset", "lost_reply")


@pytest.fixture
def proxy(s3_endpoint, monkeypatch, request):
    """A fault proxy in front of moto, with no rules yet, and this test's storage pointed at it. The faults it
    injected are the test's ``faults`` property (``--junitxml`` writes them out; docs/reliability.md quotes them).

    fsspec caches filesystems by their arguments, and a later proxy may get an earlier one's port: the
    cache is cleared on both sides, so ``storage.filesystem`` makes a fresh one for this proxy.
    """
    from s3fs import S3FileSystem

    monkeypatch.setattr(storage, "RETRY_FIRST_DELAY_S", 0.01)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with FaultProxy(s3_endpoint) as p:
        monkeypatch.setenv("AWS_ENDPOINT_URL", p.url)
        S3FileSystem.clear_instance_cache()
        fs = storage.filesystem("s3://")
        assert fs.endpoint_url == p.url
        yield p
        S3FileSystem.clear_instance_cache()
    request.node.user_properties.append(("faults", p.counts()))


@pytest.fixture
def direct(s3_endpoint):
    """A boto3 client that talks to moto directly, past the proxy: what S3 really holds."""
    return boto3.client("s3", endpoint_url=s3_endpoint)


def _bucket_key(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def _raised(call) -> BaseException:
    try:
        call()
    except Exception as e:
        return e
    raise AssertionError("the call succeeded, though every attempt was to fail")


# --- the proxy itself --------------------------------------------------------------------------------------


def test_proxy_forwards_requests_unchanged(proxy, s3_bucket, direct):
    """Without rules the proxy is S3: objects, ranges, listings, conditional and chunked PUTs, errors."""
    bucket, _ = _bucket_key(s3_bucket)
    client = boto3.client("s3", endpoint_url=proxy.url)
    data = os.urandom(300_000)
    client.put_object(Bucket=bucket, Key="a/one.bin", Body=data)
    assert direct.get_object(Bucket=bucket, Key="a/one.bin")["Body"].read() == data
    assert client.get_object(Bucket=bucket, Key="a/one.bin", Range="bytes=1000-1999")["Body"].read() == data[1000:2000]
    assert client.head_object(Bucket=bucket, Key="a/one.bin")["ContentLength"] == len(data)
    client.put_object(Bucket=bucket, Key="a/two.bin", Body=b"x", IfNoneMatch="*")
    with pytest.raises(client.exceptions.ClientError, match="PreconditionFailed"):
        client.put_object(Bucket=bucket, Key="a/two.bin", Body=b"y", IfNoneMatch="*")
    with pytest.raises(client.exceptions.NoSuchKey):
        client.get_object(Bucket=bucket, Key="a/missing")
    listed = client.list_objects_v2(Bucket=bucket, Prefix="a/")
    assert [o["Key"] for o in listed["Contents"]] == ["a/one.bin", "a/two.bin"]

    # A chunked upload (Transfer-Encoding: chunked), as a client streaming a body of unknown size sends it.
    host, port = urlsplit(proxy.url).hostname, urlsplit(proxy.url).port
    conn = http.client.HTTPConnection(host, port)
    conn.request("PUT", f"/{bucket}/a/chunked.bin", body=iter([b"abc", b"", b"defg" * 1000]), encode_chunked=True)
    assert conn.getresponse().status == 200
    conn.close()
    assert direct.get_object(Bucket=bucket, Key="a/chunked.bin")["Body"].read() == b"abc" + b"defg" * 1000

    client.delete_object(Bucket=bucket, Key="a/two.bin")
    assert [o["Key"] for o in direct.list_objects_v2(Bucket=bucket, Prefix="a/")["Contents"]] == ["a/chunked.bin", "a/one.bin"]
    assert proxy.count() == 0 and proxy.injected == []
    assert {op: proxy.requests[op] for op in ("GET", "PUT", "HEAD", "LIST", "DELETE")} == \
        {"GET": 2, "PUT": 4, "HEAD": 1, "LIST": 1, "DELETE": 1}


def _raw_get(proxy: FaultProxy, path: str) -> str:
    """One GET straight to the proxy, no client retries: ``"ok"`` or what went wrong."""
    parts = urlsplit(proxy.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            return str(response.status) + (" SlowDown" if b"<Code>SlowDown</Code>" in body else "")
        return "ok"
    except http.client.IncompleteRead:
        return "incomplete"
    except (ConnectionError, http.client.RemoteDisconnected):
        return "disconnected"
    finally:
        conn.close()


def test_fault_schedule_is_seeded_capped_and_counted(s3_endpoint, s3_bucket, direct):
    """Same seed and rules, same faults; ``keys`` and ``max_per_key`` hold; only injected faults count."""
    bucket, _ = _bucket_key(s3_bucket)
    for name in ("x.tar", "y.tar", "z.png"):
        direct.put_object(Bucket=bucket, Key=name, Body=b"0123456789" * 100, ACL="public-read")  # for unsigned GETs
    rules = [FaultRule("503", ("GET",), "*.tar", rate=0.5, max_per_key=3), FaultRule("short", ("GET",), "*.tar", rate=0.5)]
    seen = []
    for _ in range(2):
        with FaultProxy(s3_endpoint, rules, seed=7) as proxy:
            outcomes = [_raw_get(proxy, f"/{bucket}/{name}") for name in ("x.tar", "y.tar", "z.png") for _ in range(12)]
            seen.append((outcomes, list(proxy.injected)))
            assert proxy.count("503", "GET", f"{bucket}/x.tar") <= 3 and proxy.count("503", "GET", f"{bucket}/y.tar") <= 3
            assert proxy.count(keys="*.png") == 0 and outcomes[24:] == ["ok"] * 12
            assert proxy.count("503") == outcomes.count("503 SlowDown") > 0
            assert proxy.count("short") == outcomes.count("incomplete") > 0
    assert seen[0] == seen[1]
    with FaultProxy(s3_endpoint, rules, seed=8) as proxy:
        assert [_raw_get(proxy, f"/{bucket}/{name}") for name in ("x.tar", "y.tar", "z.png") for _ in range(12)] != seen[0][0]
    with pytest.raises(ValueError, match="unknown fault kind"):
        FaultRule("timeout")


# --- reads --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", GET_KINDS)
def test_read_bytes_gets_the_exact_bytes_through_faults(proxy, s3_bucket, direct, kind):
    """Six faults of one kind on an object's GETs: ``read_bytes`` still returns its bytes, every one of them.

    ``short``: S3 sends the status and the full Content-Length, then part of the body, and closes. The one GET of
    ``read_bytes`` (s3fs's ``cat_file``) catches it: aiohttp checks the body against Content-Length
    (``ClientPayloadError``), s3fs retries five times, detbatch's retrying the sixth."""
    bucket, _ = _bucket_key(s3_bucket)
    data = os.urandom(1_000_000)
    direct.put_object(Bucket=bucket, Key="images/a.png", Body=data)
    proxy.set_rules([FaultRule(kind, ("GET",), "*/a.png", max_per_key=FAULTS_PER_KEY)])

    assert storage.read_bytes(f"{s3_bucket}/images/a.png") == data
    assert proxy.count(kind, "GET") == FAULTS_PER_KEY


def test_open_input_streams_the_exact_bytes_through_cuts_mid_body(proxy, s3_bucket, direct, caplog):
    """A 4 MB object read in 256 KiB range GETs, a third of them cut short or reset part-way, with s3fs's own
    retries off: each cut reaches the RetryingReader, which reopens at its offset, so the bytes are exact, in
    a front-to-back stream (tar) and in seeks from the end (Parquet's footer first)."""
    bucket, _ = _bucket_key(s3_bucket)
    data = os.urandom(4 * 2**20 + 12345)
    direct.put_object(Bucket=bucket, Key="shards/big.tar", Body=data)
    fs = storage.filesystem("s3://")
    fs.retries = 1  # this proxy's own filesystem instance
    fs.default_block_size = 256 * 2**10  # many range GETs, so that cuts land mid-stream
    proxy.set_rules([FaultRule(kind, ("GET",), "*/big.tar", rate=0.25) for kind in ("reset", "reset_mid_body", "short")])
    uri = f"{s3_bucket}/shards/big.tar"

    with caplog.at_level(logging.WARNING, logger="detbatch.storage"), storage.open_input(uri) as f:
        pieces = []
        while piece := f.read(100_000):
            pieces.append(piece)
        assert b"".join(pieces) == data
        f.seek(-8, io.SEEK_END)
        assert f.read(8) == data[-8:]
        f.seek(1_000_000)
        assert f.read(3_000_000) == data[1_000_000:4_000_000]
        assert f.read() == data[4_000_000:] and f.read(10) == b""
    for kind in ("short", "reset_mid_body", "reset"):
        assert proxy.count(kind, "GET") > 0, proxy.counts()
    offsets = [int(m[1]) for m in re.finditer(r"read at byte (\d+)", caplog.text)]
    assert any(0 < at < len(data) for at in offsets), "no read was retried mid-stream"


def _tar_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def _parquet_bytes(rows: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"file_name": list(rows), "image": list(rows.values())}), buf, row_group_size=2)
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["tar", "parquet"])
def test_shards_read_whole_through_faults(proxy, s3_bucket, direct, kind):
    """Each GET of a shard fails once of every kind before one gets through: every sample comes back exact."""
    bucket, _ = _bucket_key(s3_bucket)
    images = {f"{i:06d}.png": os.urandom(50_000 + i) for i in range(6)}
    body = _tar_bytes(images) if kind == "tar" else _parquet_bytes(images)
    direct.put_object(Bucket=bucket, Key=f"shards/s.{kind}", Body=body)
    proxy.set_rules([FaultRule(k, ("GET",), f"*.{kind}", max_per_key=1) for k in GET_KINDS]
                    + [FaultRule(k, ("HEAD",), f"*.{kind}", max_per_key=1) for k in ("503", "500", "reset")])

    samples = list(read.shard_samples(f"{s3_bucket}/shards/s.{kind}", kind))
    assert [(s.name, s.data, s.error) for s in samples] == [(n, b, None) for n, b in images.items()]
    for k in GET_KINDS:
        assert proxy.count(k, "GET") == 1, proxy.counts()


# --- writes -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", PUT_KINDS)
def test_write_bytes_lands_the_exact_object_through_faults(proxy, s3_bucket, direct, kind):
    """Six faults of one kind on an object's PUTs (``lost_reply``: the PUT landed, the reply did not): the
    object S3 holds at the end is exactly what was written."""
    bucket, _ = _bucket_key(s3_bucket)
    direct.put_object(Bucket=bucket, Key="out/part.parquet", Body=b"an older version")
    data = os.urandom(500_000)
    proxy.set_rules([FaultRule(kind, ("PUT",), "*/part.parquet", max_per_key=FAULTS_PER_KEY)])

    storage.write_bytes(f"{s3_bucket}/out/part.parquet", data)
    assert direct.get_object(Bucket=bucket, Key="out/part.parquet")["Body"].read() == data
    assert proxy.count(kind, "PUT") == FAULTS_PER_KEY


# --- what is transient, what is not -------------------------------------------------------------------------

_CALLS = {
    "GET": lambda fs, bucket: fs.cat_file(f"{bucket}/k/a.bin"),
    "PUT": lambda fs, bucket: fs.pipe_file(f"{bucket}/k/b.bin", b"data"),
    "HEAD": lambda fs, bucket: fs.info(f"{bucket}/k/a.bin"),
    "LIST": lambda fs, bucket: fs.ls(f"{bucket}/k/", refresh=True),
}


@pytest.mark.parametrize("operation, kind", [
    *(("GET", k) for k in GET_KINDS), *(("PUT", k) for k in PUT_KINDS), ("HEAD", "503"), ("HEAD", "500"),
    ("HEAD", "reset"), ("LIST", "503"), ("LIST", "500"), ("LIST", "reset"), ("LIST", "short"),
])
def test_each_injected_fault_raises_a_transient_error(proxy, s3_bucket, direct, operation, kind):
    """The exception that the real stack raises for each fault (one attempt of each layer) is transient, and
    never one that means "not there"."""
    bucket, _ = _bucket_key(s3_bucket)
    direct.put_object(Bucket=bucket, Key="k/a.bin", Body=os.urandom(100_000))
    fs = storage.filesystem("s3://")
    fs.retries = 1
    proxy.set_rules([FaultRule(kind, (operation,))])

    error = _raised(lambda: _CALLS[operation](fs, bucket))
    assert storage.is_transient(error), f"{type(error).__name__}: {error}"
    assert not isinstance(error, (FileNotFoundError, PermissionError))
    assert proxy.count(kind, operation) >= 1


def test_not_found_is_permanent_and_not_retried(proxy, s3_bucket):
    """A 404 (moto's real NoSuchKey) is a fact about the object: FileNotFoundError at once, an error row."""
    uri = f"{s3_bucket}/images/missing.png"
    error = _raised(lambda: storage.read_bytes(uri))
    assert isinstance(error, FileNotFoundError) and not storage.is_transient(error)
    assert proxy.requests["GET"] + proxy.requests["HEAD"] <= 2  # one look, no retries
    assert read.read_file(uri) == (None, "file not found (deleted after listing?)")


def test_access_denied_is_permanent_and_not_retried(proxy, s3_bucket, direct, monkeypatch):
    """A 403 AccessDenied from moto with its authorization on (an IAM user without permissions): permanent."""
    import moto.settings

    bucket, _ = _bucket_key(s3_bucket)
    direct.put_object(Bucket=bucket, Key="images/a.png", Body=b"png")
    iam = boto3.client("iam", endpoint_url=proxy.url)
    user = f"nobody-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    from s3fs import S3FileSystem

    S3FileSystem.clear_instance_cache()  # a filesystem with the new credentials
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    before = dict(proxy.requests)

    error = _raised(lambda: storage.read_bytes(f"{s3_bucket}/images/a.png"))
    assert isinstance(error, PermissionError) and not storage.is_transient(error), f"{type(error).__name__}: {error}"
    assert sum(proxy.requests.values()) - sum(before.values()) <= 2  # one look, no retries
    data, reason = read.read_file(f"{s3_bucket}/images/a.png")
    assert data is None and "read failed: PermissionError" in reason


# --- storage that never lets a call through -----------------------------------------------------------------


@pytest.fixture
def hopeless(proxy, monkeypatch):
    """``proxy`` with fewer, quicker retries: storage that never recovers fails in a second or two."""
    monkeypatch.setattr(storage, "RETRY_ATTEMPTS", 2)
    storage.filesystem("s3://").retries = 2
    return proxy


@pytest.mark.parametrize("kind", ["503", "short"])  # an error status, a body cut short
def test_storage_that_never_recovers_is_a_transient_storage_error(hopeless, s3_bucket, direct, kind):
    """Every attempt fails: TransientStorageError (a rerun retries), not FileNotFoundError, and not an error row
    of an image or a shard; writes fail the same way."""
    bucket, _ = _bucket_key(s3_bucket)
    image = f"{s3_bucket}/images/a.png"
    direct.put_object(Bucket=bucket, Key="images/a.png", Body=os.urandom(100_000))
    direct.put_object(Bucket=bucket, Key="shards/s.tar", Body=_tar_bytes({"a.png": os.urandom(100_000)}))
    direct.put_object(Bucket=bucket, Key="shards/s.parquet", Body=_parquet_bytes({"a.png": os.urandom(100_000)}))
    hopeless.set_rules([FaultRule(kind, ("GET",))])

    for call in (lambda: storage.read_bytes(image), lambda: read.read_file(image),
                 lambda: list(read.shard_samples(f"{s3_bucket}/shards/s.tar", "tar")),
                 lambda: list(read.shard_samples(f"{s3_bucket}/shards/s.parquet", "parquet"))):
        error = _raised(call)
        assert isinstance(error, storage.TransientStorageError), f"{type(error).__name__}: {error}"
        assert not isinstance(error, FileNotFoundError) and "nothing was recorded" in str(error)
    assert hopeless.count(kind, "GET") >= 4 * storage.RETRY_ATTEMPTS
    if kind == "503":  # a PUT's reply has no body to cut
        hopeless.set_rules([FaultRule(kind, ("PUT",))])
        error = _raised(lambda: storage.write_bytes(f"{s3_bucket}/out/x.parquet", b"data"))
        assert isinstance(error, storage.TransientStorageError)
        assert "Contents" not in direct.list_objects_v2(Bucket=bucket, Prefix="out/")
        assert hopeless.count(kind, "PUT") >= storage.RETRY_ATTEMPTS


# --- exclusive create ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["local", "s3"])
def test_create_exclusive_creates_once(where, tmp_path, proxy, s3_bucket, direct):
    """The second create of a name returns False and leaves the first one's bytes; on S3 through faults,
    a lost reply included (the retried PUT finds its own bytes there and is recognised as the winner)."""
    if where == "s3":
        proxy.set_rules([FaultRule(k, ("PUT",), "*/lease/*", max_per_key=1) for k in PUT_KINDS])
    uri = f"{s3_bucket}/lease/0001.json" if where == "s3" else str(tmp_path / "lease" / "0001.json")
    assert storage.create_exclusive(uri, b"first") is True
    assert storage.create_exclusive(uri, b"second") is False
    assert storage.read_bytes(uri) == b"first"
    if where == "s3":
        assert {k: proxy.count(k, "PUT") for k in PUT_KINDS} == {k: 1 for k in PUT_KINDS}
    else:
        assert os.listdir(tmp_path / "lease") == ["0001.json"]  # no temporary left behind


# A racer: for each URI read from stdin, one create_exclusive with this racer's token; prints the outcome.
_RACER = """
import sys
from detbatch import storage
storage.RETRY_FIRST_DELAY_S = 0.01
for line in sys.stdin:
    print(storage.create_exclusive(line.strip(), sys.argv[1].encode()), flush=True)
"""


@pytest.mark.parametrize("where", ["local", "s3"])
def test_two_processes_racing_create_exclusive_one_wins(where, tmp_path, proxy, s3_bucket):
    """Two processes create the same ten names at the same moment (each name is handed to both at once):
    for each exactly one wins, and the name holds the winner's bytes. On S3 through the proxy, with PUT
    faults, lost replies among them (a PUT that landed, retried, must still count as the winner's)."""
    if where == "s3":
        proxy.set_rules([FaultRule("lost_reply", ("PUT",), "*/race/*", rate=0.3),
                         FaultRule("503", ("PUT",), "*/race/*", rate=0.2)])
    root = f"{s3_bucket}/race" if where == "s3" else str(tmp_path / "race")
    racers = {token: subprocess.Popen([sys.executable, "-c", _RACER, token], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True) for token in ("A", "B")}
    try:
        for i in range(10):
            uri = storage.join(root, f"{i:04d}.json")
            for racer in racers.values():
                racer.stdin.write(uri + "\n")
            for racer in racers.values():
                racer.stdin.flush()
            won = [token for token, racer in racers.items() if racer.stdout.readline().strip() == "True"]
            assert len(won) == 1, f"{uri}: winners {won}"
            assert storage.read_bytes(uri) == won[0].encode()
    finally:
        for racer in racers.values():
            racer.stdin.close()
            racer.wait(timeout=60)
    assert all(racer.returncode == 0 for racer in racers.values())
    if where == "s3":
        assert proxy.count("lost_reply", "PUT") > 0 and proxy.count("503", "PUT") > 0


# --- detect's reads of its own output ------------------------------------------------------------------------


def test_the_drivers_reads_of_the_output_outlast_faults(proxy, s3_bucket, direct):
    """The ownership check when a run opens an output, and the final count of its committed parts (what
    run.json records), get through more faults than the HTTP stack's retries: a transient fault there
    must not fail a run whose every image is committed."""
    from detbatch.detect import sink
    from detbatch.detect.driver import _count_output
    from detbatch.detect.output import _check_owned_or_empty
    from tests.detect.test_sink import _scored

    out = f"{s3_bucket}/out"
    sink.write_parts(pa.concat_tables([_scored(0, [0, 1, 2], last_index=2, dets=2), _scored(1, [0], last_index=0)]),
                     out, generation=1)
    log = sink.read_commit_log(out)
    direct.put_object(Bucket=_bucket_key(s3_bucket)[0], Key="mine/a.txt", Body=b"the user's")
    proxy.set_rules([FaultRule("503", ("GET", "HEAD", "LIST"), "*/images/*", max_per_key=FAULTS_PER_KEY),
                     FaultRule("503", ("GET", "HEAD", "LIST"), "*/mine*", max_per_key=FAULTS_PER_KEY)])

    assert _count_output(out, log) == {"images_ok": 4, "images_error": 0, "detections": 7}
    with pytest.raises(Exception, match="is not empty and holds no detbatch run"):
        _check_owned_or_empty(f"{s3_bucket}/mine", overwrite=False)
    assert proxy.count("503", None, "*/images/*") >= FAULTS_PER_KEY and proxy.count("503", None, "*/mine*") > 0
