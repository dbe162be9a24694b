"""Connecting to Ray: the job's cluster when there is one, else a local Ray started in-process; and
measuring a process's memory (the tasks of evaluate and the benchmarks report it)."""

from __future__ import annotations

import logging
import os
import resource
import threading
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

logger = logging.getLogger(__name__)

# Storage settings the driver was given, forwarded to the workers of a cluster that was started
# elsewhere (`ray start`), so that every stage sees the same endpoint. A local Ray started here
# inherits the driver's environment and needs no forwarding. None of these is a secret: Ray keeps a
# job's runtime_env in its job table, shown by the dashboard and `ray list jobs --detail`.
_FORWARDED_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_PROFILE",
    # Failpoints (detbatch.faults) of a crash test reach the job's actors this way; unset, nothing is sent.
    "DETBATCH_FAILPOINTS",
    "DETBATCH_STORAGE_MAX_BACKOFF_S",  # storage.max_backoff_s
)

# AWS credentials: forwarded only when FORWARD_SECRETS_ENV is "1", since the job table above would then
# hold them in clear. On a cluster the nodes' instance profiles give the workers their own credentials
# (cluster.yaml; docs/scaling.md "Security"). The key id goes with the secret: botocore refuses a key id
# without its secret key, and a lone key id would hide the instance profile from the workers.
_SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
FORWARD_SECRETS_ENV = "DETBATCH_FORWARD_AWS_SECRETS"

# Workers do not preload torch (Ray's `preload_python_modules`): every worker would pay ~6 CPU-s and
# ~300 MB for it, the decode tasks included, which never use torch; only the detector actors and the
# training workers import it. Measured in docs/benchmarks.md ("detect (issue 2)").

# Environment of the Ray processes a local Ray starts here. Ray's wheel ships jemalloc and preloads it
# into its own daemons; RAY_LD_PRELOAD_ON_WORKERS=1 keeps it in the workers too. With glibc's malloc a
# CPU detector's heap climbs over the first few hundred images to about twice its working set (freed
# activation buffers of each image shape stay in its arenas); jemalloc holds it near the working set.
# Its default decay (returning freed pages to the OS after 10 s) halves CPU inference speed here, as
# the next batch faults the same pages back in; never decaying keeps glibc's speed with the smaller
# footprint. Measured in docs/benchmarks.md ("Detector memory: glibc vs jemalloc"). Settings already in the environment
# win; on a cluster, export both in `ray start`'s environment (see cluster.yaml).
WORKER_ENV = {"RAY_LD_PRELOAD_ON_WORKERS": "1", "MALLOC_CONF": "dirty_decay_ms:-1,muzzy_decay_ms:-1"}


def forwarded_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment variables :func:`init_ray` gives the workers of a cluster it joins.

    Those of ``_FORWARDED_ENV`` set in ``environ`` (default ``os.environ``), plus the AWS credentials
    (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``) only if
    ``DETBATCH_FORWARD_AWS_SECRETS=1``. Any other value than ``1``, ``0`` or empty is a ConfigError.
    """
    from detbatch.config import ConfigError

    environ = os.environ if environ is None else environ
    opt_in = environ.get(FORWARD_SECRETS_ENV, "")
    if opt_in not in ("", "0", "1"):
        raise ConfigError(f"{FORWARD_SECRETS_ENV}={opt_in!r}: set it to 1 to forward the driver's AWS "
                         "credentials to the workers, or to 0 (or leave it unset) to keep them on the driver")
    names = _FORWARDED_ENV + (_SECRET_ENV if opt_in == "1" else ())
    return {k: environ[k] for k in names if k in environ}


def _log_secret_forwarding(env: Mapping[str, str]) -> None:
    """Say which credentials stayed on the driver or were forwarded: names only, never values."""
    forwarded = [k for k in _SECRET_ENV if k in env]
    withheld = [k for k in _SECRET_ENV if k in os.environ and k not in env]
    if forwarded:
        logger.warning("forwarding %s to the workers (%s=1): Ray keeps them in this job's runtime_env, "
                       "readable from its dashboard and job table", ", ".join(forwarded), FORWARD_SECRETS_ENV)
    elif withheld:
        logger.info("not forwarding %s to the workers: they use their own credentials (the node's instance "
                    "profile); set %s=1 to forward them", ", ".join(withheld), FORWARD_SECRETS_ENV)


@contextmanager
def local_ray_env() -> Iterator[None]:
    """While a local Ray starts: :data:`WORKER_ENV` in the environment its processes inherit."""
    added = {k: v for k, v in WORKER_ENV.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to Ray once per process.

    ``address=None``: the job's cluster (``RAY_ADDRESS``, set by ``ray job submit``), else the Ray
    last started on this machine with ``ray start`` (Ray's own rule), else a new local Ray whose
    workers run with :data:`WORKER_ENV`.
    ``"local"`` always starts a new local Ray (with ``num_cpus`` CPUs, default all). Any other value
    is passed to ``ray.init`` (``"auto"``, ``"ray://host:10001"``).
    """
    import ray

    if ray.is_initialized():
        return
    env = forwarded_env()
    # A `ray job submit` driver (Ray sets this variable for it) runs with the job's runtime env, which its
    # workers get too; Ray refuses to merge a second env_vars into one given at submission.
    in_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ
    runtime_env = {"env_vars": env} if env and not in_job else None
    common = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address is None and not os.environ.get("RAY_ADDRESS"):
        # The Ray last started here with `ray start` (its address file; "auto" is Ray's public way to
        # look), else a new local one: Ray's own rule, except that a local Ray gets WORKER_ENV.
        try:
            ray.init(address="auto", runtime_env=runtime_env, **common)
        except ConnectionError:
            address = "local"
    if address == "local":
        with local_ray_env():
            ray.init(address="local", num_cpus=num_cpus, **common)
    elif not ray.is_initialized():  # RAY_ADDRESS (a job's cluster: never replaced by a local Ray), or as given
        ray.init(address=address, runtime_env=runtime_env, **common)
    if address != "local":  # a local Ray's workers inherit the driver's environment: nothing was forwarded
        _log_secret_forwarding(env)
    logger.info("connected to Ray: %s", ray.get_runtime_context().gcs_address)


def proc_status_mib(field: str, pid: int | str = "self") -> float | None:
    """A memory line (``VmHWM``, ``RssAnon``, ...) of /proc/PID/status (Linux), MiB; None elsewhere."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mib() -> float:
    """Peak resident memory of this process, MiB (in a Ray worker: object-store pages it touched too)."""
    # VmHWM starts afresh at exec; ru_maxrss keeps the peak of the process that forked this one.
    peak = proc_status_mib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PrivateMemoryPeak:
    """Peak private (anonymous) resident memory of this process while the ``with`` block runs, MiB,
    sampled every 50 ms (``peak_mib``; 0 where /proc is missing), and at the start (``start_mib``): what the
    block itself added is ``peak_mib - start_mib``.

    A Ray worker's VmHWM also counts the shared object-store pages of every object it ever read or wrote;
    its private memory is what a task itself needs.
    """

    def __init__(self) -> None:
        self.peak_mib = 0.0
        self.start_mib = 0.0  # at ``__enter__``: a reused worker's heap from its earlier tasks is in peak_mib too
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            self.peak_mib = max(self.peak_mib, proc_status_mib("RssAnon") or 0.0)
            if self._stop.wait(0.05):
                return

    def __enter__(self) -> PrivateMemoryPeak:
        self.start_mib = self.peak_mib = proc_status_mib("RssAnon") or 0.0
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mib = max(self.peak_mib, proc_status_mib("RssAnon") or 0.0)
