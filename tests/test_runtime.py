"""The environment detbatch's local Ray gives its workers (runtime.WORKER_ENV)."""

from __future__ import annotations

import os

from detbatch.runtime import WORKER_ENV, local_ray_env


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
