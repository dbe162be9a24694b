"""``detbatch train``: the driver. Reads the annotations, starts Ray Train, returns where the model is.

The driver never holds images: it reads the annotation files (or a shard set's ``dataset.json``), builds
the Ray Datasets whose tasks read and decode the images, and hands them with the config to a
``TorchTrainer`` (Ray Train V2). Checkpoints, ``metrics.jsonl`` and the plots land in
``run.storage_path/run.name``; a rerun with the same name resumes there.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from detbatch import storage
from detbatch.config import ConfigError
from detbatch.errors import RunFailed
from detbatch.models import Categories, is_checkpoint_uri
from detbatch.runtime import init_ray
from detbatch.training import records
from detbatch.training.config import TrainConfig
from detbatch.training.data import DataSource, build_dataset, count_rows, load_source
from detbatch.training.model import check_model_config

if TYPE_CHECKING:
    import pyarrow.fs

logger = logging.getLogger(__name__)

RUN_FILE = "detbatch_run.json"


class TrainError(RunFailed):
    """A run that could not finish: a worker error past ``run.max_failures``, or a non-finite loss."""


@dataclass
class TrainResult:
    run_uri: str
    """The run's folder: checkpoints, ``metrics.jsonl``, ``loss_curve.png``, ``ap_curve.png``."""
    best_checkpoint: str | None
    """URI of the checkpoint with the best validation AP (the latest without validation):
    ``detbatch detect --weights`` takes it."""
    latest_checkpoint: str | None
    model_uri: str | None
    """Where the best checkpoint's ``model.pt`` was copied (``run.model_uri``), if set."""
    epochs: int
    """Epochs completed."""
    best_metrics: dict[str, Any] = field(default_factory=dict)
    last_metrics: dict[str, Any] = field(default_factory=dict)
    wall_seconds: float = 0.0
    already_complete: bool = False

    def lines(self) -> list[str]:
        """A summary for people (the CLI prints it)."""
        m = self.last_metrics
        head = f"train: {self.epochs} epochs"
        if self.already_complete:
            head += " (already complete; nothing trained)"
        elif m:
            head += f", {m.get('images_per_s', 0):.1f} images/s in the last epoch, {self.wall_seconds:.0f} s"
        out = [head]
        b = self.best_metrics
        if "val_AP" in b:
            out.append(f"  best: epoch {b['epoch']}, val AP {b['val_AP']:.3f}, AP50 {b['val_AP50']:.3f}")
        if m.get("skipped_images") or m.get("invalid_boxes"):
            out.append(f"  data: {m.get('skipped_images', 0)} unreadable images and {m.get('invalid_boxes', 0)} invalid boxes skipped per epoch")
        out.append(f"  checkpoint: {self.best_checkpoint}")
        if self.model_uri:
            out.append(f"  model:      {self.model_uri}")
        out.append(f"  run folder: {self.run_uri} ({records.METRICS_FILE}, {records.LOSS_PLOT}, {records.AP_PLOT})")
        return out


def run_train(config: TrainConfig) -> TrainResult:
    """Train as ``config`` says; resume if ``run.storage_path/run.name`` holds a run."""
    started = time.perf_counter()
    config.require_data()
    config = absolute_paths(config)
    check_model_config(config.model)
    d = config.data
    labels = {"annotations_format": d.annotations_format, "names": d.names, "negatives": not d.drop_unlabeled}
    train_source = load_source(d.train_annotations, d.train_images, d.train_shards, "train", **labels)
    val_source = load_source(d.val_annotations, d.val_images, d.val_shards, "val", **labels) if (d.val_annotations or d.val_shards) else None
    categories = Categories.from_coco(train_source.categories)
    if val_source is not None:
        _check_categories(train_source, val_source)
    run_uri = storage.join(config.run.storage_path, config.run.name)
    _check_run(run_uri, config, categories)
    logger.info("training data: %s; validation: %s", train_source.description,
                val_source.description if val_source else f"{d.val_fraction:.0%} of the training images")  # fmt: skip

    split_val = val_source is None and d.val_fraction > 0
    if split_val and count_rows(train_source, "val", d.seed, d.val_fraction) == 0:
        logger.warning("no image of %s falls in the %.0f%% validation split; training without validation "
                       "(give --val-annotations, or raise data.val_fraction)", train_source.description, 100 * d.val_fraction)  # fmt: skip
        split_val = False
    init_ray(config.ray.address)
    category_ids = [c[0] for c in categories.labels[1:]]
    train_ds = build_dataset(train_source, "train" if split_val else "all", category_ids, d.seed, d.val_fraction, d.read_cpus)
    train_rows = count_rows(train_source, "train" if split_val else "all", d.seed, d.val_fraction)
    val_ds = None
    if val_source is not None:
        val_ds = build_dataset(val_source, "all", category_ids, d.seed, d.val_fraction, d.read_cpus)
    elif split_val:
        val_ds = build_dataset(train_source, "val", category_ids, d.seed, d.val_fraction, d.read_cpus)
    if d.cache:
        train_ds = train_ds.materialize()
        train_rows = train_ds.count()
        val_ds = val_ds.materialize() if val_ds is not None else None
    datasets = {"train": train_ds.randomize_block_order()}
    if val_ds is not None:
        datasets["val"] = val_ds

    done_before = max((r["epoch"] for r in records.read_metrics(run_uri)), default=0)
    result = _fit(config, datasets, categories, run_uri, train_rows, has_val=val_ds is not None)
    train_result = _result(config, result, run_uri, has_val=val_ds is not None)
    train_result.already_complete = done_before >= config.schedule.epochs
    train_result.wall_seconds = time.perf_counter() - started
    return train_result


def absolute_paths(config: TrainConfig) -> TrainConfig:
    """``config`` with every local path made absolute: Ray's workers do not run in the driver's folder."""

    def absolute(uri: str | None) -> str | None:
        if uri is None or storage.protocol_of(uri) != "file":
            return uri
        return storage.resolve(uri)[1]

    d, m, r = config.data, config.model, config.run
    data = {k: absolute(getattr(d, k)) for k in ("train_annotations", "train_images", "train_shards",
                                                 "val_annotations", "val_images", "val_shards", "names")}  # fmt: skip
    weights = absolute(m.weights) if is_checkpoint_uri(m.weights) else m.weights
    return config.model_copy(update={
        "data": d.model_copy(update=data),
        "model": m.model_copy(update={"weights": weights}),
        "run": r.model_copy(update={"storage_path": absolute(r.storage_path), "model_uri": absolute(r.model_uri)}),
    })  # fmt: skip


def _check_categories(train: DataSource, val: DataSource) -> None:
    train_ids = {int(c["id"]) for c in train.categories}
    extra = sorted({int(c["id"]) for c in val.categories} - train_ids)
    train_names = {int(c["id"]): c.get("name") for c in train.categories}
    renamed = [f"{c['id']}: {c.get('name')!r} vs {train_names[int(c['id'])]!r}" for c in val.categories
               if int(c["id"]) in train_names and c.get("name") != train_names[int(c["id"])]]  # fmt: skip
    if renamed:  # VOC folders number their names in sorted order: a class missing from one shifts the ids
        raise ConfigError(
            f"category ids name other classes in validation than in training ({'; '.join(renamed[:3])}); give both "
            f"the same names list (data.names / --names)"
        )
    if extra:
        raise ConfigError(
            f"the validation categories {extra} are not among the training categories ({sorted(train_ids)}); "
            f"validation must use the training set's category ids"
        )


# Settings a resumed run cannot change. The model and its starting weights define what is trained; the
# data sources, the seed and the validation fraction define the split (a changed split would train on
# images that were validation images); another optimizer cannot load the saved optimizer state.
RESUME_FIXED = ("data.train_annotations", "data.train_images", "data.train_shards", "data.val_annotations",
                "data.val_images", "data.val_shards", "data.val_fraction", "data.seed", "optim.optimizer")
# Settings that change nothing of the result, or that a resume is expected to change (more epochs, other
# resources after losing a node); left out of the fingerprint.
RESUME_FREE = ("schedule.epochs", "ray", "scaling", "run.model_uri", "run.log_every", "data.read_cpus", "data.cache")


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if any(dotted == free or dotted.startswith(free + ".") for free in RESUME_FREE):
            continue
        if isinstance(value, dict) and key != "kwargs":
            out |= _flat(value, dotted + ".")
        else:
            out[dotted] = value
    return out


def _check_run(run_uri: str, config: TrainConfig, categories: Categories) -> None:
    """Refuse to resume a run of another model, other categories, or a setting of :data:`RESUME_FIXED`;
    log every other setting that changed (the training loop applies it from the resumed step on). Record
    them all on a first run."""
    settings = _flat(config.model_dump(mode="json"))
    wanted = {"model": config.model.name, "weights": config.model.weights, "categories": categories.to_list(),
              "settings": settings}
    path = storage.join(run_uri, RUN_FILE)
    try:
        saved = json.loads(storage.read_text(path))
    except FileNotFoundError:
        storage.write_text(path, json.dumps(wanted, indent=2))
        return
    before = saved.get("settings")
    if before is None:  # written by a detbatch before settings were recorded: compare what it recorded
        logger.warning("%s: recorded by an older detbatch, which kept no settings; they are not checked", run_uri)
        before = settings
    changed = [k for k in ("model", "weights", "categories") if saved.get(k) != wanted[k]]
    changed += [k for k in RESUME_FIXED if before.get(k) != settings.get(k)]
    if changed:
        diffs = "; ".join(f"{k}: {_value(saved, before, k)!r} -> {_value(wanted, settings, k)!r}" for k in changed)
        raise ConfigError(
            f"{run_uri} holds a run with other settings ({diffs[:400]}); rerunning the same --name resumes it, "
            f"so give a new --name (or --storage-path) for a new run"
        )
    applied = {k: (before.get(k), v) for k, v in settings.items() if before.get(k) != v}
    if applied:
        logger.warning("%s: resuming with changed settings, applied from the resumed step on: %s", run_uri,
                       "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in applied.items()))
        storage.write_text(path, json.dumps(wanted, indent=2))
    logger.info("%s exists: resuming from its latest checkpoint", run_uri)


def _value(record: dict[str, Any], settings: dict[str, Any], key: str) -> Any:
    return record.get(key) if key in ("model", "weights", "categories") else settings.get(key)


def ray_storage(storage_path: str) -> tuple[str, "pyarrow.fs.FileSystem | None"]:
    """``(storage_path, storage_filesystem)`` for Ray Train's ``RunConfig``.

    Object stores go through detbatch's fsspec filesystem wrapped for pyarrow: pyarrow's own S3 client
    ignores ``AWS_ENDPOINT_URL``.
    """
    fs, path = storage.resolve(storage_path)
    if storage.protocol_of(storage_path) == "file":
        return path, None
    import pyarrow.fs

    return path, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))


def _fit(config: TrainConfig, datasets: dict[str, Any], categories: Categories, run_uri: str, train_rows: int, has_val: bool) -> Any:
    import ray.train
    from ray.train.torch import TorchTrainer

    from detbatch.training.loop import train_loop_per_worker

    s = config.scaling
    resources = {"CPU": s.cpus_per_worker, **s.resources_per_worker}
    if s.use_gpu:
        resources["GPU"] = 1
    storage_path, filesystem = ray_storage(config.run.storage_path)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": config.model_dump(mode="json"),
            "categories": categories.to_list(),
            "run_uri": run_uri,
            "train_rows": train_rows,
            "has_val": has_val,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker=resources, placement_strategy=s.placement_strategy
        ),
        run_config=ray.train.RunConfig(
            name=config.run.name,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            failure_config=ray.train.FailureConfig(max_failures=config.run.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=config.run.keep_checkpoints,
                checkpoint_score_attribute="val_AP" if has_val else None,
                checkpoint_score_order="max",
            ),
            # Ray Train's own INFO lines repeat every report; detbatch's workers log each epoch instead.
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )
    try:
        return trainer.fit()
    except ray.train.TrainingFailedError as e:
        raise TrainError(
            f"training failed after {config.run.max_failures} restarts (run.max_failures): {e}; "
            f"rerun with the same --name to resume from the latest checkpoint in {run_uri}"
        ) from e


def _checkpoint_uri(checkpoint: Any, storage_path: str) -> str | None:
    if checkpoint is None:
        return None
    if storage.protocol_of(storage_path) == "file":
        return checkpoint.path
    return storage.to_uri(storage.filesystem(storage_path), checkpoint.path)


def _result(config: TrainConfig, result: Any, run_uri: str, has_val: bool) -> TrainResult:
    last = dict(result.metrics or {})
    if "nan_iteration" in last:
        raise TrainError(
            f"the loss became NaN or infinite at iteration {last['nan_iteration']} (epoch {last['epoch']}): "
            f"{last.get('nan_losses')}; lower optim.lr, set optim.clip_grad_norm, or check the boxes of the data. "
            f"The last good checkpoint is in {run_uri}"
        )
    history = records.read_metrics(run_uri)
    best_checkpoint, best_metrics = result.checkpoint, history[-1] if history else {}
    if has_val and result.best_checkpoints:
        best_checkpoint, best_metrics = max(result.best_checkpoints, key=lambda cm: cm[1].get("val_AP", -1.0))
    best_uri = _checkpoint_uri(best_checkpoint, config.run.storage_path)
    model_uri = None
    if config.run.model_uri and best_uri:
        model_uri = config.run.model_uri
        storage.write_bytes(storage.join(model_uri, records.MODEL_FILE), storage.read_bytes(storage.join(best_uri, records.MODEL_FILE)))
        logger.info("wrote the best model (epoch %s) to %s", best_metrics.get("epoch"), model_uri)
    return TrainResult(
        run_uri=run_uri,
        best_checkpoint=best_uri,
        latest_checkpoint=_checkpoint_uri(result.checkpoint, config.run.storage_path),
        model_uri=model_uri,
        epochs=history[-1]["epoch"] if history else 0,
        best_metrics=dict(best_metrics),
        last_metrics=history[-1] if history else {},
    )

