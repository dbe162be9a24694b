"""Ray jobs on a real two-node cluster started with the `ray start` CLI, submitted with `ray job submit`.

The cluster is this module's own, separate from the session's in-process ``ray_cluster``: its own ports, its own
``--temp-dir`` (so that nothing else on the machine finds it through ``/tmp/ray``), and token authentication
with its own token, passed to every Ray process and client as ``RAY_AUTH_MODE=token`` +
``RAY_AUTH_TOKEN_PATH``. It is stopped by signalling the processes this module started — never ``ray stop``,
which stops every Ray on the machine.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
START_TIMEOUT_S = 240
JOB_TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_ports() -> list[str]:
    """Every port a node opens that has a fixed default (52365, 8265, 10001...), so two clusters never clash."""
    flags = ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
             "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port")
    return [arg for flag in flags for arg in (flag, str(_free_port()))]


@dataclass
class JobCluster:
    address: str
    """The dashboard (job submission) address: ``http://127.0.0.1:PORT``."""
    token: str
    env: dict[str, str]
    """Environment for Ray CLIs talking to this cluster: its token, no RAY_ADDRESS of another cluster."""
    temp_dir: Path

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def get(self, path: str, authenticated: bool = True) -> tuple[int, str]:
        request = urllib.request.Request(self.address + path, headers=self.headers() if authenticated else {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError as e:  # not listening yet
            return 0, str(e)

    def submit(self, *entrypoint: str) -> subprocess.CompletedProcess:
        """`ray job submit ... -- ENTRYPOINT`, waiting for the job; returns the CLI's exit code and output.

        A job whose actor could not get its runtime env (the working_dir package, fetched from the GCS by the
        worker node) is submitted once more: on an overloaded machine Ray sometimes fails that fetch. Every job
        here may run twice (detect resumes, evaluate and train rewrite their outputs).
        """
        cmd = [str(BIN / "ray"), "job", "submit", "--address", self.address, "--working-dir", str(REPO), "--", *entrypoint]
        done = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
        if done.returncode != 0 and "RuntimeEnvSetupError" in done.stdout + done.stderr:
            warnings.warn(f"runtime env setup failed, submitting again: {' '.join(entrypoint[:2])}")
            done = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
        return done


def _ray_env(token_path: Path) -> dict[str, str]:
    # No address or token of another cluster (the session's own Ray sets some of these in this process).
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS") and not k.startswith("RAY_AUTH_")}
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token_path),
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # the job's `python` is this venv's, as on a cluster node
        RAY_USAGE_STATS_ENABLED="0",
        RAY_raylet_start_wait_time_s="180",  # a loaded test machine can take minutes to register a node (default 60 s)
    )
    return env


def _start_node(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        # --block keeps `ray start` in the foreground as the node's parent: signalling it stops this node only.
        return subprocess.Popen([str(BIN / "ray"), "start", "--block", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _wait(what: str, ready, timeout: float, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(1)
    tails = "\n".join(f"--- {p}:\n{p.read_text(errors='replace')[-3000:]}" for p in logs if p.exists())
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s\n{tails}")


def _processes_of(temp_dir: Path) -> list[int]:
    """Pids of processes started for this cluster: their command line or working directory is under temp_dir."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if str(temp_dir) in cmdline or cwd.startswith(str(temp_dir)):
            pids.append(int(entry.name))
    return pids


def _stop(nodes: list[subprocess.Popen], temp_dir: Path) -> None:
    """Stop this cluster's processes only: each node's process group, then any stray under temp_dir."""
    for sig, wait_s in ((signal.SIGTERM, 3), (signal.SIGKILL, 5)):
        for node in reversed(nodes):  # worker first
            try:
                os.killpg(node.pid, sig)
            except ProcessLookupError:
                pass
        for node in nodes:
            try:
                node.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                pass
    for pid in _processes_of(temp_dir):  # anything that left the process group (job drivers, workers)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def job_cluster() -> Iterator[JobCluster]:
    # A short path: Ray's Unix sockets live under it and must stay within 107 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="dbj-", dir="/tmp"))
    token = secrets.token_hex(32)
    token_path = temp_dir / "auth_token"
    token_path.write_text(token)
    token_path.chmod(0o600)
    env = _ray_env(token_path)
    gcs_port, dashboard_port = _free_port(), _free_port()
    logs = [temp_dir / "head.log", temp_dir / "worker.log"]
    cluster = JobCluster(f"http://127.0.0.1:{dashboard_port}", token, env, temp_dir)
    nodes: list[subprocess.Popen] = []
    try:
        nodes.append(_start_node(
            ["--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs_port), "--temp-dir", str(temp_dir),
             "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port),
             "--ray-client-server-port", str(_free_port()), "--num-cpus", "2", "--num-gpus", "0",
             "--disable-usage-stats", *_node_ports()],
            env, logs[0]))
        # The head fully up first: on a busy machine a worker that starts alongside it may miss its registration deadline.
        _wait("head node's dashboard", lambda: cluster.get("/api/version")[0] == 200, START_TIMEOUT_S, logs)
        # ...and registered in the GCS: a worker that asks before then fails with "No node info found for head
        # node in GCS" (seen twice in a row on a loaded dev-2c, the dashboard already answering).
        _wait("head node alive in the GCS", lambda: _alive_nodes(cluster) == 1, START_TIMEOUT_S, logs)
        # Its own temp dir: nodes that share one also share runtime_resources/, and one node's cleanup of a job's
        # working_dir would delete it under the other node's running driver.
        worker = ["--address", f"127.0.0.1:{gcs_port}", "--node-ip-address", "127.0.0.1", "--temp-dir", str(temp_dir / "w"),
                  "--num-cpus", "2", "--num-gpus", "0", "--resources", json.dumps({"node_b": 1}), "--disable-usage-stats"]
        for attempt in range(2):  # an overloaded machine can make a node miss its registration deadline: once more
            nodes.append(_start_node([*worker, *_node_ports()], env, logs[1]))
            _wait("a second alive node", lambda: _alive_nodes(cluster) == 2 or nodes[-1].poll() is not None, START_TIMEOUT_S, logs)
            if _alive_nodes(cluster) == 2:
                break
        else:
            raise RuntimeError(f"the worker node did not join:\n{logs[1].read_text(errors='replace')[-3000:]}")
        yield cluster
    finally:
        _stop(nodes, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _alive_nodes(cluster: JobCluster) -> int:
    status, body = cluster.get("/api/v0/nodes?detail=false")
    if status != 200:
        return 0
    return sum(n.get("state") == "ALIVE" for n in json.loads(body)["data"]["result"]["result"])


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """A few labelled synthetic images (absolute paths: the jobs run in an unpacked copy of the repo)."""
    from detbatch.datasets.synth import synthesize

    root = tmp_path_factory.mktemp("shapes")
    synthesize(str(root), 6, seed=5)
    return root


def test_cluster_refuses_requests_without_the_token(job_cluster):
    assert job_cluster.get("/api/jobs/", authenticated=False)[0] == 401
    assert job_cluster.get("/api/jobs/")[0] == 200
    wrong = urllib.request.Request(job_cluster.address + "/api/jobs/", headers={"Authorization": "Bearer nope"})
    with pytest.raises(urllib.error.HTTPError, match="403"):
        urllib.request.urlopen(wrong, timeout=10)
    # The CLI sends the token only with RAY_AUTH_MODE=token (README: "Running on a cluster").
    no_mode = {k: v for k, v in job_cluster.env.items() if k != "RAY_AUTH_MODE"}
    done = subprocess.run([str(BIN / "ray"), "job", "list", "--address", job_cluster.address], env=no_mode,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "Missing authentication token" in done.stderr, done.stderr[-2000:]


@pytest.fixture(scope="module")
def detect_run(job_cluster, shapes, tmp_path_factory) -> Path:
    """`jobs/detect.py` submitted with the `ray job submit` CLI; its detector runs on the worker node.

    The driver runs on the head node (where jobs start), the detector actor needs the worker node's
    ``node_b`` resource: the run finishes only if both nodes take part.
    """
    out = tmp_path_factory.mktemp("runs") / "detect"
    done = job_cluster.submit(
        "python", "jobs/detect.py", "--config", "configs/local.yaml",
        "--input", str(shapes / "images"), "--manifest", str(shapes / "annotations.json"), "--output", str(out),
        "--model", "fasterrcnn_mobilenet_v3_large_320_fpn", "--weights", "none", "--score-threshold", "0",
        "--min-actors", "1", "--max-actors", "1", "--set", "inference.actor_resources={node_b: 1}",
        "--set", "input.images_per_unit=3", "--set", "output.rows_per_file=3",
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "detect: 6 images ok, 0 in error" in done.stdout, done.stdout[-4000:]
    return out


def test_detect_job_writes_the_output_contract(detect_run):
    import pandas as pd

    images = pd.read_parquet(detect_run / "images")
    detections = pd.read_parquet(detect_run / "detections")
    assert sorted(images["image_id"]) == [1, 2, 3, 4, 5, 6] and set(images["status"]) == {"ok"}
    assert len(detections) == images["num_detections"].sum() > 0
    run = json.loads((detect_run / "run.json").read_text())
    assert run["counts"] == {"images_ok": 6, "images_error": 0, "detections": len(detections)}


def test_evaluate_job_scores_the_detect_output(job_cluster, detect_run, shapes, tmp_path):
    out = tmp_path / "eval"
    done = job_cluster.submit(
        "python", "jobs/evaluate.py", "--detections", str(detect_run),
        "--ground-truth", str(shapes / "annotations.json"), "--out", str(out),
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    metrics = json.loads((out / "metrics.json").read_text())
    # A random-weights detector scores nothing; what counts here is that every image and detection arrived.
    assert metrics["metric"] == "coco" and 0.0 <= metrics["AP"] <= 1.0, metrics
    run = json.loads((detect_run / "run.json").read_text())
    assert metrics["pairing"]["run_images_paired"] == metrics["pairing"]["gt_images"] == 6, metrics["pairing"]
    assert metrics["pairing"]["detections"] == run["counts"]["detections"], metrics["pairing"]
    assert (out / "report.md").exists()


def test_failing_job_through_job_submission_client(job_cluster, shapes):
    """The SDK route, with a runtime_env: a bad input fails before any work, so the job ends FAILED."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(job_cluster.address, headers=job_cluster.headers())
    job_id = client.submit_job(
        entrypoint=f"python jobs/detect.py --input {shapes / 'nothing'} --output {shapes / 'never'}",
        runtime_env={"working_dir": str(REPO), "env_vars": {"AWS_DEFAULT_REGION": "us-west-2"}},
    )
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while (status := client.get_job_status(job_id)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.monotonic() < deadline, f"job {job_id} still {status}"
        time.sleep(1)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.FAILED, logs[-4000:]
    assert "detbatch detect: error:" in logs and "no such file, folder or prefix" in logs, logs[-4000:]
    assert "exit code 2" in client.get_job_info(job_id).message
    assert not (shapes / "never").exists()


def test_train_job_writes_a_checkpoint(job_cluster, shapes, tmp_path):
    """A few steps of the tiny model on the synthetic shapes; the best checkpoint lands at --model-uri."""
    done = job_cluster.submit(
        "python", "jobs/train.py", "--config", "configs/demo-train.yaml",
        "--train-annotations", str(shapes / "annotations.json"), "--train-images", str(shapes / "images"),
        "--epochs", "1", "--num-workers", "1", "--batch-size", "2", "--set", "data.val_fraction=0",
        "--set", "schedule.warmup_iters=0",
        "--storage-path", str(tmp_path / "train"), "--name", "job", "--model-uri", str(tmp_path / "model"),
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    from detbatch.models import load_checkpoint

    assert load_checkpoint(str(tmp_path / "model"))["model"]["name"] == "tiny_fcos"
