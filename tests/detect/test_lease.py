"""One writer per output: the lease (acquire, release, check, heartbeat) on local disk and on S3, two drivers
started at once, a fenced zombie of an older generation, and a live holder on another host. (A rerun right
after a SIGKILL: tests/detect/test_crash.py.)"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict

import pandas as pd
import pyarrow as pa
import pytest

from detbatch import storage
from detbatch.cli import main as cli_main
from detbatch.detect import lease as lease_module
from detbatch.detect import sink
from detbatch.detect.detector import SCORED_SCHEMA
from detbatch.detect.driver import run_detect
from detbatch.detect.lease import LEASE_DIR, Holder, Lease, LeaseHeld, LeaseLost, current_holder
from detbatch.detect.output import RUN_FILE, read_json
from detbatch.detect.units import list_input
from tests.helpers.exactly_once import (
    ROWS_PER_FILE,
    STORAGES,
    assert_same_as_clean,
    check_invariants,
    cli_args,
    detect_argv,
    config_values,
    copy_tree,
    detect_config,
    new_bucket,
    run_writer,
    snapshot,
    start_writer,
    wait_for,
)
from tests.helpers.writer import FENCED_EXIT_CODE, calls, detector


@pytest.fixture(params=STORAGES)
def output(request, tmp_path, s3_endpoint) -> str:
    """A fresh output URI on local disk or on S3 (for the lease's own tests: no Ray)."""
    return str(tmp_path / "out") if request.param == "local" else f"{new_bucket(s3_endpoint)}/runs/out"


def _lease_file(output: str, generation: int) -> str:
    return storage.join(output, LEASE_DIR, f"{generation:010d}.json")


def _write_holder(output: str, generation: int, **fields) -> Holder:
    """A lease file written by hand, as another run (on this host or another) would have left it."""
    now = time.time()
    holder = Holder(**{"generation": generation, "host": socket.gethostname(), "pid": os.getpid(),
                       "process_start": "", "job_id": None, "started_at": now, "heartbeat_at": now,
                       "token": f"by-hand-{generation}", **fields})
    assert storage.create_exclusive(_lease_file(output, generation), json.dumps(asdict(holder)).encode())
    return holder


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ------------------------------------------------------------------------------------------ the lease itself


def test_acquire_check_release(output):
    first = Lease.acquire(output, 60)
    assert first.generation == 1
    on_disk = current_holder(output)
    assert on_disk == first.holder and on_disk.alive(60)
    assert (on_disk.host, on_disk.pid, on_disk.released) == (socket.gethostname(), os.getpid(), False)
    with pytest.raises(LeaseHeld, match=r"is being written by another detect run \(generation 1, host .*--take-over") \
            as refused:
        Lease.acquire(output, 60)
    assert f"pid {os.getpid()}," in str(refused.value)
    first.check()  # nobody newer: no error
    first.release()
    assert current_holder(output).released

    second = Lease.acquire(output, 60)  # released: taken at once
    third = Lease.acquire(output, 60, take_over=True)  # live, but the user says it is dead
    assert (second.generation, third.generation) == (2, 3)
    with pytest.raises(LeaseLost, match=r"a newer run took this output's lease \(generation 3"):
        second.check()
    second.release()  # a superseded lease's release leaves the newer one alone
    assert current_holder(output).generation == 3 and not current_holder(output).released
    third.release()
    # Lease files are never deleted: a zombie of any generation can see that it was superseded.
    assert sorted(storage.list_names(storage.join(output, LEASE_DIR))) == [f"{g:010d}.json" for g in (1, 2, 3)]


def test_heartbeat_until_superseded(output, monkeypatch):
    monkeypatch.setattr(lease_module, "HEARTBEAT_S", 0.1)
    held = Lease.acquire(output, 60)
    try:
        started = current_holder(output).heartbeat_at
        wait_for(lambda: current_holder(output).heartbeat_at > started, 30, "a heartbeat")
        newer = Lease.acquire(output, 60, take_over=True)
        wait_for(lambda: held.lost_to is not None, 30, "the heartbeat to notice the newer lease")
        assert held.lost_to.generation == 2
        last_beat = json.loads(storage.read_text(_lease_file(output, 1)))["heartbeat_at"]
        time.sleep(0.5)
        assert json.loads(storage.read_text(_lease_file(output, 1)))["heartbeat_at"] == last_beat  # it stopped
        with pytest.raises(LeaseLost):
            held.check()
    finally:
        held.release()
    assert not json.loads(storage.read_text(_lease_file(output, 1)))["released"]
    newer.release()


def test_racing_acquires_exactly_one_wins(output):
    racers = 6
    barrier, results = threading.Barrier(racers), []

    def race() -> None:
        barrier.wait()
        try:
            results.append(Lease.acquire(output, 60))
        except LeaseHeld as e:
            results.append(e)

    threads = [threading.Thread(target=race) for _ in range(racers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [r for r in results if isinstance(r, Lease)]
    assert len(won) == 1 and len(results) == racers
    assert storage.list_names(storage.join(output, LEASE_DIR)) == ["0000000001.json"]
    won[0].release()


def test_dead_holder_on_this_host_is_taken_over_at_once(output, caplog):
    _write_holder(output, 1, pid=_dead_pid(), process_start="12345")
    taken = Lease.acquire(output, 3600)
    assert taken.generation == 2 and "taking over the lease of a dead run" in caplog.text
    taken.release()
    # This pid, but another process start time: an earlier process that had this pid.
    _write_holder(output, 3, process_start="not-this-process")
    taken = Lease.acquire(output, 3600)
    assert taken.generation == 4
    taken.release()


def test_live_holder_on_another_host(output):
    _write_holder(output, 1, host="other-host-7", pid=4242)
    with pytest.raises(LeaseHeld, match=r"generation 1, host other-host-7, pid 4242, .*last heartbeat \d s ago"):
        Lease.acquire(output, 60)
    _write_holder(output, 2, host="other-host-7", pid=4242, heartbeat_at=time.time() - 30)
    with pytest.raises(LeaseHeld):
        Lease.acquire(output, 60)
    taken = Lease.acquire(output, 10)  # its heartbeat is older than the timeout: taken for dead
    assert taken.generation == 3
    taken.release()
    _write_holder(output, 4, host="other-host-7", pid=4242)
    taken = Lease.acquire(output, 60, take_over=True)
    assert taken.generation == 5
    taken.release()


def _scored(unit: int, indices: list[int]) -> pa.Table:
    n = len(indices)
    return pa.Table.from_pydict(
        {"unit": [unit] * n, "index": indices, "last": [False] * n, "uri": [f"u{unit}/{i}" for i in indices],
         "image_id": indices, "width": [10] * n, "height": [10] * n, "status": ["ok"] * n, "error": [None] * n,
         "category_id": [[1]] * n, "category": [["square"]] * n, "score": [[0.5]] * n, "box": [[1.0, 2.0, 3.0, 4.0]] * n},
        schema=SCORED_SCHEMA,
    )


def test_write_parts_of_an_old_generation_is_fenced(output):
    old = Lease.acquire(output, 60)
    sink.write_parts(_scored(0, [0, 1]), output, old.generation)
    newer = Lease.acquire(output, 60, take_over=True)
    before = snapshot(output)
    with pytest.raises(LeaseLost, match="generation 1 stops writing"):
        sink.write_parts(_scored(1, [0, 1]), output, old.generation)
    assert snapshot(output) == before  # not even a detections file
    sink.write_parts(_scored(1, [0, 1]), output, newer.generation)
    assert [p.name for p in sink.read_commit_log(output).parts] == [
        "00000000-0000000-0000002.g000001.parquet", "00000001-0000000-0000002.g000002.parquet"]
    old.release()
    newer.release()


# ------------------------------------------------------------------------------------------ detect runs


def test_two_drivers_started_at_once(store, clean, ray_cluster):
    out = store.output("two-drivers")
    procs = [subprocess.Popen(cli_args(store, out, ray_cluster.address), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p, *p.communicate(timeout=300)) for p in procs]
    (winner, won_out, _), = [r for r in results if r[0].returncode == 0]
    (loser, _, lost_err), = [r for r in results if r[0].returncode != 0]
    assert loser.returncode == 2, lost_err[-3000:]
    assert "is being written by another detect run" in lost_err or "took the lease at the same moment" in lost_err
    assert f"pid {winner.pid}," in lost_err, lost_err[-3000:]  # it names the holder
    assert "images ok" in won_out
    # Exactly one took a lease; the output is the clean run's.
    assert storage.list_names(storage.join(out, LEASE_DIR)) == ["0000000001.json"]
    assert current_holder(out).pid == winner.pid and current_holder(out).released
    assert_same_as_clean(out, clean)
    check_invariants(out)


@pytest.fixture(scope="module")
def fenced_output(store, clean, ray_cluster):
    """An output written by a driver killed after its first commit (generation 1), then by its zombie (the
    killed run's actors, still committing generation 1) while a newer run (generation 2) takes over; and
    after that run finished, one more part of the zombie's, which passed its fencing check just before
    generation 2 existed and landed late (a stalled writer). Returns (output, zombie's result)."""
    out = store.output("zombie")
    values = config_values(store, out)
    killed = run_writer(values, failpoints="sink.after_commit=exit@1")  # a driver dead after one commit
    assert killed.returncode == 97, killed.stderr[-3000:]

    zombie = start_writer(values, "--generation", "1", "--pace", "1.0", "--one-image-calls")
    try:
        first = zombie.stdout.readline()
        assert first.startswith("committed"), zombie.stderr.read()[-3000:]
        summary = run_detect(detect_config(store, out))  # generation 2, while the zombie writes on
        zombie_out, zombie_err = zombie.communicate(timeout=120)
    finally:
        if zombie.poll() is None:
            zombie.kill()
            zombie.wait()
    assert read_json(storage.join(out, RUN_FILE))["lease_generation"] == 2

    # The stalled writer: its check ran before generation 2 existed, its files land now.
    config = detect_config(store, out)
    late = detector(config, generation=1)
    log = sink.read_commit_log(out)
    unit = max(p.unit for p in log.parts if p.generation == 2)
    real_check = sink.superseded
    sink.superseded = lambda output, generation: False
    try:
        for _, batch in calls(list_input(store.input), ROWS_PER_FILE, sink.CommitLog(), one_image_calls=True,
                              units={unit}):
            late(batch)
            break
    finally:
        sink.superseded = real_check
    return out, summary, zombie.returncode, first + zombie_out, zombie_err


def test_fenced_zombie_does_not_change_the_result(fenced_output, clean):
    out, summary, zombie_rc, zombie_out, zombie_err = fenced_output
    assert zombie_rc == FENCED_EXIT_CODE and "fenced" in zombie_err, zombie_err[-3000:]
    zombie_parts = len(zombie_out.splitlines())
    assert zombie_parts >= 1
    log = sink.read_commit_log(out)
    # The zombie's parts that landed before generation 2 are valid and count (generation 2 skipped them);
    # the late one is overlapped by generation 2's part of the same images and does not.
    assert summary.images_resumed >= ROWS_PER_FILE + 1
    assert len(log.debris) == 2 and all(".g000001." in d for d in log.debris)
    assert_same_as_clean(out, clean)
    check_invariants(out, debris_ok=True)


def test_next_run_removes_a_late_zombie_part(fenced_output, store):
    out = fenced_output[0]
    assert run_detect(detect_config(store, out)).already_complete
    fs, path = storage.resolve(out)
    images = pd.read_parquet(storage.join(path, "images"), filesystem=fs)
    assert not images.uri.duplicated().any()


def test_live_holder_on_another_host_refused_then_taken_over(store, clean, capsys):
    """A lease whose holder is on another host with a fresh heartbeat: refused (exit 2, naming it); taken
    with --take-over, and once its heartbeat is older than output.lease_timeout_s."""
    out = store.output("other-host")
    # A partial output of the same settings: units 0-4 and 7 committed, unit 6 a half pair, unit 5 absent.
    copy_tree(clean.output, out, keep=lambda name: not name.startswith((RUN_FILE, "images/00000005", "images/00000006",
                                                                        "detections/00000005")))
    base = detect_argv(store, out)  # in this process, on its connection to the test cluster
    _write_holder(out, 2, host="other-host-7", pid=4242)
    assert cli_main(base) == 2
    err = capsys.readouterr().err
    assert f"{out} is being written by another detect run (generation 2, host other-host-7, pid 4242" in err
    assert "--take-over" in err and "lease_timeout_s" in err

    assert cli_main([*base, "--take-over"]) == 0  # resumes the copied parts, finishes the rest
    assert read_json(storage.join(out, RUN_FILE))["lease_generation"] == 3
    assert_same_as_clean(out, clean)
    check_invariants(out)

    _write_holder(out, 4, host="other-host-7", pid=4242, heartbeat_at=time.time() - 30)
    assert cli_main(base) == 2
    assert re.search(r"last heartbeat 3\d s ago", capsys.readouterr().err)
    assert cli_main([*base, "--set", "output.lease_timeout_s=10"]) == 0
    assert "already complete" in capsys.readouterr().out
    assert current_holder(out).generation == 5 and current_holder(out).released
