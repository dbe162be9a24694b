"""The training function each Ray Train worker runs (``train_loop_per_worker``), and its schedule.

Per epoch: train on this worker's shard of the training split (DDP keeps the replicas equal), validate
on this worker's share of the validation split, then rank 0 writes the checkpoint and the epoch's
record, and every worker calls ``ray.train.report``. A restarted worker group (after a failure, or a
rerun under the same name) starts from the latest checkpoint Ray Train hands back.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from detbatch.models import Categories
from detbatch.training import records
from detbatch.training.config import OptimConfig, ScheduleConfig, TrainConfig
from detbatch.training.model import build_starting_model
from detbatch.training.samples import Batch, Collate
from detbatch.training.validation import reduce_parts, validate_shard

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

# Side of the blank image a worker steps on when every image of its batch was unreadable: DDP needs
# every worker to take part in every step, so it contributes a zero-weighted step instead of none.
_BLANK_SIZE = 64


def lr_factor(step: int, *, steps_per_epoch: int, schedule: ScheduleConfig) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based).

    Linear warmup from ``warmup_factor`` over ``min(warmup_iters, steps_per_epoch)`` steps; then cosine
    to ``min_lr_factor`` at the last step, or ``gamma`` per ``milestones`` epoch passed, or constant.
    """
    warmup = min(schedule.warmup_iters, steps_per_epoch)
    total = max(1, schedule.epochs * steps_per_epoch)
    factor = 1.0
    if step < warmup:
        factor = schedule.warmup_factor + (1 - schedule.warmup_factor) * step / warmup
    if schedule.kind == "cosine":
        if step >= warmup:
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            factor = schedule.min_lr_factor + (1 - schedule.min_lr_factor) * 0.5 * (1 + math.cos(math.pi * progress))
    elif schedule.kind == "multistep":
        epoch = step // steps_per_epoch
        factor *= schedule.gamma ** sum(epoch >= m for m in schedule.milestones)
    return factor


def make_optimizer(params: list["torch.nn.Parameter"], cfg: OptimConfig) -> "torch.optim.Optimizer":
    import torch

    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.momentum, 0.999), weight_decay=cfg.weight_decay)


def apply_optim_settings(optimizer: "torch.optim.Optimizer", scheduler: Any, cfg: OptimConfig) -> None:
    """The config's learning rate, momentum and weight decay over a restored optimizer and scheduler.

    A saved state carries the settings of the run that saved it (the scheduler's ``base_lrs``, each param
    group's momentum and decay); a resume with a new ``--lr`` would silently keep the old one. The momentum
    buffers and the step count stay. The driver logs which settings changed (:func:`detbatch.training.job`).
    """
    scheduler.base_lrs = [cfg.lr for _ in optimizer.param_groups]
    for group, factor in zip(optimizer.param_groups, (fn(scheduler.last_epoch) for fn in scheduler.lr_lambdas)):
        group["lr"] = cfg.lr * factor
        group["weight_decay"] = cfg.weight_decay
        if "momentum" in group:
            group["momentum"] = cfg.momentum
        if "betas" in group:
            group["betas"] = (cfg.momentum, group["betas"][1])


class NonFiniteLoss(Exception):
    """The loss of some worker was NaN or infinite at ``step``."""

    def __init__(self, step: int, epoch: int, losses: dict[str, float]):
        super().__init__(f"non-finite loss at iteration {step} (epoch {epoch}): {losses}")
        self.step, self.epoch, self.losses = step, epoch, losses


@dataclass
class EpochStats:
    """Sums over all workers of one epoch's training."""

    steps: int = 0
    images: float = 0.0
    skipped_images: float = 0.0
    invalid_boxes: float = 0.0
    losses: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def _worker_logging() -> None:
    """Show detbatch's INFO logs from the worker (Ray forwards its output to the driver)."""
    log = logging.getLogger("detbatch")
    if not any(getattr(h, "_detbatch", False) for h in log.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler._detbatch = True  # type: ignore[attr-defined]
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point. ``loop_config``: ``config`` (a :class:`TrainConfig` as JSON), ``categories``
    (:meth:`Categories.to_list`), ``run_uri``, ``train_rows`` (rows of the training split), ``has_val``."""
    import ray.train
    import ray.train.torch
    import torch

    _worker_logging()
    cfg = TrainConfig.model_validate(loop_config["config"])
    categories = Categories.from_list(loop_config["categories"])
    category_ids = np.asarray([c[0] for c in categories.labels[1:]], dtype=np.int64)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(cfg.scaling.threads_per_worker or max(1, int(cfg.scaling.cpus_per_worker)))
    device = ray.train.torch.get_device()
    amp = cfg.optim.amp and device.type == "cuda"

    torch.manual_seed(cfg.data.seed)  # fresh layers start equal on every worker
    start = build_starting_model(cfg.model, categories)
    resumed_from, step = 0, 0
    saved_state = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            saved_model, saved_state = records.read_checkpoint(folder)
        start.model.load_state_dict(saved_model["state_dict"])
        resumed_from, step = int(saved_state["epoch"]), int(saved_state["global_step"])
        if rank == 0:
            logger.info("resuming from %s: %d epochs done", checkpoint.path, resumed_from)
    elif rank == 0:
        logger.info("training %s from %s", start.name, start.description)

    model = ray.train.torch.prepare_model(start.model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, cfg.optim)
    steps_per_epoch = max(1, loop_config["train_rows"] // world // cfg.optim.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(lr_factor, steps_per_epoch=steps_per_epoch, schedule=cfg.schedule)
    )
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    if saved_state is not None:
        optimizer.load_state_dict(saved_state["optimizer"])
        scheduler.load_state_dict(saved_state["scheduler"])
        scaler.load_state_dict(saved_state["scaler"])
        apply_optim_settings(optimizer, scheduler, cfg.optim)
    stepper = Stepper(model, params, optimizer, scheduler, scaler, device, amp, world, cfg.optim.clip_grad_norm)

    nodes = _gather(ray.get_runtime_context().get_node_id(), world)
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val") if loop_config["has_val"] else None
    unwrapped = getattr(model, "module", model)
    for epoch in range(resumed_from, cfg.schedule.epochs):
        collate = _ray_collate(Collate(category_ids.tolist(), cfg.data.hflip, cfg.data.scale_jitter, (cfg.data.seed, rank, epoch)))
        batches = train_shard.iter_torch_batches(
            batch_size=cfg.optim.batch_size,
            collate_fn=collate,
            drop_last=True,
            local_shuffle_buffer_size=max(cfg.data.shuffle_buffer, cfg.optim.batch_size) if cfg.data.shuffle_buffer else None,
            prefetch_batches=2,
        )
        model.train()
        try:
            stats = stepper.run_epoch(batches, epoch, step, steps_per_epoch, cfg.run.log_every if rank == 0 else None)
        except NonFiniteLoss as e:
            # Every worker sees the same summed loss, so all stop here, at the same step, and report why
            # (an exception would make Ray Train restart the run and hit the same NaN again).
            ray.train.report({"epoch": epoch + 1, "nan_iteration": e.step, "nan_losses": e.losses})
            return
        step += stats.steps
        metrics = _epoch_metrics(stats, epoch, step, optimizer, resumed_from, world, len(set(nodes)))
        if val_shard is not None:
            unwrapped.eval()
            started = time.perf_counter()
            part = validate_shard(unwrapped, val_shard.iter_batches(batch_size=16, batch_format="numpy"), category_ids,
                                  rank, world, cfg.optim.batch_size, device, amp)  # fmt: skip
            parts = _gather(part, world, to_rank0=True)
            if rank == 0:
                metrics.update(reduce_parts(parts, category_ids))
                metrics["val_seconds"] = time.perf_counter() - started
        if rank == 0:
            _log_epoch(metrics)
            records.append_metrics(loop_config["run_uri"], metrics)
            train_state = {"epoch": epoch + 1, "global_step": step, "optimizer": optimizer.state_dict(),
                           "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict()}  # fmt: skip
            with tempfile.TemporaryDirectory(prefix="detbatch-ckpt-") as folder:
                records.write_checkpoint(folder, unwrapped, start.name, start.kwargs, categories, train_state, metrics)
                ray.train.report(
                    metrics,
                    checkpoint=ray.train.Checkpoint.from_directory(folder),
                    checkpoint_dir_name=f"checkpoint_epoch-{epoch + 1:04d}",
                )
        else:
            ray.train.report(metrics)


def _ray_collate(collate: Collate) -> Any:
    from ray.data.collate_fn import NumpyBatchCollateFn

    class RayCollate(NumpyBatchCollateFn):
        def __call__(self, batch: dict[str, np.ndarray]) -> Batch:
            return collate(batch)

    return RayCollate()


@dataclass
class Stepper:
    """One worker's optimizer steps: the model (DDP-wrapped with several workers) and what steps it."""

    model: "torch.nn.Module"
    params: list["torch.nn.Parameter"]
    optimizer: "torch.optim.Optimizer"
    scheduler: Any
    scaler: Any
    device: "torch.device"
    amp: bool
    world: int
    clip_grad_norm: float | None = None

    def run_epoch(self, batches: Any, epoch: int, first_step: int, steps_per_epoch: int, log_every: int | None) -> EpochStats:
        """Train on ``batches`` (:class:`Batch`); raise :class:`NonFiniteLoss` on a NaN/inf loss of any worker.

        ``epoch`` is 0-based, ``first_step`` the global step of the first batch; ``log_every``: log the
        running loss every so many steps (None: do not log; rank 0 logs).
        """
        stats = EpochStats()
        started = time.perf_counter()
        for batch in batches:
            values, names = self._step(batch, first_step + stats.steps, epoch)
            stats.steps += 1
            n_loss = 1 + len(names)
            for k, v in zip(["loss", *names], values[:n_loss]):
                stats.losses[k] = stats.losses.get(k, 0.0) + v / self.world
            stats.images += values[n_loss]
            stats.skipped_images += values[n_loss + 1]
            stats.invalid_boxes += values[n_loss + 2]
            if log_every and stats.steps % log_every == 0:
                rate = stats.images / (time.perf_counter() - started)
                logger.info("epoch %d step %d/%d loss %.4f lr %.2e %.1f images/s", epoch + 1, stats.steps, steps_per_epoch,
                            values[0] / self.world, self.optimizer.param_groups[0]["lr"], rate)  # fmt: skip
        stats.seconds = time.perf_counter() - started
        return stats

    def _step(self, batch: Batch, step: int, epoch: int) -> tuple[list[float], list[str]]:
        """One step; returns the all-reduced [loss, each loss, images, skipped, invalid boxes] and loss names."""
        import torch
        import torch.distributed as dist

        device = self.device
        images = [im.to(device, non_blocking=True) for im in batch.images]
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in batch.targets]
        weight = 1.0
        if not images:
            images = [torch.zeros(3, _BLANK_SIZE, _BLANK_SIZE, device=device)]
            targets = [{"boxes": torch.zeros(0, 4, device=device), "labels": torch.zeros(0, dtype=torch.int64, device=device)}]
            weight = 0.0
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.amp):
            losses = self.model(images, targets)
        names = sorted(losses)
        loss = sum(losses[k] for k in names) * weight
        # One small all-reduce per step: every worker learns the summed losses, so a NaN anywhere stops
        # all of them at the same step, and the logged losses are the job's, not one worker's.
        counts = torch.tensor([len(batch.images), batch.skipped, batch.invalid_boxes], device=device, dtype=torch.float32)
        summary = torch.cat([torch.stack([loss.detach().float(), *(losses[k].detach().float() * weight for k in names)]), counts])
        if self.world > 1:
            dist.all_reduce(summary)
        values = summary.tolist()
        if not all(math.isfinite(v) for v in values[: 1 + len(names)]):
            raise NonFiniteLoss(step, epoch + 1, {k: v / self.world for k, v in zip(["loss", *names], values)})
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return values, names


def _epoch_metrics(stats: EpochStats, epoch: int, step: int, optimizer: Any, resumed_from: int, world: int, nodes: int) -> dict[str, Any]:
    steps = max(1, stats.steps)
    metrics: dict[str, Any] = {"epoch": epoch + 1, "global_step": step}
    for k, v in stats.losses.items():
        metrics["loss" if k == "loss" else "loss_" + k.removeprefix("loss_")] = v / steps
    metrics.update(
        lr=optimizer.param_groups[0]["lr"],
        train_images=int(stats.images),
        images_per_s=stats.images / stats.seconds if stats.seconds > 0 else 0.0,
        epoch_seconds=stats.seconds,
        skipped_images=int(stats.skipped_images),
        invalid_boxes=int(stats.invalid_boxes),
        resumed_from_epoch=resumed_from,
        num_workers=world,
        num_nodes=nodes,
    )
    return metrics


def _log_epoch(metrics: dict[str, Any]) -> None:
    val = f", val AP {metrics['val_AP']:.3f} AP50 {metrics['val_AP50']:.3f}" if "val_AP" in metrics else ""
    logger.info(
        "epoch %d: loss %.4f, %d images at %.1f images/s (%d skipped, %d invalid boxes)%s",
        metrics["epoch"], metrics["loss"] if "loss" in metrics else float("nan"), metrics["train_images"],
        metrics["images_per_s"], metrics["skipped_images"], metrics["invalid_boxes"], val,
    )  # fmt: skip


def _gather(value: Any, world: int, to_rank0: bool = False) -> list[Any]:
    """Every worker's ``value`` (on rank 0 only with ``to_rank0``; others get ``[]``)."""
    import torch.distributed as dist

    if world == 1:
        return [value]
    if to_rank0:
        out = [None] * world if dist.get_rank() == 0 else None
        dist.gather_object(value, out, dst=0)
        return out or []
    out = [None] * world
    dist.all_gather_object(out, value)
    return out

