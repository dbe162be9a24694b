"""Crashes of a detect writer at each failpoint of the commit, of the driver at random moments, and of
``--overwrite`` half-way; each time a rerun converges to the clean run, row for row (local and S3).

The writer that dies at a commit failpoint is :mod:`tests.helpers.writer`: the driver's opening of the
output and the detector's real commit (``Detector`` -> ``write_parts`` -> storage), in one process without
Ray, so that ``os._exit`` lands exactly at the failpoint, a few seconds after it starts. The driver kills
and the ``--overwrite`` crash run the real CLI against the shared cluster.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import time

import pytest

from detbatch import storage
from detbatch.cli import main as cli_main
from detbatch.config import ConfigError
from detbatch.detect.driver import run_detect
from detbatch.detect.lease import LEASE_DIR
from detbatch.detect.output import RUN_FILE, STATE_FILE, read_json
from detbatch.detect import sink
from detbatch.detect.sink import read_commit_log
from detbatch.faults import FAILPOINT_EXIT_CODE
from tests.detect.test_driver import DETECTOR_CLASS
from tests.helpers.exactly_once import (
    NUM_IMAGES,
    NUM_INPUTS,
    ROWS_PER_FILE,
    STORAGES,
    assert_same_as_clean,
    check_invariants,
    cli_args,
    committed_parts,
    config_values,
    detect_argv,
    detect_config,
    run_writer,
    snapshot,
    wait_for,
    wait_for_idle_cluster,
)

pytestmark = pytest.mark.usefixtures("ray_cluster")


def _part(unit: int, generation: int = 1) -> str:
    """The pattern of unit ``unit``'s part as one call commits it (every unit of the input is one call)."""
    return rf"{unit:08d}-0000000-{ROWS_PER_FILE:07d}-last\.g{generation:06d}\.parquet"


_TEMP = r"\.tmp-\d+-[0-9a-f]{8}"
_LEASE_1 = r"_detbatch/lease/0000000001\.json"
_STATE = r"_detbatch/state\.json"
_ATTEMPT_1 = rf"_detbatch/attempts/g000001-00000001-0000000-00000001-{ROWS_PER_FILE - 1:07d}-{ROWS_PER_FILE}\.json"
_PAIR_0 = [f"images/{_part(0)}", f"detections/{_part(0)}"]
# What a writer that dies at each point leaves: the parts committed, and every file there (as patterns).
# Passes of storage.after_temporary_write (local writes): 1 the lease, 2 state.json, then three per call:
# its attempt record (detbatch.detect.detector), its detections file, its images file.
CRASHES = [
    pytest.param("storage.after_temporary_write=exit@1", ("local",), 0,
                 [rf"_detbatch/lease/\.0000000001\.json{_TEMP}"], id="temporary-of-the-lease"),
    pytest.param("storage.after_temporary_write=exit@2", ("local",), 0,
                 [_LEASE_1, rf"_detbatch/\.state\.json{_TEMP}"], id="temporary-of-state"),
    pytest.param("storage.after_temporary_write=exit@6", ("local",), 1,
                 [_LEASE_1, _STATE, *_PAIR_0, rf"_detbatch/attempts/\.{_ATTEMPT_1[len('_detbatch/attempts/'):]}{_TEMP}"],
                 id="temporary-of-an-attempt-record"),
    pytest.param("storage.after_temporary_write=exit@8", ("local",), 1,
                 [_LEASE_1, _STATE, *_PAIR_0, _ATTEMPT_1, f"detections/{_part(1)}", rf"images/\.{_part(1)}{_TEMP}"],
                 id="temporary-of-a-commit"),
    pytest.param("sink.between_detections_and_images=exit@2", STORAGES, 1,
                 [_LEASE_1, _STATE, *_PAIR_0, _ATTEMPT_1, f"detections/{_part(1)}"], id="half-pair"),
    pytest.param("sink.after_commit=exit@2", STORAGES, 2,
                 [_LEASE_1, _STATE, *_PAIR_0, _ATTEMPT_1, f"images/{_part(1)}", f"detections/{_part(1)}"],
                 id="after-commit"),
]


@pytest.mark.parametrize("failpoints, storages, committed, leftovers", CRASHES)
def test_writer_dies_at_a_commit_failpoint_then_rerun_converges(store, clean, failpoints, storages, committed,
                                                                  leftovers):
    if store.kind not in storages:
        pytest.skip(f"{failpoints.split('=')[0]} is a point of local writes only")
    out = store.output("crash")
    died = run_writer(config_values(store, out), failpoints=failpoints)
    assert died.returncode == FAILPOINT_EXIT_CODE, died.stderr[-3000:]

    # What the crash left, file by file; the commit log counts only the whole pairs among it.
    left = sorted(snapshot(out))
    assert len(left) == len(leftovers) and all(any(re.fullmatch(p, n) for n in left) for p in leftovers), left
    log = read_commit_log(out)
    assert [(p.unit, p.start, p.stop) for p in log.parts] == [(u, 0, ROWS_PER_FILE) for u in range(committed)]
    counted = {storage.join(out, t, p.name) for p in log.parts for t in ("images", "detections")}
    in_tables = {storage.join(out, n) for n in left if n.split("/")[0] in ("images", "detections")}
    assert sorted(in_tables - counted) == sorted(log.debris)  # half pairs and temporaries: debris, not data

    summary = run_detect(detect_config(store, out))
    assert summary.images_resumed == committed * ROWS_PER_FILE  # only the rest was processed
    assert_same_as_clean(out, clean)
    check_invariants(out, state_temporaries_ok=True)
    dead_writer_leased = any(p == _LEASE_1 for p in leftovers)
    assert read_json(storage.join(out, RUN_FILE))["lease_generation"] == (2 if dead_writer_leased else 1)
    again = run_detect(detect_config(store, out))
    assert again.already_complete and again.images_processed == 0
    assert_same_as_clean(out, clean)


def test_actors_killed_writing_their_attempt_records_leave_nothing(store, clean, ray_cluster, tmp_path):
    """A detector actor dies (os._exit, as a SIGKILL) after writing the temporary of its third call's
    attempt record, and so does each actor Ray restarts in its place; Ray retries those calls in the same
    run. The run equals the clean run, and the temporaries the dead actors left are gone with their records
    (they were once left for good: tests/detect/test_chaos.py)."""
    if store.kind != "local":
        pytest.skip("storage.after_temporary_write is a point of local writes only")
    out = store.output("attempt-kills")
    args = cli_args(store, out, ray_cluster.address, "--set", "inference.min_actors=1",
                    "--set", "inference.max_actors=1")
    # Only the actors write under _detbatch/attempts/: the driver runs with the same variable and lives.
    env = {**_env(), "DETBATCH_FAILPOINTS": "storage.after_temporary_write:attempts=exit@3"}
    restarts = _detector_restarts(ray_cluster)
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # 8 calls of one actor: each process commits two and dies on the third's record.
    assert _detector_restarts(ray_cluster) - restarts == 3
    attempts = storage.join(out, sink.ATTEMPTS_DIR)
    assert storage.list_names(attempts, hidden=True) == []
    assert_same_as_clean(out, clean)
    check_invariants(out)


def _detector_restarts(cluster) -> int:
    """Restarts of every detector actor the test cluster has had (by its address: tests/detect/test_chaos.py)."""
    from ray.util.state import list_actors

    actors = list_actors(address=cluster.address, filters=[("class_name", "=", DETECTOR_CLASS)], detail=True,
                         limit=10000)
    return sum(a.num_restarts for a in actors)


def test_overwrite_killed_after_clearing_parts(store, clean, ray_cluster):
    """``--overwrite`` dies between deleting the old parts and the old state: the output is still
    recognised as a detbatch output (the old settings are refused), and ``--overwrite`` finishes the job."""
    out = store.output("overwrite-crash")
    old = run_writer(config_values(store, out, **{"model.score_threshold": 0.3}))
    assert old.returncode == 0, old.stderr[-3000:]
    assert committed_parts(out) == 8
    crash = subprocess.run(cli_args(store, out, ray_cluster.address, "--overwrite"), capture_output=True, text=True,
                           env={**_env(), "DETBATCH_FAILPOINTS": "output.after_clearing_parts=exit"}, timeout=120)
    assert crash.returncode == FAILPOINT_EXIT_CODE, crash.stderr[-3000:]
    left = snapshot(out)
    assert not [n for n in left if n.startswith(("images/", "detections/"))] and RUN_FILE not in left
    assert read_json(storage.join(out, STATE_FILE))["fingerprint"]["score_threshold"] == 0.3

    with pytest.raises(ConfigError, match=r"score_threshold: 0.3 -> 0.0.*--overwrite"):
        run_detect(detect_config(store, out))
    summary = run_detect(detect_config(store, out, **{"output.overwrite": True}))
    assert summary.images_resumed == 0 and summary.images_processed == NUM_INPUTS
    assert_same_as_clean(out, clean)
    check_invariants(out)
    assert run_detect(detect_config(store, out)).already_complete


# Driver kills per storage: the first at a seeded time after the start (while it connects, leases, lists,
# or starts its pool), the next a seeded time after a seeded number of further commits.
DRIVER_KILLS = 2


def test_resume_after_driver_killed_at_random_moments(store, clean, ray_cluster, tmp_path, capsys, caplog):
    """SIGKILL the CLI driver again and again, each rerun started at once (the killed run's actors may
    still be committing: the rerun takes the dead run's lease without --take-over and fences them off by
    generation); then the same command exits 0 having done only the rest (the clean run, every image
    once), and the one after it finds the output complete."""
    rng = random.Random(f"driver-kills-{store.kind}")
    out = store.output("kills")
    args = cli_args(store, out, ray_cluster.address, rows_per_file=1)
    moments = []
    for kill in range(DRIVER_KILLS):
        before = committed_parts(out)
        log = open(tmp_path / f"driver-{kill}.log", "w")  # a file, not a pipe nobody reads: a full pipe would block it
        proc = subprocess.Popen(args, stdout=log, stderr=log, env=_env())
        try:
            if kill == 0:
                time.sleep(rng.uniform(0.5, 4.0))
            else:
                target = min(before + rng.randint(1, 3), NUM_INPUTS - 3)
                wait_for(lambda: committed_parts(out) >= target, 240, f"{target} committed parts", proc)
                time.sleep(rng.uniform(0.0, 0.25))
            assert proc.poll() is None, f"the driver ended (rc {proc.returncode}) before kill {kill}"
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait()
            log.close()
        moments.append((before, committed_parts(out)))
        assert not storage.exists(storage.join(out, RUN_FILE))
    assert moments[-1][1] > 0, moments  # the last kill landed mid-run

    # The same command again, in this process (on its connection to the test cluster).
    capsys.readouterr()
    assert cli_main(detect_argv(store, out, rows_per_file=1)) == 0
    line = capsys.readouterr().out
    resumed = int(re.search(r", (\d+) resumed -> ", line).group(1))
    assert f"detect: {NUM_IMAGES} images ok, 1 in error, {len(clean.detections)} detections," in line, line
    assert moments[-1][1] <= resumed < NUM_INPUTS  # parts the killed run's actors committed late count too
    assert "taking over the lease of a dead run" in caplog.text
    # One lease per run that got as far as taking one (the first kill may land before), this one the last.
    leases = storage.list_names(storage.join(out, LEASE_DIR))
    assert read_json(storage.join(out, RUN_FILE))["lease_generation"] == len(leases) >= 2
    assert_same_as_clean(out, clean)
    check_invariants(out)
    again = run_detect(detect_config(store, out, **{"output.rows_per_file": 1}))
    assert again.already_complete and again.images_processed == 0
    wait_for_idle_cluster()


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "DETBATCH_FAILPOINTS"}
