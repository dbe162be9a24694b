"""Datasets: labels in COCO, VOC or YOLO read into one COCO dict (:mod:`.labels`, with :mod:`.voc` and
:mod:`.yolo`), converted between formats (:mod:`.convert`) and split (:mod:`.split`); synthetic labelled
images (:mod:`.synth`) and shards packed from a folder (:mod:`.prepare`)."""
