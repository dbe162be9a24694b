"""``TrainConfig``: one validated object per ``detbatch train`` run (YAML in ``configs/``, flags on top).

Sections: ``data``, ``model``, ``optim``, ``schedule``, ``scaling``, ``run``, ``ray``. Every key is checked;
an unknown key is an error naming it (see :func:`detbatch.config.load_config`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from detbatch.config import ConfigError, RayConfig, Section


class DataConfig(Section):
    train_annotations: str | None = None
    """The training labels (any fsspec URI): a COCO instances JSON whose ``file_name`` are relative to
    ``train_images``, or a folder of Pascal VOC XML or YOLO txt files (docs/data.md, "Labels")."""
    annotations_format: Literal["auto", "coco", "voc", "yolo"] = "auto"
    """Format of ``train_annotations`` and ``val_annotations``; auto: a file is COCO, a folder VOC or YOLO
    by the label files it holds."""
    names: str | None = None
    """VOC and YOLO: the class names list (``data.yaml`` or one name a line); default: found beside the labels."""
    drop_unlabeled: bool = False
    """VOC and YOLO: leave out images without a label file (default: they train as negatives)."""
    train_images: str | None = None
    """Folder/prefix the training ``file_name`` are relative to; default: the JSON's folder + ``/images``."""
    train_shards: str | None = None
    """Instead of the two above: a ``detbatch prepare --annotations`` output (``dataset.json`` + shards)."""
    val_annotations: str | None = None
    """COCO JSON of a separate validation split; its images are under ``val_images``."""
    val_images: str | None = None
    """Default: the JSON's folder + ``/images``."""
    val_shards: str | None = None
    """Instead of ``val_annotations``: shards made by ``detbatch prepare --annotations``."""
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    """Without a validation split: hold out this seeded fraction of the training images (0: no validation)."""
    seed: int = 0
    """Seeds the validation split, the shuffling, the augmentation and the model's fresh layers."""
    hflip: float = Field(0.5, ge=0.0, le=1.0)
    """Probability of a horizontal flip (boxes flipped with the image)."""
    scale_jitter: tuple[float, float] | None = (0.8, 1.25)
    """Rescale each image by a factor drawn from this range, then crop or pad it back to its size, so
    that objects change size; None: off."""
    shuffle_buffer: int = Field(256, ge=0)
    """Rows each worker shuffles locally on top of the per-epoch block order (0: off)."""
    cache: bool = False
    """Hold the decoded rows in Ray's object store after the first epoch (small datasets: later epochs
    skip storage and decoding)."""
    read_cpus: float = Field(0.5, gt=0)
    """CPUs Ray reserves per read task."""

    @field_validator("scale_jitter")
    @classmethod
    def _jitter_range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not (0 < v[0] <= v[1]):
            raise ValueError(f"scale_jitter {list(v)} must be [low, high] with 0 < low <= high, or null")
        return v


class ModelConfig(Section):
    name: str = "tiny_fcos"
    """A detector from ``detbatch models``. Ignored when ``weights`` is a checkpoint (it names its own)."""
    weights: str = "none"
    """``DEFAULT`` or a torchvision weights name (the whole detector pretrained; its box predictor is
    replaced for the dataset's categories), ``none``, or a detbatch checkpoint URI (its head is kept when
    its categories are the dataset's, replaced otherwise)."""
    weights_backbone: str | None = None
    """With ``weights: none``: ``DEFAULT`` or a weights name of the backbone's classifier (e.g.
    ``ResNet50_Weights.IMAGENET1K_V1``); null: random backbone."""
    trainable_backbone_layers: int | None = Field(None, ge=0)
    """Backbone blocks trained, counted from the output end; the others are frozen. Null: the
    builder's default (torchvision: 3 when pretrained; everything when not)."""
    freeze_batchnorm: bool | None = None
    """Use the backbone's BatchNorm statistics without updating them (torchvision's FrozenBatchNorm2d).
    Null: frozen when the backbone starts from trained weights (pretrained or a checkpoint)."""
    kwargs: dict[str, Any] = {}
    """More builder arguments (e.g. ``min_size``, ``box_batch_size_per_image``); saved in the checkpoint
    so that ``detbatch detect`` builds the same model."""
    score_threshold: float = Field(0.05, ge=0.0, le=1.0)
    """Score threshold of validation (and of the checkpoint's default for detect)."""
    detections_per_image: int = Field(100, ge=1)

    @field_validator("kwargs")
    @classmethod
    def _no_reserved_kwargs(cls, v: dict[str, Any]) -> dict[str, Any]:
        reserved = {"num_classes", "weights", "weights_backbone", "trainable_backbone_layers"} & set(v)
        if reserved:
            raise ValueError(f"model.kwargs may not set {sorted(reserved)}; use the model section's own keys")
        return v


class OptimConfig(Section):
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.02, gt=0)
    """Peak learning rate for the whole job (all workers together; not scaled with num_workers)."""
    momentum: float = Field(0.9, ge=0, lt=1)
    """SGD momentum (AdamW: beta1)."""
    weight_decay: float = Field(1e-4, ge=0)
    batch_size: int = Field(4, ge=1)
    """Images per worker per step."""
    clip_grad_norm: float | None = Field(None, gt=0)
    """Clip the global gradient norm to this; null: no clipping."""
    amp: bool = True
    """Mixed precision (fp16 autocast + gradient scaling) on GPU; ignored on CPU."""


class ScheduleConfig(Section):
    epochs: int = Field(12, ge=1)
    warmup_iters: int = Field(500, ge=0)
    """Linear warmup over this many steps (capped at the first epoch's length), from
    ``warmup_factor * lr`` to ``lr``."""
    warmup_factor: float = Field(0.001, gt=0, le=1)
    kind: Literal["cosine", "multistep", "constant"] = "cosine"
    """After warmup: cosine decay to ``min_lr_factor * lr`` at the last step, or ``gamma`` steps at the
    ``milestones`` epochs, or constant."""
    milestones: list[int] = [8, 11]
    gamma: float = Field(0.1, gt=0, le=1)
    min_lr_factor: float = Field(0.0, ge=0, le=1)


class ScalingConfig(Section):
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    """One GPU per worker, NCCL; otherwise CPU and gloo."""
    cpus_per_worker: float = Field(1.0, gt=0)
    threads_per_worker: int | None = Field(None, ge=1)
    """torch intra-op threads per worker; default: ``cpus_per_worker`` (at least 1)."""
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    resources_per_worker: dict[str, float] = {}
    """Extra Ray resources per worker (custom node resources, ``memory``)."""


class RunConfig(Section):
    storage_path: str = "train-runs"
    """Where checkpoints, ``metrics.jsonl`` and the plots go: a local folder or any fsspec URI (``s3://``)."""
    name: str = "detbatch-train"
    """The run's folder under ``storage_path``. Rerunning with the same name resumes from its latest
    checkpoint."""
    max_failures: int = Field(3, ge=-1)
    """Times a run restarts from its latest checkpoint after a worker or node dies (-1: no limit)."""
    keep_checkpoints: int = Field(2, ge=1)
    """Checkpoints kept, best by validation AP (or the most recent without validation); the latest is
    always kept as well, for resuming."""
    model_uri: str | None = None
    """At the end, also write the best checkpoint's ``model.pt`` here (a folder), for ``detect --weights``."""
    log_every: int = Field(20, ge=1)
    """Log losses every this many steps (rank 0)."""


class TrainConfig(Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    scaling: ScalingConfig = ScalingConfig()
    run: RunConfig = RunConfig()
    ray: RayConfig = RayConfig()

    @model_validator(mode="after")
    def _one_source_each(self) -> "TrainConfig":
        d = self.data
        if d.train_annotations and d.train_shards:
            raise ValueError("give data.train_annotations or data.train_shards, not both")
        if d.val_annotations and d.val_shards:
            raise ValueError("give data.val_annotations or data.val_shards, not both")
        return self

    def require_data(self) -> None:
        """Raise unless a training set is given (by the file or by flags)."""
        if not (self.data.train_annotations or self.data.train_shards):
            raise ConfigError(
                "no training data: give --train-annotations COCO.json (and --train-images DIR), "
                "or data.train_shards (a `detbatch prepare --annotations` output)"
            )
