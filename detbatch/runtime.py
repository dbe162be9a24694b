"""Connecting to Ray: the job's cluster when there is one, else a local Ray started in-process."""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

# Storage settings the driver was given; Ray workers on this machine inherit the driver's
# environment, but passing them through the runtime env also reaches workers of a cluster started
# elsewhere (`ray start`), so every stage sees the same endpoint.
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


def init_ray(address: str | None = None) -> None:
    """Connect to Ray once per process.

    ``address=None`` means: the cluster of the job this runs in (``RAY_ADDRESS``, set by
    ``ray job submit``), else a new local Ray. ``"auto"`` joins a running local cluster.
    """
    import ray

    if ray.is_initialized():
        return
    env = {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ}
    ray.init(
        address=address,
        runtime_env={"env_vars": env} if env else None,
        logging_level=logging.WARNING,
        log_to_driver=True,
    )
    logger.info("connected to Ray: %s", ray.get_runtime_context().gcs_address)
