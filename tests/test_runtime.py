"""The environment detbatch's local Ray gives its workers (runtime.WORKER_ENV), what init_ray forwards to a
cluster's workers (runtime.forwarded_env), and the memory helpers."""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest

from detbatch.config import ConfigError
from detbatch.runtime import (
    FORWARD_SECRETS_ENV,
    WORKER_ENV,
    PrivateMemoryPeak,
    forwarded_env,
    local_ray_env,
    peak_rss_mib,
    proc_status_mib,
)


def test_local_ray_env_sets_only_what_is_unset_and_restores(monkeypatch):
    monkeypatch.delenv("RAY_LD_PRELOAD_ON_WORKERS", raising=False)
    monkeypatch.setenv("MALLOC_CONF", "narenas:2")  # a user's own setting wins
    with local_ray_env():
        assert os.environ["RAY_LD_PRELOAD_ON_WORKERS"] == "1" and os.environ["MALLOC_CONF"] == "narenas:2"
    assert "RAY_LD_PRELOAD_ON_WORKERS" not in os.environ and os.environ["MALLOC_CONF"] == "narenas:2"


def test_workers_run_on_rays_jemalloc_without_decay(ray_cluster):
    """The test cluster starts as detbatch's local Ray does: its workers must have jemalloc mapped."""
    import ray

    @ray.remote(num_cpus=0)
    def allocator() -> tuple[bool, str | None]:
        with open("/proc/self/maps") as f:
            return "libjemalloc" in f.read(), os.environ.get("MALLOC_CONF")

    assert ray.get(allocator.remote()) == (True, WORKER_ENV["MALLOC_CONF"])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/PID/status is Linux's")
def test_proc_status_mib_reads_this_and_other_processes():
    rss = proc_status_mib("VmRSS")
    assert isinstance(rss, float) and rss > 0
    assert proc_status_mib("VmRSS", os.getpid()) == pytest.approx(rss, rel=0.5)
    assert proc_status_mib("NoSuchField") is None
    assert proc_status_mib("VmRSS", 2**30) is None  # no such process
    assert peak_rss_mib() >= proc_status_mib("VmRSS") - 1  # the peak is never below the current (KiB rounding)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/PID/status is Linux's")
def test_private_memory_peak_sees_an_allocation_freed_inside_the_block():
    size_mib = 128
    before = proc_status_mib("RssAnon")
    with PrivateMemoryPeak() as memory:
        block = np.ones(size_mib * 2**20, dtype=np.uint8)  # written, so resident
        time.sleep(0.3)  # several 50 ms samples while it is held
        del block
    assert proc_status_mib("RssAnon") < before + size_mib / 2  # freed again: only a sample saw it
    assert memory.peak_mib >= before + size_mib * 0.9
    assert abs(memory.start_mib - before) < size_mib / 4  # the rise is the block's own, not what came before
    assert memory.peak_mib - memory.start_mib >= size_mib * 0.9


SECRETS = {"AWS_ACCESS_KEY_ID": "AKIAFAKE", "AWS_SECRET_ACCESS_KEY": "fake-secret", "AWS_SESSION_TOKEN": "fake-token"}
SETTINGS = {"AWS_ENDPOINT_URL": "http://minio:9000", "AWS_ENDPOINT_URL_S3": "http://minio:9000",
            "AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "eu-west-1", "AWS_PROFILE": "detbatch",
            "DETBATCH_FAILPOINTS": "sink.between_detections_and_images"}


@pytest.mark.parametrize("opt_in", [None, "", "0"])
def test_forwarded_env_keeps_credentials_on_the_driver_by_default(opt_in):
    environ = {**SECRETS, **SETTINGS, "HOME": "/home/me", "RAY_ADDRESS": "127.0.0.1:6379"}
    if opt_in is not None:
        environ[FORWARD_SECRETS_ENV] = opt_in
    assert forwarded_env(environ) == SETTINGS


def test_forwarded_env_forwards_credentials_only_when_asked():
    assert forwarded_env({**SECRETS, **SETTINGS, FORWARD_SECRETS_ENV: "1"}) == {**SECRETS, **SETTINGS}
    assert forwarded_env({"AWS_REGION": "eu-west-1", FORWARD_SECRETS_ENV: "1"}) == {"AWS_REGION": "eu-west-1"}


def test_forwarded_env_reads_the_process_environment(monkeypatch):
    for name in (*SECRETS, *SETTINGS):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake-secret")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.delenv(FORWARD_SECRETS_ENV, raising=False)
    assert forwarded_env() == {"AWS_REGION": "eu-west-1"}
    monkeypatch.setenv(FORWARD_SECRETS_ENV, "1")
    assert forwarded_env() == {"AWS_REGION": "eu-west-1", "AWS_SECRET_ACCESS_KEY": "fake-secret"}


@pytest.mark.parametrize("value", ["yes", "true", " 1"])
def test_forwarded_env_refuses_an_unclear_opt_in(value):
    with pytest.raises(ConfigError, match=f"{FORWARD_SECRETS_ENV}='{value}': set it to 1"):
        forwarded_env({**SECRETS, FORWARD_SECRETS_ENV: value})
