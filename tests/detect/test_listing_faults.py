"""Listing the input through transient faults: a 500 on a HEAD or LIST is retried, never taken for
"no such file" (fsspec's isfile/isdir take any error for "no")."""

from __future__ import annotations

import uuid

import boto3
import pytest

from detbatch import storage
from detbatch.detect.units import list_input
from detbatch.errors import InputError
from tests.helpers.fault_proxy import FaultProxy, FaultRule


@pytest.mark.parametrize("what", ["file", "folder", "glob", "missing"])
def test_listing_the_input_outlasts_the_http_stacks_retries(what, s3_endpoint, monkeypatch):
    """A 500 on each HEAD and LIST key once botocore's retries are spent (``AWS_MAX_ATTEMPTS=1`` here; five
    500s in a row with botocore's defaults do the same, slower) is retried like every other storage call: the
    listing is the input's, not "no such file" (fsspec's isfile() takes any error for that). An input that is
    not there is still named at once."""
    from s3fs import S3FileSystem

    bucket = f"list-{uuid.uuid4().hex[:12]}"
    direct = boto3.client("s3", endpoint_url=s3_endpoint)
    direct.create_bucket(Bucket=bucket)
    direct.put_object(Bucket=bucket, Key="src/a.png", Body=b"png")
    uri = {"file": "src/a.png", "folder": "src", "glob": "src/*.png", "missing": "src/b.png"}[what]
    monkeypatch.setattr(storage, "RETRY_FIRST_DELAY_S", 0.01)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with FaultProxy(s3_endpoint, [FaultRule("500", ("HEAD", "LIST"), max_per_key=1)]) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        S3FileSystem.clear_instance_cache()
        try:
            if what == "missing":
                with pytest.raises(InputError, match="no such file, folder or prefix"):
                    list_input(f"s3://{bucket}/{uri}")
            else:
                assert list_input(f"s3://{bucket}/{uri}").uris == (f"s3://{bucket}/src/a.png",)
        finally:
            S3FileSystem.clear_instance_cache()
        assert proxy.count("500") >= 1
