"""The per-worker loop's pure parts: the LR schedule, and a NaN loss stopping with its iteration."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from detbatch.training.config import ScheduleConfig, TrainConfig
from detbatch.training.job import TrainError, _result
from detbatch.training.loop import NonFiniteLoss, Stepper, lr_factor
from detbatch.training.samples import Batch


def test_warmup_then_cosine():
    s = ScheduleConfig(epochs=2, warmup_iters=10, warmup_factor=0.1, kind="cosine", min_lr_factor=0.0)
    f = [lr_factor(i, steps_per_epoch=50, schedule=s) for i in range(100)]
    assert f[0] == pytest.approx(0.1) and f[5] == pytest.approx(0.55)
    assert f[10] == pytest.approx(1.0)
    assert f[55] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert all(a >= b for a, b in zip(f[10:], f[11:])) and f[99] < 0.01


def test_warmup_is_capped_at_one_epoch_and_multistep():
    s = ScheduleConfig(epochs=4, warmup_iters=1000, warmup_factor=0.001, kind="multistep", milestones=[2, 3], gamma=0.1)
    assert lr_factor(10, steps_per_epoch=10, schedule=s) == pytest.approx(1.0)  # warmup capped at 10 steps
    assert lr_factor(25, steps_per_epoch=10, schedule=s) == pytest.approx(0.1)
    assert lr_factor(35, steps_per_epoch=10, schedule=s) == pytest.approx(0.01)


class _ExplodingModel(torch.nn.Module):
    """A detector stand-in whose loss turns NaN at its third step."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
        self.calls = 0

    def forward(self, images, targets):
        self.calls += 1
        bad = float("nan") if self.calls == 3 else 1.0
        return {"loss_classifier": self.w.sum() * bad, "loss_box_reg": self.w.sum() * 0.5}


def _batches(n: int):
    for _ in range(n):
        yield Batch([torch.zeros(3, 8, 8)], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}], [1], 0, 0)


def test_nan_loss_stops_naming_the_iteration():
    model = _ExplodingModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    stepper = Stepper(model, list(model.parameters()), optimizer, scheduler, scaler, torch.device("cpu"), amp=False, world=1)
    with pytest.raises(NonFiniteLoss) as info:
        stepper.run_epoch(_batches(5), epoch=1, first_step=40, steps_per_epoch=5, log_every=1)
    assert info.value.step == 42 and info.value.epoch == 2
    assert math.isnan(info.value.losses["loss_classifier"])
    assert info.value.losses["loss_box_reg"] == pytest.approx(0.5 * model.w.item())
    assert model.w.item() == pytest.approx(1.0 - 2 * 0.1 * 1.5)  # two good steps, no step on the NaN


def test_driver_turns_the_nan_report_into_an_error(tmp_path):
    result = SimpleNamespace(metrics={"epoch": 2, "nan_iteration": 42, "nan_losses": {"loss": float("nan")}})
    with pytest.raises(TrainError, match="NaN or infinite at iteration 42 .epoch 2.*lower optim.lr"):
        _result(TrainConfig(), result, str(tmp_path), has_val=False)
