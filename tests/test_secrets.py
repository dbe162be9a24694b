"""AWS credentials stay out of everything detbatch writes and logs, and out of Ray's job table unless the
user opts in (DETBATCH_FORWARD_AWS_SECRETS=1; detbatch.runtime.forwarded_env)."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys

import pandas as pd
import pytest

from detbatch import storage
from detbatch.cli import main
from detbatch.datasets.synth import synthesize

# Known fake credentials: moto's S3 accepts any (it checks no signature), so the driver really signs with them.
SECRET = "detbatchFakeSecretKey0123456789abcdefXYZ"
TOKEN = "detbatchFakeSessionToken9876543210zyxwvu"
FAST_MODEL = "ssdlite320_mobilenet_v3_large"


def _files_holding(uri: str, needles: tuple[str, ...]) -> dict[str, list[str]]:
    """Each file under ``uri`` that holds any of ``needles``: in its bytes, or, for Parquet, whose pages are
    compressed, in any value of its table."""
    fs, root = storage.resolve(uri)
    found = {}
    for path in fs.find(root):
        with fs.open(path, "rb") as f:
            data = f.read()
        texts = [data.decode("utf-8", "replace")]
        if path.endswith(".parquet"):
            texts.append(pd.read_parquet(io.BytesIO(data)).to_csv())
        hits = [n for n in needles if any(n in t for t in texts)]
        if hits:
            found[path] = hits
    return found


def test_the_scan_finds_a_planted_secret(tmp_path):
    pd.DataFrame({"uri": [f"s3://x/{i}-{SECRET}.jpg" for i in range(1000)]}).to_parquet(
        tmp_path / "t.parquet", compression="zstd")
    (tmp_path / "run.json").write_text(f'{{"token": "{TOKEN}"}}')
    (tmp_path / "clean.json").write_text("{}")
    assert _files_holding(str(tmp_path), (SECRET, TOKEN)) == {
        str(tmp_path / "t.parquet"): [SECRET], str(tmp_path / "run.json"): [TOKEN]}


def test_detect_and_evaluate_write_and_log_no_secret(ray_cluster, s3_bucket, monkeypatch, caplog, capfd):
    import s3fs

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    s3fs.S3FileSystem.clear_instance_cache()  # a cached client would still sign with the session's "testing"
    caplog.set_level(logging.INFO)  # the CLI's level

    synth = synthesize(f"{s3_bucket}/synth", 5, seed=1)
    run, evaluation = f"{s3_bucket}/run", f"{s3_bucket}/eval"
    assert main(["detect", "--input", synth.images_uri, "--output", run, "--model", FAST_MODEL, "--weights", "none",
                 "--score-threshold", "0", "--batch-size", "4", "--device", "cpu",
                 "--set", "model.detections_per_image=5"]) == 0
    assert main(["evaluate", "--detections", run, "--ground-truth", synth.annotations_uri, "--out", evaluation]) == 0

    fs, root = storage.resolve(s3_bucket)
    written = [p[len(root) + 1:] for p in fs.find(root)]
    for expected in ("run/run.json", "run/_detbatch/state.json", "run/_detbatch/lease/", "run/detections/",
                     "run/images/", "eval/metrics.json", "eval/report.md"):
        assert any(p.startswith(expected) for p in written), (expected, written)
    assert _files_holding(run, (SECRET, TOKEN)) == {}
    assert _files_holding(evaluation, (SECRET, TOKEN)) == {}
    captured = capfd.readouterr()
    logs = caplog.text + captured.out + captured.err
    assert "detect:" in captured.out  # the CLI's summary was captured, so its output was looked at
    assert SECRET not in logs and TOKEN not in logs


def _job_record(job_id: str) -> bytes:
    """The job's entry in the GCS job table, serialized: its config holds the runtime_env it connected with."""
    from ray._private.state import state
    from ray.core.generated import gcs_pb2

    accessor = state._connect_and_get_accessor()
    for raw in accessor.get_job_table(skip_submission_job_info_field=True, skip_is_running_tasks_field=True):
        if gcs_pb2.JobTableData.FromString(raw).job_id.hex() == job_id:
            return raw
    raise AssertionError(f"job {job_id} not in the job table")


@pytest.mark.parametrize("opt_in", ["", "1"])
def test_the_job_table_holds_credentials_only_with_the_opt_in(ray_cluster, opt_in):
    """A driver joining a running cluster, as `detbatch detect` does under `ray job submit`."""
    script = ("import logging; logging.basicConfig(level=logging.INFO); import ray; "
              "from detbatch.runtime import init_ray; init_ray(); print('job', ray.get_runtime_context().get_job_id())")
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.address, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_SESSION_TOKEN": TOKEN, "DETBATCH_FORWARD_AWS_SECRETS": opt_in}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.split("job ")[-1].strip()
    record = _job_record(job_id)
    assert os.environ["AWS_ENDPOINT_URL"].encode() in record  # the settings do travel
    assert (SECRET.encode() in record, TOKEN.encode() in record) == (opt_in == "1",) * 2
    names = "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN"
    expected = f"forwarding {names} to the workers" if opt_in else f"not forwarding {names} to the workers"
    assert expected in done.stderr
    assert SECRET not in done.stdout + done.stderr and TOKEN not in done.stdout + done.stderr


def test_verbose_logs_hold_no_session_token(s3_bucket, monkeypatch, caplog):
    import s3fs

    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    s3fs.S3FileSystem.clear_instance_cache()
    # As in a fresh `detbatch -v` process: Ray's AWS launcher module, once imported (test_cluster_yaml), sets
    # botocore's logger to WARNING for the rest of the process.
    botocore, level = logging.getLogger("botocore"), logging.getLogger("botocore").level
    botocore.setLevel(logging.NOTSET)
    caplog.set_level(logging.DEBUG)  # what -v gives the root logger
    try:
        assert main(["-v", "synth", f"{s3_bucket}/synth", "--images", "1"]) == 0
    finally:
        botocore.setLevel(level)
    assert TOKEN not in caplog.text
