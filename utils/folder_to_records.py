"""Convert your own data, an image folder plus a label folder, into a seg-mentor dataset.

    python utils/folder_to_records.py --images IMG_DIR --labels LABEL_DIR --name roads \\
        --class_names road,car,sky [--val_ratio 0.2] [--seed 0]

Then `--dataset roads` works in fcn_train.py and fcn_test.py: the dataset
exists only through the dataset.json written next to its records. The pairs
are split at random (seeded) into train and val. Importable: `convert(...)`
returns a ConversionSummary.
"""
if __package__ in (None, ""):  # run as `python utils/...`: find `utils` at the repo root,
    # as `python -m` does, not in this file's folder (sys.path[0]), whose modules shadow others
    import pathlib, sys; sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])

import os
import random
import re
import sys

from utils.converters import (DEFAULT_WORKERS, LABEL_EXTENSIONS, LabelMap, build_converter_parser,
                              output_dir, pairs_from_folders, print_summary, write_dataset)
from utils.datasets import DATASETS
from utils.labels import IGNORE_LABEL
from utils.errors import SegMentorError, run_main

DEFAULT_VAL_RATIO = 0.2
DEFAULT_SEED = 0
DATASET_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # it becomes a folder name

LAYOUT = f"""\
expected source layout (same base names pair up; --src DIR means DIR/images, DIR/labels):
  IMG_DIR/a.jpg  IMG_DIR/b.png ...        RGB or grey images (png, jpg, bmp, tif, webp)
  LABEL_DIR/a.png  LABEL_DIR/b.png ...    single-channel maps of class indices
                                          0..N-1, {IGNORE_LABEL} = ignore; lossless
                                          ({', '.join(LABEL_EXTENSIONS)}), same size as the image
Colour-coded masks must be turned into class indices first."""


def split_pairs(pairs, val_ratio, seed):
    """{'train': [...], 'val': [...]}: a seeded random `val_ratio` of the pairs (at least one
    when val_ratio > 0), each split in name order; no 'val' when val_ratio is 0."""
    if not pairs:
        return {"train": pairs}
    shuffled = list(pairs)
    random.Random(seed).shuffle(shuffled)
    num_val = round(len(pairs) * val_ratio)
    if val_ratio > 0:
        num_val = min(max(num_val, 1), len(pairs) - 1)  # both splits keep at least one pair
    val_names = {pair.name for pair in shuffled[:num_val]}
    splits = {"train": [pair for pair in pairs if pair.name not in val_names]}
    if num_val:
        splits["val"] = [pair for pair in pairs if pair.name in val_names]
    return splits


def resolve_classes(num_classes, class_names):
    """Class names from --class_names and/or --num_classes (class_0 ... when unnamed)."""
    if class_names is None and num_classes is None:
        raise SegMentorError("give --num_classes N or --class_names a,b,c")
    if class_names is not None:
        if num_classes is not None and num_classes != len(class_names):
            raise SegMentorError(f"--num_classes {num_classes} but --class_names has "
                                 f"{len(class_names)} names; give matching values or just one")
        num_classes = len(class_names)
    if not 1 <= num_classes <= IGNORE_LABEL:
        raise SegMentorError(f"--num_classes must be 1..{IGNORE_LABEL} (labels are 8-bit, "
                             f"{IGNORE_LABEL} = ignore), got {num_classes}")
    return tuple(class_names or (f"class_{index}" for index in range(num_classes)))


def check_name(name):
    if not DATASET_NAME_PATTERN.fullmatch(name):
        raise SegMentorError(f"--name {name!r} must be a plain folder name (letters, digits, _ . -)")
    if name in DATASETS:
        raise SegMentorError(f"--name {name} is a built-in dataset; pick another name, or use "
                             f"its own converter: {DATASETS[name].converter}")


def convert(images_dir, labels_dir, name, out_dir, class_names, val_ratio=DEFAULT_VAL_RATIO,
            seed=DEFAULT_SEED, skip_bad=False, workers=DEFAULT_WORKERS):
    """Write the records and dataset.json of a folder dataset into `out_dir` -> ConversionSummary."""
    check_name(name)
    if not 0 <= val_ratio < 1:
        raise SegMentorError(f"--val_ratio must be in [0, 1), got {val_ratio}")
    images_dir, labels_dir = os.path.abspath(images_dir), os.path.abspath(labels_dir)
    splits = split_pairs(pairs_from_folders(images_dir, labels_dir), val_ratio, seed)
    return write_dataset(splits, out_dir, name=name, class_names=class_names,
                         label_map=LabelMap.identity(len(class_names)),
                         source=f"images={images_dir} labels={labels_dir}",
                         skip_bad=skip_bad, workers=workers)


def _class_names(text):
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise ValueError("empty class name")
    return names


def build_parser():
    parser = build_converter_parser(
        "<name>", description="Convert an image folder and a label folder into a seg-mentor dataset.",
        layout=LAYOUT, src_required=False,
        src_help="folder holding images/ and labels/ (instead of --images and --labels)")
    parser.add_argument("--images", type=str, default=None, help="folder of the images")
    parser.add_argument("--labels", type=str, default=None,
                        help="folder of the label maps, named as the images")
    parser.add_argument("--name", type=str, required=True,
                        help="dataset name, used as --dataset NAME by the other scripts")
    parser.add_argument("--num_classes", type=int, default=None,
                        help="number of classes (label values 0..N-1); optional with --class_names")
    parser.add_argument("--class_names", type=_class_names, default=None,
                        help="comma-separated class names, class 0 first (default: class_0, ...)")
    parser.add_argument("--val_ratio", type=float, default=DEFAULT_VAL_RATIO,
                        help="fraction of pairs held out for validation, 0 for none "
                             "(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help="seed of the train/val split (default: %(default)s)")
    return parser


def main(args):
    images_dir = args.images or (args.src and os.path.join(args.src, "images"))
    labels_dir = args.labels or (args.src and os.path.join(args.src, "labels"))
    if not images_dir or not labels_dir:
        raise SegMentorError("give --images and --labels (or --src holding images/ and labels/)")
    class_names = resolve_classes(args.num_classes, args.class_names)
    summary = convert(images_dir, labels_dir, args.name, output_dir(args, args.name), class_names,
                      args.val_ratio, args.seed, args.skip_bad, args.workers)
    print_summary(summary)
    if "val" not in summary.counts:
        print(f"note: no validation split (--val_ratio {args.val_ratio}); fcn_train.py validates "
              f"on one, so convert again with --val_ratio > 0 to train on {args.name}")


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser()))
