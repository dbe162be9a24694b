"""detect under chaos (issue 12): detector actors SIGKILLed at random while a run goes on, and a node of the
pool removed mid-run. Each run must equal a clean run of the same input row for row (the images table,
every image's detections), with the commit protocol's invariants (tests.helpers.exactly_once).
"""

from __future__ import annotations

import io
import os
import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from detbatch.datasets.synth import synthesize
from detbatch.detect import sink
from detbatch.detect.driver import isolation_retries, run_detect
from tests.detect.test_driver import DETECTOR_CLASS, FAST_MODEL, _config
from tests.helpers.exactly_once import Reference, assert_same_as_clean, check_invariants, read_tables

pytestmark = [pytest.mark.usefixtures("ray_cluster"), pytest.mark.slow]

# Three image sizes, so that calls mix shapes as a real input does; enough images for 30 calls.
SIZES_AND_COUNTS = ((64, 40), (96, 40), (128, 40))
NUM_IMAGES = sum(n for _, n in SIZES_AND_COUNTS)
# Small calls: many commits (30 parts), so that faults land between and inside them.
ROWS_PER_FILE = 4
NUM_PARTS = -(-NUM_IMAGES // ROWS_PER_FILE)
# A batch may be hit by more than one kill: retried, not failed (the default, 3, is for real crashes).
CHAOS_RETRIES = 20
# Long enough for a restarting actor to come back on a loaded 2-core machine; short enough that a pool
# that cannot make progress fails this test in minutes instead of hanging the suite.
STALL_TIMEOUT_S = 120.0
KILLS = 6
# Ray restarts a killed actor in place (same actor id) and retries its call there. Each death during a
# call halves the call on retry, and an image that dies alone twice becomes an error row: the detector
# cannot tell a kill from an image that crashes it (detbatch.detect.detector), so isolation_retries deaths
# on one call mark an innocent image. At most one fewer per actor keeps this test about chaos, not about
# isolating a crashing image (tests/detect/test_poison.py).
KILLS_PER_ACTOR = isolation_retries(ROWS_PER_FILE) - 1


@pytest.fixture(scope="module")
def chaos_input(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("chaos-input")
    for seed, (size, count) in enumerate(SIZES_AND_COUNTS):
        synthesize(str(root / f"px{size}"), count, seed=seed, image_size=size)
        (root / f"px{size}" / "annotations.json").unlink()  # image files only (the listing is recursive)
    return root


@pytest.fixture(scope="module")
def seeded_weights(tmp_path_factory) -> str:
    """Random weights fixed in a checkpoint. ``weights none`` draws new weights in every actor, so a
    replaced actor would score a retried batch differently from the clean run."""
    import torch

    from detbatch import models
    from detbatch.models.detectors import default_categories

    categories = default_categories(FAST_MODEL)
    torch.manual_seed(12)
    model = models.build_model(FAST_MODEL, categories.num_classes)
    buf = io.BytesIO()
    torch.save(models.checkpoint_dict(model, FAST_MODEL, categories), buf)
    path = tmp_path_factory.mktemp("weights") / "ssdlite-seed12.pt"
    path.write_bytes(buf.getvalue())
    return str(path)


def _chaos_config(chaos_input: Path, output: Path, weights: str, **overrides):
    return _config(str(chaos_input), str(output), **{
        "model.weights": weights, "output.rows_per_file": ROWS_PER_FILE,
        "inference.min_actors": 2, "inference.max_actors": 2, "inference.stall_timeout_s": STALL_TIMEOUT_S,
        **overrides,
    })  # fmt: skip


@pytest.fixture(scope="module")
def clean(chaos_input, seeded_weights, tmp_path_factory) -> Reference:
    """The same input without faults, on a fresh output: what every chaos run must equal."""
    out = tmp_path_factory.mktemp("clean") / "out"
    started = time.monotonic()
    summary = run_detect(_chaos_config(chaos_input, out, seeded_weights))
    print(f"chaos: clean run of {NUM_IMAGES} images in {time.monotonic() - started:.1f} s")
    assert (summary.images_ok, summary.images_error) == (NUM_IMAGES, 0)
    check_invariants(str(out), num_inputs=NUM_IMAGES)
    images, detections = read_tables(str(out))
    assert len(detections) == NUM_IMAGES * 5
    return Reference(output=str(out), images=images, detections=detections)


def _detectors(cluster, detail: bool = False, state: str | None = None) -> list:
    """The detector actors of ``cluster``, named by its address: without one, Ray's state API joins the
    Ray last started on this machine, which need not be the test cluster."""
    from ray.util.state import list_actors

    filters = [("class_name", "=", DETECTOR_CLASS)] + ([("state", "=", state)] if state else [])
    return list_actors(address=cluster.address, filters=filters, detail=detail, limit=10000)


def _committed(output: Path) -> int:
    names = os.listdir(output / "images") if (output / "images").exists() else []
    return sum(sink.parse_part(n) is not None for n in names)


def _run_in_thread(config) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def target() -> None:
        try:
            result["summary"] = run_detect(config)
        except BaseException as e:  # re-raised by the test
            result["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, result


def _summary(thread: threading.Thread, result: dict, timeout: float):
    thread.join(timeout)
    assert not thread.is_alive(), f"the run did not end within {timeout:.0f} s"
    if "error" in result:
        raise result["error"]
    return result["summary"]


def test_random_actor_kills_lose_nothing(chaos_input, seeded_weights, clean, ray_cluster, tmp_path):
    """SIGKILL a random live detector at seeded points of the run; the result equals the clean run.

    The kill points are numbers of committed parts, not times, and each kill waits for a part committed
    since the last: progress lies between two kills however fast or loaded the machine is, so a slow
    machine is not starved and a fast one still sees every kill.
    """
    out = tmp_path / "out"
    rng = random.Random(12)
    kill_at = sorted(rng.sample(range(2, NUM_PARTS - 4), KILLS))  # committed parts before each kill
    earlier = {a.actor_id for a in _detectors(ray_cluster)}
    started = time.monotonic()
    thread, result = _run_in_thread(_chaos_config(chaos_input, out, seeded_weights,
                                                  **{"inference.max_retries": CHAOS_RETRIES}))
    kills: list[tuple[int, str, int]] = []  # (parts committed at the kill, actor id, pid)
    while thread.is_alive() and len(kills) < len(kill_at):
        time.sleep(0.2)
        committed = _committed(out)
        if committed < kill_at[len(kills)] or (kills and committed == kills[-1][0]):
            continue
        killed = Counter(actor for _, actor, _ in kills)
        alive = [a for a in _detectors(ray_cluster, detail=True, state="ALIVE")
                 if a.actor_id not in earlier and a.pid and a.pid not in {pid for *_, pid in kills}
                 and killed[a.actor_id] < KILLS_PER_ACTOR]
        if not alive:
            continue
        victim = rng.choice(sorted(alive, key=lambda a: a.actor_id))
        try:
            os.kill(victim.pid, signal.SIGKILL)
        except ProcessLookupError:  # restarted since the listing
            continue
        kills.append((committed, victim.actor_id, victim.pid))
    summary = _summary(thread, result, timeout=300)
    wall = time.monotonic() - started
    print(f"chaos: {len(kills)} kills ({len({a for _, a, _ in kills})} actors, each restarted in place) at "
          f"parts {[c for c, *_ in kills]} of {NUM_PARTS}; run {wall:.1f} s")
    assert len(kills) >= 3, f"only {len(kills)} kills landed before the run ended ({kills})"
    assert summary.images_ok == NUM_IMAGES and summary.images_error == 0
    check_invariants(str(out), num_inputs=NUM_IMAGES)
    assert_same_as_clean(str(out), clean)


def test_node_lost_mid_run(chaos_input, seeded_weights, clean, ray_cluster, tmp_path):
    """Two nodes join for this test; the pool (one actor on each) is pinned to them; one is killed (its
    raylet and workers SIGKILLed) while its actor works. The run must end with nothing lost; the cluster
    is left with its two nodes.

    What Ray does (seen in this test): the lost actor restarts in place and waits for a node with a free
    ``chaos``; the surviving actor does every other call; when the stream runs out of input Ray Data
    releases the idle survivor, the restarted actor takes its place and redoes the lost call. With
    ``preserve_order`` the driver sees no output from the lost call on, so the progress bar stands still
    until the end.
    """
    from detbatch.runtime import local_ray_env

    with local_ray_env():
        added = [ray_cluster.add_node(num_cpus=1, resources={"chaos": 1}) for _ in range(2)]
    out = tmp_path / "out"
    try:
        ray_cluster.wait_for_nodes()
        on_added = {n.node_id: n for n in added}
        started = time.monotonic()
        # The lost node's actor dies once, so one retry must do: Ray's resubmissions to the node before it
        # is declared dead must not use up inference.max_retries (driver.UNREACHABLE_RETRIES).
        thread, result = _run_in_thread(_chaos_config(chaos_input, out, seeded_weights, **{
            "inference.actor_resources": {"chaos": 1}, "inference.max_retries": 1}))  # fmt: skip
        removed, removed_at = None, 0
        while thread.is_alive() and removed is None:
            committed = _committed(out)
            hosts = [a.node_id for a in _detectors(ray_cluster, detail=True, state="ALIVE") if a.node_id in on_added]
            if committed >= NUM_PARTS // 4 and hosts:
                removed, removed_at = on_added[hosts[0]], committed
                ray_cluster.remove_node(removed, allow_graceful=False)  # lost, not drained
            time.sleep(0.2)
        assert removed is not None, "the run ended before a node could be removed"
        print(f"chaos: node removed at {removed_at} of {NUM_PARTS} parts, {time.monotonic() - started:.1f} s in")
        summary = _summary(thread, result, timeout=STALL_TIMEOUT_S + 120)
        print(f"chaos: node-loss run {time.monotonic() - started:.1f} s")
        assert summary.images_ok == NUM_IMAGES and summary.images_error == 0
        check_invariants(str(out), num_inputs=NUM_IMAGES)
        assert_same_as_clean(str(out), clean)
    finally:
        for node in added:
            if node in ray_cluster.worker_nodes:
                ray_cluster.remove_node(node)
        _wait_for_live_nodes(2)


def _wait_for_live_nodes(expected: int, timeout: float = 120) -> None:
    """Until Ray counts ``expected`` live nodes (a killed node is declared dead after its health checks
    fail: 15-65 s by Ray's defaults)."""
    import ray

    deadline = time.monotonic() + timeout
    while sum(n["Alive"] for n in ray.nodes()) != expected:
        assert time.monotonic() < deadline, f"the cluster did not return to {expected} live nodes"
        time.sleep(0.5)
