"""Session-wide fixtures: one moto S3 server and one two-node Ray cluster for the whole run."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from pathlib import Path

import pytest

COCO128 = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128"

# Ray Data's usage poller queries a Prometheus that local clusters do not run and logs each miss at
# DEBUG, from a daemon thread that outlives pytest's captured streams ("--- Logging error ---" at exit).
logging.getLogger("ray.data._internal.usage.util").setLevel(logging.WARNING)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 HTTP endpoint (moto) on loopback; AWS_* variables point every client at it."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    yield endpoint
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_endpoint) -> str:
    """A new, empty bucket for one test: ``s3://name``."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def ray_cluster(s3_endpoint):
    """Two Ray nodes on this machine (head + worker), shared by every test that needs Ray.

    Started after the S3 server so that every worker inherits the AWS_* settings. The worker node
    carries the custom resource ``node_b`` so tests can tell (or force) where work lands; each node has one
    ``detector_slot``, so a pool of two actors that each need one must span both nodes.
    """
    import ray
    from ray.cluster_utils import Cluster

    from detbatch.runtime import local_ray_env

    def start() -> Cluster:
        with local_ray_env():  # workers as detbatch's local Ray runs them (jemalloc; runtime.WORKER_ENV)
            # A node whose raylet is killed (test_chaos) is declared dead after 5 failed health checks: one a
            # second here, not Ray's one in 3 s. Each check still waits up to Ray's 10 s for a reply, so a
            # raylet slowed by load is not taken for dead.
            cluster = Cluster(initialize_head=True,
                              head_node_args={"num_cpus": 2, "resources": {"node_a": 100, "detector_slot": 1},
                                              "_system_config": {"health_check_period_ms": 1000}})
            try:
                cluster.add_node(num_cpus=2, resources={"node_b": 100, "detector_slot": 1})
                cluster.wait_for_nodes()
            except Exception:
                cluster.shutdown()
                raise
        return cluster

    # Ray gives a raylet 30 s to register, which a loaded 2-core machine can miss: one retry.
    try:
        cluster = start()
    except Exception as e:  # "The current node timed out during startup"
        logging.getLogger(__name__).warning("Ray test cluster failed to start (%s); retrying once", e)
        cluster = start()
    ray.init(address=cluster.address)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="session")
def coco128() -> Path:
    if not (COCO128 / "annotations" / "instances.json").exists():
        pytest.skip(f"COCO128 not found at {COCO128}")
    return COCO128
