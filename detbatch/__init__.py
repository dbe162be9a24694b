"""detbatch: object detection at cluster scale on Ray — detect, train, evaluate."""

__version__ = "0.1.0"
