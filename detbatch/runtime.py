"""Connecting to Ray: the job's cluster when there is one, else a local Ray started in-process."""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

# Storage settings the driver was given, forwarded to the workers of a cluster that was started
# elsewhere (`ray start`), so that every stage sees the same endpoint. A local Ray started here
# inherits the driver's environment and needs no forwarding.
_FORWARDED_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_PROFILE",
)

# Modules a local Ray's worker processes import as they start, before any actor needs them:
# importing torch + torchvision takes seconds (torchvision.ops pulls in torch._dynamo), and every
# detector actor would otherwise pay it after the job has started. On a cluster, set
# RAY_preload_python_modules=torch,torchvision in the environment of `ray start` (see cluster.yaml).
PRELOAD_MODULES = ["torch", "torchvision"]


def _current_cluster() -> str | None:
    """The cluster ``ray.init()`` would join (``ray start``'s address file), if any."""
    try:
        from ray._private.utils import read_ray_address
    except ImportError:  # moved in another Ray version: let ray.init() decide
        return "unknown"
    return read_ray_address()


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to Ray once per process.

    ``address=None``: the job's cluster (``RAY_ADDRESS``, set by ``ray job submit``), else the Ray
    last started on this machine with ``ray start`` (Ray's own rule), else a new local Ray with torch
    preloaded in its workers.
    ``"local"`` always starts a new local Ray (with ``num_cpus`` CPUs, default all). Any other value
    is passed to ``ray.init`` (``"auto"``, ``"ray://host:10001"``).
    """
    import ray

    if ray.is_initialized():
        return
    env = {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ}
    runtime_env = {"env_vars": env} if env else None
    common = {"logging_level": logging.WARNING, "log_to_driver": True}
    local = {"address": "local", "num_cpus": num_cpus, "_system_config": {"preload_python_modules": PRELOAD_MODULES}}
    start_here = address == "local" or (address is None and not os.environ.get("RAY_ADDRESS") and not _current_cluster())
    if start_here:
        ray.init(**local, **common)
    else:
        ray.init(address=address, runtime_env=runtime_env, **common)
    logger.info("connected to Ray: %s", ray.get_runtime_context().gcs_address)
