"""Datasets detbatch writes: synthetic labelled images (:mod:`.synth`) and shards packed from a folder (:mod:`.prepare`)."""
