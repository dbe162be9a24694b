"""``detbatch export``: a detector to TorchScript or ONNX, checked against the eager model before it is written.

:mod:`.exporter` runs the export and the parity check; :mod:`.modules` holds the torch modules the files contain.
"""

from detbatch.export.exporter import FORMATS, PARITY_TOLERANCE, ExportResult, ParityError, compare_detections, export_model

__all__ = ["FORMATS", "PARITY_TOLERANCE", "ExportResult", "ParityError", "compare_detections", "export_model"]
