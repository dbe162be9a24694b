"""Fine-tune a detector on labelled images with Ray Train (``detbatch train``).

The flow: :mod:`~detbatch.training.data` (annotations -> Ray Datasets of decoded images) ->
:mod:`~detbatch.training.loop` (each worker: :mod:`~detbatch.training.samples` augment and collate,
DDP steps, :mod:`~detbatch.training.validation` mAP) -> :mod:`~detbatch.training.records` (checkpoints,
``metrics.jsonl``, plots). :mod:`~detbatch.training.job` is the driver; :mod:`~detbatch.training.model`
builds the starting model.
"""

from detbatch.training.config import TrainConfig
from detbatch.training.job import TrainError, TrainResult, run_train

__all__ = ["TrainConfig", "TrainError", "TrainResult", "run_train"]
