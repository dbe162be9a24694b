"""``detbatch detect``: images in storage -> detections in Parquet, exactly once.

The modules read in the order a batch of images passes through them::

    units     list the input, cut it into units (listing: in Ray tasks, into the output; plan: kept there)
    stream    plan rows -> units -> read -> decode (CPU tasks)
    read      stream a unit's encoded images (CPU task)
    decode    bytes -> RGB pixels, or an error row (CPU task)
    detector  the pool's actor: model, then the commit of its call (GPU/CPU actor)
    sink      Parquet file pairs and the commit log that makes reruns exactly-once
    driver    run_detect: plans, resumes, streams, and writes run.json

:mod:`detbatch.detect.config` holds the typed config of a run.
"""

from detbatch.detect.config import DetectConfig
from detbatch.detect.driver import DetectIncomplete, DetectSummary, run_detect

__all__ = ["DetectConfig", "DetectIncomplete", "DetectSummary", "run_detect"]
