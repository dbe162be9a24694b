"""detbatch/storage.py: URIs to (filesystem, path), whole writes, and errors that name the URI and the fix.

Reads and writes run against a local folder and against a real S3 endpoint (moto), as every stage does.
"""

import os
import re

import pytest

from detbatch import storage
from detbatch.storage import StorageError


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    """A folder to write into: a local path, or a fresh ``s3://bucket``."""
    if request.param == "local":
        return str(tmp_path)
    return request.getfixturevalue("s3_bucket")


# --- resolve, to_uri, join --------------------------------------------------------------------------


def test_resolve_plain_path_is_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fs, path = storage.resolve("imgs/a.png")
    assert "file" in fs.protocol
    assert path == str(tmp_path / "imgs" / "a.png")


def test_resolve_expands_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert storage.resolve("~/data/a.png")[1] == str(tmp_path / "data" / "a.png")
    assert storage.resolve("file://~/data")[1] == str(tmp_path / "data")


def test_resolve_file_uri_gives_the_local_path(tmp_path):
    fs, path = storage.resolve(f"file://{tmp_path}/imgs/")
    assert "file" in fs.protocol
    assert path == str(tmp_path / "imgs")


@pytest.mark.parametrize("uri", ["s3://bucket/images/a.png", "s3://bucket/images/", "s3://bucket/images"])
def test_resolve_s3_gives_bucket_and_key(uri):
    fs, path = storage.resolve(uri)
    assert "s3" in fs.protocol
    assert path == ("bucket/images/a.png" if uri.endswith(".png") else "bucket/images")


@pytest.mark.parametrize(
    "uri, expected",
    [
        ("s3://bucket/images/a.png", "s3://bucket/images/a.png"),
        ("s3://bucket/prefix/", "s3://bucket/prefix"),
        ("/data/images", "/data/images"),
        ("file:///data/x", "/data/x"),
    ],
)
def test_to_uri_inverts_resolve(uri, expected):
    fs, path = storage.resolve(uri)
    assert storage.to_uri(fs, path) == expected
    assert storage.resolve(expected)[1] == path


def test_join_local_uses_the_os_separator(tmp_path):
    assert storage.join(str(tmp_path), "images", "a.parquet") == os.path.join(str(tmp_path), "images", "a.parquet")


@pytest.mark.parametrize("base", ["s3://bucket/run", "s3://bucket/run/", "gs://bucket/run"])
def test_join_uri_uses_slashes(base):
    scheme = base.split("://")[0]
    assert storage.join(base, "images", "a.parquet") == f"{scheme}://bucket/run/images/a.parquet"


# --- reads and writes ---------------------------------------------------------------------------------


def test_write_then_read_round_trips(root):
    data = bytes(range(256)) * 100
    uri = storage.join(root, "sub", "deeper", "blob.bin")
    storage.write_bytes(uri, data)
    assert storage.read_bytes(uri) == data
    text = "détections: 3 ✓\n"
    storage.write_text(storage.join(root, "note.txt"), text)
    assert storage.read_text(storage.join(root, "note.txt")) == text


def test_write_to_s3_is_one_object(s3_bucket, s3_endpoint):
    import boto3

    storage.write_bytes(f"{s3_bucket}/run/images/part.parquet", b"committed")
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    bucket = s3_bucket.removeprefix("s3://")
    listed = s3.list_objects_v2(Bucket=bucket)["Contents"]
    assert [o["Key"] for o in listed] == ["run/images/part.parquet"]
    assert s3.get_object(Bucket=bucket, Key="run/images/part.parquet")["Body"].read() == b"committed"


def test_local_write_leaves_only_the_target(tmp_path):
    target = tmp_path / "images" / "part.parquet"
    storage.write_bytes(str(target), b"first")
    storage.write_bytes(str(target), b"second")
    assert target.read_bytes() == b"second"
    assert os.listdir(target.parent) == ["part.parquet"]  # no temporary file beside it


def test_local_write_replaces_the_file_whole(tmp_path):
    # Renamed into place, not rewritten in place: a reader that opened the old file keeps reading it whole.
    target = tmp_path / "part.parquet"
    target.write_bytes(b"old contents")
    with open(target, "rb") as reader:
        old_inode = os.fstat(reader.fileno()).st_ino
        storage.write_bytes(str(target), b"new")
        assert reader.read() == b"old contents"
    assert target.read_bytes() == b"new"
    assert target.stat().st_ino != old_inode


def test_local_write_interrupted_before_the_rename_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "part.parquet"
    target.write_bytes(b"old contents")

    def crash(src, dst):
        raise OSError("crashed before the rename")

    monkeypatch.setattr(storage.os, "replace", crash)
    with pytest.raises(OSError, match="crashed"):
        storage.write_bytes(str(target), b"new contents, never committed")
    assert target.read_bytes() == b"old contents"
    assert os.listdir(tmp_path) == ["part.parquet"]  # the temporary is cleaned up too


# --- errors -------------------------------------------------------------------------------------------


def test_check_readable_accepts_a_file_and_a_prefix(root):
    storage.write_bytes(storage.join(root, "images", "a.png"), b"x")
    storage.check_readable(storage.join(root, "images", "a.png"))
    storage.check_readable(storage.join(root, "images"))


def test_check_readable_names_a_missing_path(root):
    uri = storage.join(root, "no", "such", "thing")
    with pytest.raises(StorageError, match="^" + re.escape(f"{uri}: no such file or prefix")):
        storage.check_readable(uri)


def test_check_readable_names_a_missing_bucket(s3_endpoint):
    uri = "s3://no-such-bucket-detbatch/images"
    with pytest.raises(StorageError, match="^" + re.escape(f"{uri}: ")):
        storage.check_readable(uri)


def test_storage_error_is_a_detbatch_error():
    from detbatch.errors import DetbatchError

    assert issubclass(StorageError, DetbatchError)


def test_describe_error_names_the_endpoint_for_s3(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio.internal:9000")
    line = storage.describe_error("s3://b/k", PermissionError("Access Denied"))
    assert line.startswith("s3://b/k: PermissionError: Access Denied (")
    assert "AWS_ENDPOINT_URL (now: http://minio.internal:9000)" in line
    assert "AWS_PROFILE" in line


def test_describe_error_for_a_local_path_does_not_mention_aws(tmp_path):
    line = storage.describe_error(str(tmp_path / "x"), PermissionError("denied"))
    assert line.startswith(f"{tmp_path / 'x'}: PermissionError: denied (")
    assert "AWS" not in line


def test_unknown_protocol_is_named():
    with pytest.raises(StorageError, match=r"^nosuchproto://x: no filesystem for protocol 'nosuchproto'"):
        storage.filesystem("nosuchproto://x")


# --- retry backoff ------------------------------------------------------------------------------------


def test_max_backoff_caps_the_waits_between_attempts(monkeypatch):
    """DETBATCH_STORAGE_MAX_BACKOFF_S caps retrying's doubling waits; a bad value names itself and the fix."""
    import errno as errno_

    waits: list[float] = []
    monkeypatch.setattr(storage.time, "sleep", waits.append)
    monkeypatch.setattr(storage.random, "random", lambda: 0.5)  # the jitter's middle: waits are the delays

    def flaky():
        raise ConnectionResetError(errno_.ECONNRESET, "reset")

    for env, longest in ((None, storage.RETRY_MAX_DELAY_S), ("1.5", 1.5)):
        if env is None:
            monkeypatch.delenv(storage.MAX_BACKOFF_ENV, raising=False)
        else:
            monkeypatch.setenv(storage.MAX_BACKOFF_ENV, env)
        waits.clear()
        with pytest.raises(storage.TransientStorageError, match="still failing after"):
            storage.retrying(flaky, "test call")
        expected = [min(longest, storage.RETRY_FIRST_DELAY_S * 2**i) for i in range(storage.RETRY_ATTEMPTS - 1)]
        assert waits == pytest.approx(expected)
    monkeypatch.setenv(storage.MAX_BACKOFF_ENV, "soon")
    from detbatch.config import ConfigError

    with pytest.raises(ConfigError, match=r"DETBATCH_STORAGE_MAX_BACKOFF_S='soon': give seconds"):
        storage.retrying(flaky, "test call")
