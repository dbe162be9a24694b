"""``detbatch evaluate``: a detect run against COCO ground truth, COCO mAP or Pascal VOC AP.

The maths is :mod:`detbatch.metrics`; the modules here read in the order an evaluation runs::

    config       EvaluateConfig, the keys of configs/evaluate.yaml
    inputs       the ground truth, the detect run (committed parts only), pairing run and ground-truth images
    metric       the chosen metric's steps over arrays, shared by both engines
    distributed  the Ray map/reduce for large runs: read -> match -> reduce stages of tasks
    outputs      metrics.json, report.md, pr_curves.png
    job          run_evaluate: in this process or on Ray, then the outputs
"""

from detbatch.evaluate.config import EvaluateConfig
from detbatch.evaluate.job import run_evaluate
from detbatch.metrics.report import summary_lines

__all__ = ["EvaluateConfig", "run_evaluate", "summary_lines"]
