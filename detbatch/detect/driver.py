"""``detbatch detect``: images in storage -> detections in Parquet, exactly once.

The pipeline (a Ray Data stream; the driver holds the plan, an Arrow table, and counters, never pixels,
results or the input's files; the listing is written into the output by Ray tasks, and a rerun reads
the plan from the output instead of listing: :mod:`detbatch.detect.plan`)::

    plan rows (driver) -> units (CPU task) -> read_unit -> decode (CPU task: detbatch.detect.stream)
                       -> Detector: model + write_parts (actor pool, GPU/CPU) -> per-unit counts (driver)

See :mod:`detbatch.detect.sink` for the commit protocol that lets a rerun finish only what is left.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from detbatch import __version__, storage
from detbatch.detect import plan as plan_module
from detbatch.detect import sink
from detbatch.detect.stream import read_and_decode
from detbatch.detect.units import ListingSummary, input_shape, load_manifest
from detbatch.config import ConfigError
from detbatch.detect.config import DetectConfig
from detbatch.detect.lease import Lease, LeaseLost
from detbatch.detect.output import RUN_FILE, OpenedOutput, open_output
from detbatch.detect.resources import Pool, actor_resources, placement_problem, resolve_pool
from detbatch.detect.thresholds import ScoreThresholds, parse_score_threshold
from detbatch.errors import RunFailed
from detbatch.models import check_weights
from detbatch.detect.detector import Detector

logger = logging.getLogger(__name__)

# Times Ray Data reruns a task whose storage kept failing (each run retries every call ~30 s itself).
READ_TASK_RETRIES = 3
# Ray counts against max_task_retries every resubmission of a call to an actor it cannot reach, not only
# the actor's deaths: when a node is lost, the caller resends each call in flight there (backing off from
# 0.1 s to at most 5 s) until the GCS declares the node dead after 5 failed health checks 3 s apart, each
# allowed 10 s (15-65 s). One lost node took 6-7 retries in tests/detect/test_chaos.py, and with
# inference.max_retries below 2 it failed the run. 20 covers ~75 s unreachable; max_retries counts deaths.
UNREACHABLE_RETRIES = 20

class DetectIncomplete(RunFailed):
    """The stream ended with images uncommitted; a rerun of the same command finishes them."""


@dataclass
class DetectSummary:
    output: str
    images_ok: int
    images_error: int
    detections: int
    images_processed: int
    """Images this run processed (less than the total when it resumed)."""
    images_resumed: int
    """Images already committed by an earlier run and skipped."""
    wall_seconds: float
    images_per_second: float
    already_complete: bool = False

    def line(self) -> str:
        tail = " (already complete; nothing recomputed)" if self.already_complete else ""
        resumed = f", {self.images_resumed} resumed" if self.images_resumed else ""
        return (
            f"detect: {self.images_ok} images ok, {self.images_error} in error, {self.detections} detections, "
            f"{self.images_per_second:.2f} images/s{resumed} -> {self.output}{tail}"
        )


def _library_versions() -> dict[str, str]:
    """Installed versions, found without importing the packages (importing torch costs the driver seconds)."""
    return {"detbatch": __version__, "python": platform.python_version(),
            **{package: _installed_version(package) for package in ("ray", "torch", "torchvision", "pyarrow")}}


def _installed_version(package: str) -> str:
    """``package.__version__`` as the package reports it, local build tag included (torch's ``+cu130``),
    read from its ``version.py`` or metadata without importing it."""
    import importlib.util
    import re
    from importlib.metadata import PackageNotFoundError, version
    from pathlib import Path

    spec = importlib.util.find_spec(package)
    version_file = Path(spec.origin).with_name("version.py") if spec and spec.origin else None
    if version_file is not None and version_file.exists():
        found = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", version_file.read_text(), re.MULTILINE)
        if found:
            return found.group(1)
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def _pool(config: DetectConfig) -> Pool:
    """The pool for this cluster's live nodes (:func:`~detbatch.detect.resources.resolve_pool`)."""
    import ray

    pool = resolve_pool(config.inference, [n["Resources"] for n in ray.nodes() if n.get("Alive")])
    if config.inference.max_actors == "auto":
        logger.info("inference.max_actors: auto = %d (%s)", pool.max_actors, "one per GPU" if pool.gpus else
                    "each node's CPUs but one decode task's, by inference.cpus_per_actor")
        if config.inference.autoscaling:
            logger.warning("inference.max_actors: auto counts the nodes up now (%d actors); with an autoscaler, give "
                           "the number of GPUs to grow to instead", pool.max_actors)
    return pool


def run_detect(config: DetectConfig) -> DetectSummary:
    """Run (or resume) a detect job as described by ``config``; returns its summary."""
    from detbatch.runtime import init_ray

    config.require_io()
    check_weights(config.model.name, config.model.weights)
    parse_score_threshold(config.model.score_threshold)  # a bad thresholds file is named before anything starts
    started = time.perf_counter()
    manifest = load_manifest(config.input.manifest) if config.input.manifest else None
    inp, out = config.input, config.output
    stored = None if out.overwrite else plan_module.read_plan(out.uri)
    lists = stored is None or inp.verify
    if not lists:
        logger.info("%s: resuming from its plan (%d rows); the input is not listed (--verify-input lists "
                    "it and compares)", out.uri, stored.table.num_rows)
    else:
        input_shape(inp.uri)  # a missing input is named before the output is touched
    # A listing is made under the output's lease, into the output (detbatch.detect.plan).
    opened = open_output(config, None if lists else stored.summary)
    try:
        config = opened.config
        if lists:
            init_ray(config.ray.address)  # the listing's tasks, and an index's row counts
            plan, summary = plan_module.plan_input(config, opened, manifest, stored)
        else:
            plan, summary = stored.table, stored.summary
        if opened.finished is not None:
            # A fenced-off writer of an earlier run may have committed a late part since: readers of the
            # folder itself (pandas on OUTPUT/images) must find only the parts that count.
            storage.remove(sink.read_commit_log(config.output.uri).debris)
            counts = opened.finished["counts"]
            return DetectSummary(config.output.uri, counts["images_ok"], counts["images_error"], counts["detections"],
                                 0, counts["images_ok"] + counts["images_error"], 0.0, 0.0, already_complete=True)
        init_ray(config.ray.address)
        return _run(config, plan, summary, manifest, opened, started)
    finally:
        opened.lease.release()


def _run(config: DetectConfig, plan: "pa.Table", listed: ListingSummary, manifest: dict[str, int] | None,
         opened: OpenedOutput, started: float) -> DetectSummary:
    """The stream over what is left, then the checks and run.json; the caller holds the output's lease."""
    from ray.data import ActorPoolStrategy, DataContext

    output, lease = config.output.uri, opened.lease
    log = sink.read_commit_log(output)
    # Safe while this run holds the lease: a fenced-off writer's late file makes at most a half pair,
    # which no reader counts (detbatch.detect.sink).
    storage.remove(log.debris + _attempt_files(output, keep_generation=lease.generation))
    # Plan rows with a unit left to do (an index file's row holds many units: unit_ids).
    finished = np.array(sorted(log.finished), np.int64)
    ids, row_of = plan_module.unit_ids(plan)
    left = ~np.isin(ids, finished)
    todo = plan.take(pa.array(np.unique(row_of[left])))
    first_left = ids[left][:64]
    skips = {u: log.skip(u) for u in log.ranges if u not in log.finished}
    logger.info(
        "%s: %d %s inputs, %d units to do (%d finished earlier, %d images committed)",
        config.input.uri, listed.num_inputs, listed.kind, int(left.sum()), len(log.finished), log.committed_images,
    )
    del ids, row_of, left
    pool = _pool(config)
    inf = config.inference
    # As state.json records them (read once, when the output was opened): a number, or one per category.
    scores = opened.fingerprint["score_threshold"]
    thresholds = ScoreThresholds.from_fingerprint(scores)
    _check_schedulable(config, pool.gpus)
    context = DataContext.get_current()
    # Rows reach the actors in (unit, index) order, so that each call commits few, long parts.
    # (Correctness does not depend on it: write_parts splits any batch into contiguous runs.)
    context.execution_options.preserve_order = True
    # How much decoded pixels may pile up ahead of the pool (None: Ray Data's default).
    context.override_object_store_memory_limit_fraction = inf.object_store_fraction
    # Storage that kept failing through every in-process retry fails its task; Ray Data runs the task
    # again (a generator task's replay skips the rows already delivered). Nothing else is retried: a
    # lost lease or a bug must stop the run.
    context.retried_map_errors = [storage.TransientStorageError.__name__]
    context.max_map_retries = READ_TASK_RETRIES
    # A stream in which nothing moves for this long fails with Ray Data's account of each operator.
    context.execution_no_progress_timeout_s = inf.stall_timeout_s

    processed = {"images_ok": 0, "images_error": 0, "detections": 0}
    if todo.num_rows:
        ds = read_and_decode(todo, listed, manifest, skips, inf.decode_cpus, config.input,
                             keep_jpeg=pool.decode == "gpu", finished=finished, output=output).map_batches(
            Detector.configured(
                model=config.model.name,
                weights=config.model.weights,
                score_threshold=thresholds.floor,
                per_category=scores if isinstance(scores, dict) else None,
                detections_per_image=config.model.detections_per_image,
                device=pool.device,
                fp16=inf.fp16,
                threads=pool.threads,
                batch_size=inf.batch_size,
                output=output,
                generation=lease.generation,
                overlap=pool.overlap,
                max_pixels=config.input.max_pixels,
                # One per actor: the units its first call most likely holds (detbatch.detect.detector).
                early_units=tuple(int(u) for u in first_left[: pool.max_actors]),
            ),
            # One call = one committed file pair; the model sees mini-batches of batch_size.
            batch_size=config.output.rows_per_file,
            # With overlap, two calls run in an actor at once (true threads: one in the model, one committing;
            # detbatch.detect.detector), so two must be there.
            compute=ActorPoolStrategy(min_size=inf.min_actors, max_size=pool.max_actors,
                                      max_tasks_in_flight_per_actor=max(inf.calls_in_flight, 2 if pool.overlap else 1),
                                      max_concurrent_calls_per_actor=2 if pool.overlap else None,
                                      enable_true_multi_threading=pool.overlap or None),
            num_cpus=inf.cpus_per_actor,
            num_gpus=pool.gpus,
            resources=inf.actor_resources or None,
            # A dead actor is replaced and its batch retried, up to max_retries times per batch.
            # (Ray Data's own default retries forever, so a batch that kills every actor it
            # reaches would never end the job.) Ray 2.60 deprecates this argument without a named
            # replacement; docs/detect.md, "Retries of actors", says what to do when it goes.
            # On top, the retries that isolating one crashing image takes (halving the call, then that
            # image twice on its own: detbatch.detect.detector), and those that a lost node's calls spend
            # before Ray knows it is gone (UNREACHABLE_RETRIES).
            ray_remote_args_fn=lambda: {"max_restarts": -1,
                                        "max_task_retries": inf.max_retries + isolation_retries(config.output.rows_per_file)
                                        + UNREACHABLE_RETRIES},
        )
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                for key in processed:
                    processed[key] += int(batch[key].to_numpy().sum())
        except Exception as e:
            _raise_known_cause(e, lease, inf.stall_timeout_s)
            raise

    wall = time.perf_counter() - started
    lease.check()
    log = sink.read_commit_log(output)
    ids = plan_module.unit_ids(plan)[0]
    missing = ids[~np.isin(ids, np.array(sorted(log.finished), np.int64))].tolist()
    if missing:
        raise DetectIncomplete(
            f"{len(missing)} of {len(ids)} units did not complete (first: {missing[:5]}); "
            f"rerun the same command to finish them"
        )
    # Every call is committed: what attempt records are left (and a temporary of one, left by an actor killed
    # while it wrote it; Ray retried its call) speak of nothing still running.
    storage.remove(log.debris + _attempt_files(output))
    plan_module.remove_stray_parts(output, plan)
    totals = _count_output(output, log)
    images_done = processed["images_ok"] + processed["images_error"]
    summary = DetectSummary(
        output=output,
        images_ok=totals["images_ok"],
        images_error=totals["images_error"],
        detections=totals["detections"],
        images_processed=images_done,
        images_resumed=totals["images_ok"] + totals["images_error"] - images_done,
        wall_seconds=wall,
        images_per_second=images_done / wall if wall > 0 else 0.0,
    )
    run = {
        "config": config.model_dump(),
        "fingerprint": opened.fingerprint,
        "input": {"uri": config.input.uri, "root": listed.root, "kind": listed.kind, "manifest": config.input.manifest,
                  "num_inputs": listed.num_inputs},
        "model": {"name": config.model.name, "weights": config.model.weights, "device": pool.device},
        "pool": {"max_actors": pool.max_actors, "threads_per_actor": pool.threads, "decode": pool.decode,
                 "overlap_commit": pool.overlap},
        "versions": _library_versions(),
        "counts": {k: getattr(summary, k) for k in ("images_ok", "images_error", "detections")},
        "this_run": {"images_processed": images_done, "images_resumed": summary.images_resumed},
        "lease_generation": lease.generation,
        "wall_seconds": round(wall, 3),
        "images_per_second": round(summary.images_per_second, 3),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    lease.check()
    storage.write_text(storage.join(output, RUN_FILE), json.dumps(run, indent=2))
    return summary


def isolation_retries(rows_per_call: int) -> int:
    """Crashes it takes to isolate one crashing image in a call of ``rows_per_call`` rows: one per halving,
    and two on its own."""
    return max(0, math.ceil(math.log2(max(rows_per_call, 1)))) + 2


def _attempt_files(output: str, keep_generation: int | None = None) -> list[str]:
    """The files under ``_detbatch/attempts/`` but the records of run ``keep_generation``: earlier runs'
    records (their calls are this run's to redo), and the hidden temporaries of records whose writer died
    mid-write (no reader takes them for a record, and nothing else removes them)."""
    folder = storage.join(output, sink.ATTEMPTS_DIR)
    kept = f"g{keep_generation:06d}-" if keep_generation is not None else None
    return [storage.join(folder, n) for n in storage.list_names(folder, hidden=True)
            if kept is None or not n.startswith(kept)]


def _check_schedulable(config: DetectConfig, gpus: float) -> None:
    """Refuse a pool that would leave no room for the read/decode stage (it would hang, reading nothing)."""
    import ray

    inf = config.inference
    actor = actor_resources(inf, gpus)
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    problem = placement_problem(nodes, actor, inf.min_actors, {"CPU": inf.decode_cpus})
    if problem is None:
        return
    if inf.autoscaling:
        logger.warning("%s (going on: inference.autoscaling says nodes are added on demand)", problem)
        return
    raise ConfigError(f"detect cannot run on this cluster: {problem}")


def _raise_known_cause(error: BaseException, lease: Lease, stall_timeout_s: float) -> None:
    """Turn a stream failure whose cause detbatch knows (a lost lease, storage that kept failing) into its
    own error, which says what to do; anything else propagates as it is."""
    lease.check()
    text = f"{type(error).__name__}: {error}"
    if "ExecutionTimeoutError" in text or "made no progress" in text:
        raise DetectIncomplete(
            f"the stream made no progress for inference.stall_timeout_s={stall_timeout_s:g}; Ray Data's account "
            f"of each stage follows. A stage with no active task is waiting for resources (check the pool's "
            f"and the decode tasks' resources against the cluster's), a stage with active tasks is slow or "
            f"stuck. Rerun the same command to resume.\n{text}"
        ) from error
    for known in (LeaseLost, storage.TransientStorageError):
        if known.__name__ in text:
            raise DetectIncomplete(f"the stream stopped: {text.splitlines()[-1]}; rerun the same command to "
                                   f"finish the rest") from error
    # A detector that died on one call more often than its retries allow (and not on one image, which
    # becomes an error row): the node's memory, a GPU fault, a lost node. What is committed stays.
    for died in ("OutOfMemoryError", "ActorDiedError", "ActorUnavailableError", "RayActorError"):
        if died in text:
            raise DetectIncomplete(
                f"a detector actor died more often than inference.max_retries allows ({died}); what was committed "
                f"is kept. Rerun the same command to finish the rest; if it happens again, look at the actor's log "
                f"(`ray logs`, or the dashboard) for the cause: out of memory (lower inference.batch_size or "
                f"inference.object_store_fraction), a GPU fault, or a node lost.\n{text}"
            ) from error


def _count_output(output: str, log: sink.CommitLog) -> dict[str, int]:
    """Totals over the committed parts (this run's and earlier ones'), from the images table."""
    import pyarrow.dataset as pads

    fs, _ = storage.resolve(output)
    files = [storage.resolve(uri)[1] for uri in log.files(output, "images")]

    def count() -> dict[str, int]:
        totals = {"images_ok": 0, "images_error": 0, "detections": 0}
        images = pads.dataset(files, filesystem=fs, format="parquet")
        for batch in images.to_batches(columns=["status", "num_detections"]):
            ok = int(pc.sum(pc.equal(batch["status"], "ok")).as_py() or 0)
            totals["images_ok"] += ok
            totals["images_error"] += batch.num_rows - ok
            totals["detections"] += int(pc.sum(batch["num_detections"]).as_py() or 0)
        return totals

    # Whole or not at all: a fault half-way restarts the count, so no part is counted twice.
    return storage.retrying(count, f"{output}: counting the committed parts")
