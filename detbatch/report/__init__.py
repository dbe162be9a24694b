"""``detbatch report``: a self-contained HTML page of a detect run, in the order it is built:

- ``data``: the bounded reads of the run's committed parts (summary scans, the sample, errors);
- ``truth``: ground truth paired with the run, TP / FP / FN by greedy matching, the worst images;
- ``html``: the page (``page.js`` and ``page.css`` inline);
- ``build``: ``write_report``, thumbnails and the evaluation's files.
"""

from detbatch.report.build import DEFAULT_SAMPLES, ReportResult, write_report

__all__ = ["DEFAULT_SAMPLES", "ReportResult", "write_report"]
