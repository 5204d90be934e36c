"""Convert CamVid in the SegNet layout into seg-mentor tfrecords.

    python utils/camvid_to_records.py --src /path/to/CamVid [--out DIR]

Writes training.tfrecords, validation.tfrecords, test.tfrecords (when the
source has a test split) and dataset.json. Label 11 (void) becomes the ignore
label. Importable: `convert(src, out_dir)` returns a ConversionSummary.
"""
if __package__ in (None, ""):  # run as `python utils/...`: find `utils` at the repo root,
    # as `python -m` does, not in this file's folder (sys.path[0]), whose modules shadow others
    import pathlib, sys; sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])

import os
import sys

from utils.converters import (DEFAULT_WORKERS, Pair, LabelMap, build_converter_parser,
                              output_dir, pairs_from_folders, print_summary, require_dir,
                              write_dataset)
from utils.datasets import DATASETS
from utils.labels import IGNORE_LABEL
from utils.errors import SegMentorError, run_main

DATASET = DATASETS["camvid"]
VOID_LABEL = 11  # "Unlabelled" in SegNet's CamVid; not one of the 11 scored classes
# The SegNet list files name every file under this prefix, the folder SegNet was built in.
SEGNET_PREFIX = "/SegNet/CamVid/"
# split -> (image folder, label folder, list file)
SPLIT_SOURCES = {
    "train": ("train", "trainannot", "train.txt"),
    "val": ("val", "valannot", "val.txt"),
    "test": ("test", "testannot", "test.txt"),
}
OPTIONAL_SPLITS = ("test",)  # the copy SegNet ships has it, smaller copies often do not

LAYOUT = """\
expected source layout (SegNet's CamVid; the test split is optional):
  SRC/train/*.png       SRC/trainannot/*.png    SRC/train.txt
  SRC/val/*.png         SRC/valannot/*.png      SRC/val.txt
  SRC/test/*.png        SRC/testannot/*.png     SRC/test.txt
Images are RGB, labels single-channel PNGs of the same size holding class
indices 0-10, and 11 for void (stored as the ignore label 255). Each list line
is 'IMAGE LABEL' with paths beginning /SegNet/CamVid/, read as SRC/; without a
list file the pairs are the same-named files of the two folders."""


def camvid_splits(src):
    """{split: [Pair]} of the splits present in `src`."""
    require_dir(src, "CamVid folder", "pass --src, the folder holding train/ trainannot/ val/ valannot/")
    splits = {}
    for split, (image_folder, label_folder, list_name) in SPLIT_SOURCES.items():
        list_path = os.path.join(src, list_name)
        image_dir = os.path.join(src, image_folder)
        if os.path.isfile(list_path):
            splits[split] = pairs_from_list(list_path, src)
        elif os.path.isdir(image_dir) or split not in OPTIONAL_SPLITS:
            label_dir = os.path.join(src, label_folder)
            for folder, what in ((image_dir, "image"), (label_dir, "label")):
                require_dir(folder, f"CamVid {split} {what} folder",
                            f"--src must hold the SegNet layout ({image_folder}/ and {label_folder}/)")
            splits[split] = pairs_from_folders(image_dir, label_dir)
    return splits


def pairs_from_list(list_path, src):
    """Pairs of a SegNet list file, its /SegNet/CamVid/ paths mapped into `src`."""
    pairs = []
    with open(list_path) as f:
        for line_number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2:
                raise SegMentorError(f"{list_path} line {line_number} should be 'IMAGE LABEL', got "
                                     f"{line.strip()!r}; fix the line or delete the list file")
            image_path, label_path = (_local_path(field, src) for field in fields)
            pairs.append(Pair(os.path.basename(image_path), image_path, label_path))
    return pairs


def _local_path(listed_path, src):
    if listed_path.startswith(SEGNET_PREFIX):
        return os.path.join(src, listed_path[len(SEGNET_PREFIX):])
    return os.path.join(src, listed_path)  # relative paths: relative to src; absolute kept


def convert(src, out_dir, skip_bad=False, workers=DEFAULT_WORKERS):
    """Write CamVid's records and dataset.json into `out_dir` -> ConversionSummary."""
    src = os.path.abspath(src)
    return write_dataset(camvid_splits(src), out_dir, name=DATASET.name,
                         class_names=DATASET.class_names, colors=DATASET.colors,
                         label_map=LabelMap.identity(DATASET.num_classes, {VOID_LABEL: IGNORE_LABEL}),
                         source=src, skip_bad=skip_bad, workers=workers)


def build_parser():
    return build_converter_parser(
        DATASET.name, description="Convert CamVid (SegNet layout) into seg-mentor tfrecords.",
        layout=LAYOUT, src_help="the CamVid folder (the one holding train/, trainannot/, ...)")


def main(args):
    print_summary(convert(args.src, output_dir(args, DATASET.name), args.skip_bad, args.workers))


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser()))
