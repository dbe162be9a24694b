"""Data: ``detbatch synth``, ``prepare``, ``convert`` and ``split``."""

from __future__ import annotations

import argparse

from detbatch.cli.common import add_label_flags


def add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write a labelled synthetic shapes dataset (images + COCO JSON)")
    p.add_argument("out", help="output folder/prefix (any fsspec URI)")
    p.add_argument("--images", type=int, default=200, help="number of images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=128, help="side of the square images, pixels")
    p.add_argument("--max-objects", type=int, default=4, help="objects per image at most")
    p.add_argument("--format", choices=["coco", "voc", "yolo"], default="coco",
                   help="labels as OUT/annotations.json (coco), OUT/Annotations/*.xml (voc) or OUT/labels/*.txt (yolo)")
    p.set_defaults(run=_run_synth)

def _run_synth(args: argparse.Namespace) -> int:
    from detbatch.datasets.synth import synthesize

    result = synthesize(args.out, args.images, seed=args.seed, image_size=args.image_size, max_objects=args.max_objects,
                        format=args.format)
    print(f"synth: {result.num_images} images, {result.num_annotations} objects -> {result.out}")
    print(f"  images:      {result.images_uri}")
    print(f"  annotations: {result.annotations_uri}")
    return 0

def add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="pack a folder of images (and a COCO JSON) into tar or Parquet shards")
    p.add_argument("images", help="folder/prefix of image files")
    p.add_argument("out", help="output folder/prefix for the shards")
    p.add_argument("--format", choices=["tar", "parquet"], required=True)
    p.add_argument("--annotations", help="labels (COCO JSON, or a VOC / YOLO folder): pack only their images, with ids and annotations")
    add_label_flags(p)
    p.add_argument("--images-per-shard", type=int, default=1000)
    p.add_argument("--overwrite", action="store_true", help="replace shards already in OUT")
    p.set_defaults(run=_run_prepare)

def _run_prepare(args: argparse.Namespace) -> int:
    from detbatch.datasets.prepare import prepare_shards

    result = prepare_shards(args.images, args.out, args.format, annotations=args.annotations,
                            images_per_shard=args.images_per_shard, overwrite=args.overwrite,
                            annotations_format=args.annotations_format or "auto", names=args.names)
    skipped = f" ({result.num_skipped} images not in the annotations skipped)" if result.num_skipped else ""
    print(f"prepare: {result.num_images} images in {result.num_shards} {result.format} shards -> {result.out}{skipped}")
    return 0

def add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert labels between COCO JSON, Pascal VOC XML and YOLO txt",
                       description="Read labels in any format, check them against the image headers, and write them "
                       "in another under OUT (labels only; the images stay where they are).")
    p.add_argument("annotations", help="a COCO JSON, or a folder of VOC XML / YOLO txt labels (any fsspec URI)")
    p.add_argument("out", help="output folder: OUT/annotations.json, OUT/Annotations/*.xml or OUT/labels/*.txt (+ data.yaml)")
    p.add_argument("--to", required=True, choices=["coco", "voc", "yolo"])
    add_label_flags(p, images="--images", images_help="the images the labels belong to (default: beside them)")
    p.add_argument("--drop-unlabeled", action="store_true", help="VOC, YOLO: leave out images without a label file")
    p.set_defaults(run=_run_convert)

def _run_convert(args: argparse.Namespace) -> int:
    from detbatch.datasets.convert import convert

    result = convert(args.annotations, args.out, args.to, args.annotations_format or "auto", images=args.images,
                     names=args.names, negatives=not args.drop_unlabeled)
    print("\n".join(result.lines()))
    return 0

def add_split(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("split", help="split one dataset into train/val/test COCO JSONs (seeded, stratified, group-aware)")
    p.add_argument("annotations", help="a COCO JSON, or a folder of VOC XML / YOLO txt labels (any fsspec URI)")
    p.add_argument("out", help="output folder: OUT/train.json, OUT/val.json, OUT/test.json, OUT/split.json")
    p.add_argument("--fractions", default="0.8,0.1,0.1", help="train,val,test shares of the images (default 0.8,0.1,0.1; 0 skips a split)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--group-by", help="keep groups together: a regex on file_name (its first group is the key), "
                   "or field:NAME for a field of the COCO image entries")
    add_label_flags(p, images="--images", images_help="VOC, YOLO: the images the labels belong to (default: beside them)")
    p.add_argument("--drop-unlabeled", action="store_true", help="VOC, YOLO: leave out images without a label file")
    p.set_defaults(run=_run_split)

def _run_split(args: argparse.Namespace) -> int:
    from detbatch.datasets.labels import load_annotations
    from detbatch.datasets.split import split_dataset, write_splits
    from detbatch.errors import InputError

    try:
        fractions = tuple(float(f) for f in args.fractions.split(","))
    except ValueError:
        raise InputError(f"--fractions {args.fractions!r}: give three numbers, e.g. 0.8,0.1,0.1") from None
    labels = load_annotations(args.annotations, args.annotations_format or "auto", images=args.images, names=args.names,
                              negatives=not args.drop_unlabeled)
    result = split_dataset(labels.coco, fractions, seed=args.seed, group_by=args.group_by)  # type: ignore[arg-type]
    uris = write_splits(result, args.out)
    print(f"split: {labels.summary()}; {result.report['groups']} groups -> {', '.join(uris.values())}")
    print("\n".join(result.lines()))
    return 0
