"""``detbatch detect``: images in storage -> detections in Parquet, exactly once.

The pipeline (a Ray Data stream; the driver holds the listing and counters, never pixels or results)::

    units (driver) -> read_unit (CPU task) -> decode (CPU task)
                   -> Detector: model + write_parts (actor pool, GPU/CPU) -> per-unit counts (driver)

See :mod:`detbatch.detect.sink` for the commit protocol that lets a rerun finish only what is left.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

import pyarrow as pa

from detbatch import __version__, storage
from detbatch.detect import read, sink
from detbatch.detect.units import InputListing, list_input, load_manifest, plan_units
from detbatch.config import ConfigError
from detbatch.errors import RunFailed
from detbatch.detect.config import DetectConfig
from detbatch.detect.decode import decode_batch
from detbatch.detect.detector import Detector

if TYPE_CHECKING:
    import ray.data

logger = logging.getLogger(__name__)

STATE_FILE = "_detbatch/state.json"


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


def fingerprint(config: DetectConfig) -> dict[str, Any]:
    """Settings that change what lands in the output; a rerun must match them to resume."""
    return {
        "input": config.input.uri,
        "format": config.input.format,
        "manifest": config.input.manifest,
        "images_per_unit": config.input.images_per_unit,
        "model": config.model.name,
        "weights": config.model.weights,
        "score_threshold": config.model.score_threshold,
        "detections_per_image": config.model.detections_per_image,
    }


def _read_json(uri: str) -> dict[str, Any] | None:
    try:
        return json.loads(storage.read_text(uri))
    except FileNotFoundError:
        return None


def _prepare_output(config: DetectConfig, listing: InputListing) -> tuple[DetectConfig, dict[str, Any] | None]:
    """Check OUTPUT against this run. Returns the config with its unit size settled, and the finished
    run.json if there is nothing left to do."""
    output = config.output.uri
    fs, path = storage.resolve(output)
    if config.output.overwrite and fs.exists(path):
        logger.warning("--overwrite: deleting %s", output)
        fs.rm(path, recursive=True)
    state_uri = storage.join(output, STATE_FILE)
    state = _read_json(state_uri)
    if config.input.images_per_unit is None:
        # One call's worth, or the unit size of the run being resumed: units are positions in the
        # output, and output.rows_per_file, which does not change results, may change between runs.
        config = config.model_copy(deep=True)
        config.input.images_per_unit = (state or {}).get("fingerprint", {}).get("images_per_unit") or config.output.rows_per_file
    wanted = {"fingerprint": fingerprint(config), "listing_digest": listing.digest, "num_inputs": len(listing.uris)}
    if state is not None:
        if state["fingerprint"] != wanted["fingerprint"]:
            diff = {k: (v, wanted["fingerprint"].get(k)) for k, v in state["fingerprint"].items() if wanted["fingerprint"].get(k) != v}
            changes = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
            raise ConfigError(
                f"{output} holds a detect run with other settings ({changes}); "
                f"use another --output, or --overwrite to replace it"
            )
        if state["listing_digest"] != wanted["listing_digest"]:
            raise ConfigError(
                f"{output} was started on a different set of input files ({state['num_inputs']} then, "
                f"{len(listing.uris)} now); use another --output, or --overwrite to start over"
            )
        return config, _read_json(storage.join(output, "run.json"))
    if fs.exists(path) and fs.ls(path):
        raise ConfigError(f"{output} is not empty and holds no detbatch run; choose an empty --output or use --overwrite")
    storage.write_text(state_uri, json.dumps(wanted, indent=2))
    return config, None


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


def _read_stage(
    units: dict[str, Any], root: str, manifest: dict[str, int] | None, skips: dict[int, list[tuple[int, int]]]
) -> Iterator["pa.Table"]:
    """map_batches UDF over unit rows (batch_size=1): yield the unit's images in small batches."""
    for i in range(len(units["unit"])):
        unit = {k: units[k][i] for k in units}
        unit["uris"], unit["image_ids"] = list(unit["uris"]), list(unit["image_ids"])
        rows = []
        for row in read.read_unit(unit, root, manifest, skips.get(int(unit["unit"]), [])):
            rows.append(row)
            if len(rows) == read.ROWS_PER_READ_BATCH:
                yield pa.Table.from_pylist(rows, schema=read.READ_SCHEMA)
                rows = []
        if rows:
            yield pa.Table.from_pylist(rows, schema=read.READ_SCHEMA)


def read_and_decode(
    units: list[dict[str, Any]],
    listing: InputListing,
    manifest: dict[str, int] | None,
    skips: dict[int, list[tuple[int, int]]],
    decode_cpus: float,
) -> "ray.data.Dataset":
    """The CPU stages: one task per unit reads its files or shard and decodes them, and its images
    leave as one block (split only past Ray Data's 128 MiB block size), so that a unit of
    ``rows_per_file`` images reaches the pool as one call."""
    import ray

    # Shards need the manifest in the workers; image files carry their ids in the unit rows.
    shard_manifest = manifest if listing.kind != "images" else None
    return (
        ray.data.from_items(units, override_num_blocks=len(units))
        .map_batches(_read_stage, batch_size=1, fn_kwargs={"root": listing.root, "manifest": shard_manifest, "skips": skips},
                     num_cpus=decode_cpus)
        # batch_size=None: decode each block the reader yields. Ray fuses the two stages into one task
        # that takes max(batch sizes) input rows, and input rows are units: a batch size here would
        # put that many units in one task, whose output then reaches a single actor.
        .map_batches(decode_batch, batch_size=None, num_cpus=decode_cpus)
    )


def _pool_resources(config: DetectConfig) -> tuple[float, int, str]:
    """(GPUs per actor, torch threads per actor, device) for this cluster."""
    import ray

    inf = config.inference
    has_gpu = ray.cluster_resources().get("GPU", 0) > 0
    use_gpu = inf.device == "cuda" or (inf.device == "auto" and has_gpu)
    if inf.device == "cuda" and not has_gpu:
        raise ConfigError("inference.device is 'cuda' but the Ray cluster has no GPU; use device: auto or cpu")
    threads = inf.threads_per_actor or max(1, int(inf.cpus_per_actor))
    return (inf.gpus_per_actor if use_gpu else 0.0), threads, ("cuda" if use_gpu else "cpu")


def run_detect(config: DetectConfig) -> DetectSummary:
    """Run (or resume) a detect job as described by ``config``; returns its summary."""
    from ray.data import ActorPoolStrategy, DataContext

    from detbatch.models import check_weights
    from detbatch.runtime import init_ray

    config.require_io()
    check_weights(config.model.name, config.model.weights)
    started = time.perf_counter()
    output = config.output.uri
    listing = list_input(config.input.uri, config.input.format)
    manifest = load_manifest(config.input.manifest) if config.input.manifest else None
    config, finished = _prepare_output(config, listing)
    if finished is not None:
        counts = finished["counts"]
        return DetectSummary(output, counts["images_ok"], counts["images_error"], counts["detections"], 0,
                             counts["images_ok"] + counts["images_error"], 0.0, 0.0, already_complete=True)

    log = sink.read_commit_log(output)
    sink.remove(log.debris)
    all_units = plan_units(listing, config.input.images_per_unit, manifest)
    units = [u for u in all_units if u["unit"] not in log.finished]
    skips = {u["unit"]: log.skip(u["unit"]) for u in units if log.skip(u["unit"])}
    logger.info(
        "%s: %d %s inputs, %d units to do (%d finished earlier, %d images committed)",
        config.input.uri, len(listing.uris), listing.kind, len(units), len(log.finished), log.committed_images,
    )

    init_ray(config.ray.address)
    gpus, threads, device = _pool_resources(config)
    inf = config.inference
    context = DataContext.get_current()
    # Rows reach the actors in (unit, index) order, so that each call commits few, long parts.
    # (Correctness does not depend on it: write_parts splits any batch into contiguous runs.)
    context.execution_options.preserve_order = True
    # How much decoded pixels may pile up ahead of the pool (None: Ray Data's default).
    context.override_object_store_memory_limit_fraction = inf.object_store_fraction

    processed = {"images_ok": 0, "images_error": 0, "detections": 0}
    if units:
        ds = (
            read_and_decode(units, listing, manifest, skips, inf.decode_cpus)
            .map_batches(
                Detector.configured(
                    model=config.model.name,
                    weights=config.model.weights,
                    score_threshold=config.model.score_threshold,
                    detections_per_image=config.model.detections_per_image,
                    device=device,
                    fp16=inf.fp16,
                    threads=threads,
                    batch_size=inf.batch_size,
                    output=output,
                ),
                # One call = one committed file pair; the model sees mini-batches of batch_size.
                batch_size=config.output.rows_per_file,
                compute=ActorPoolStrategy(min_size=inf.min_actors, max_size=inf.max_actors,
                                           max_tasks_in_flight_per_actor=inf.calls_in_flight),
                num_cpus=inf.cpus_per_actor,
                num_gpus=gpus,
                resources=inf.actor_resources or None,
                # A dead actor is replaced and its batch retried, up to max_retries times per batch.
                # (Ray Data's own default retries forever, so a batch that kills every actor it
                # reaches would never end the job.) Ray 2.60 deprecates this argument without a named
                # replacement; docs/detect.md, "Retries", says what to do when it goes.
                ray_remote_args_fn=lambda: {"max_restarts": -1, "max_task_retries": inf.max_retries},
            )
        )
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            for key in processed:
                processed[key] += int(batch[key].to_numpy().sum())

    wall = time.perf_counter() - started
    finished_units = sink.read_commit_log(output).finished
    missing = [u["unit"] for u in all_units if u["unit"] not in finished_units]
    if missing:
        raise DetectIncomplete(
            f"{len(missing)} of {len(all_units)} units did not complete (first: {missing[:5]}); "
            f"rerun the same command to finish them"
        )
    totals = _count_output(output)
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
        "fingerprint": fingerprint(config),
        "input": {"uri": config.input.uri, "root": listing.root, "kind": listing.kind, "manifest": config.input.manifest,
                  "num_inputs": len(listing.uris)},
        "model": {"name": config.model.name, "weights": config.model.weights, "device": device},
        "versions": _library_versions(),
        "counts": {k: getattr(summary, k) for k in ("images_ok", "images_error", "detections")},
        "this_run": {"images_processed": images_done, "images_resumed": summary.images_resumed},
        "wall_seconds": round(wall, 3),
        "images_per_second": round(summary.images_per_second, 3),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    storage.write_text(storage.join(output, "run.json"), json.dumps(run, indent=2))
    return summary


def _count_output(output: str) -> dict[str, int]:
    """Totals over the whole output (this run and earlier ones), from the images table."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    fs, path = storage.resolve(output)
    images = pads.dataset(storage.join(path, "images"), filesystem=fs, format="parquet")
    totals = {"images_ok": 0, "images_error": 0, "detections": 0}
    for batch in images.to_batches(columns=["status", "num_detections"]):
        ok = int(pc.sum(pc.equal(batch["status"], "ok")).as_py() or 0)
        totals["images_ok"] += ok
        totals["images_error"] += batch.num_rows - ok
        totals["detections"] += int(pc.sum(batch["num_detections"]).as_py() or 0)
    return totals
