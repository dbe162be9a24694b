"""``detbatch evaluate``: a detect run against COCO ground truth, COCO mAP or Pascal VOC AP."""

from detbatch.evaluate.job import EvaluateConfig, run_evaluate, summary_lines

__all__ = ["EvaluateConfig", "run_evaluate", "summary_lines"]
