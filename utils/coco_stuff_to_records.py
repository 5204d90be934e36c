"""Convert COCO-Stuff (164k, 2017 images + stuff-and-thing PNG label maps) into tfrecords.

    python utils/coco_stuff_to_records.py --src COCO_STUFF_DIR [--labels_file labels.txt] [--out DIR]

The class list comes from the dataset's label file ("id: name" lines); its ids
are renumbered 0..C-1 in file order, so the network gets no empty logits for
ids COCO never uses. Importable: `convert(src, out_dir)` returns a
ConversionSummary.
"""
if __package__ in (None, ""):  # run as `python utils/...`: find `utils` at the repo root,
    # as `python -m` does, not in this file's folder (sys.path[0]), whose modules shadow others
    import pathlib, sys; sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])

import os
import sys

from utils.converters import (DEFAULT_WORKERS, LabelMap, build_converter_parser, output_dir,
                              pairs_from_folders, print_summary, require_dir, require_file,
                              write_dataset)
from utils.datasets import DATASETS
from utils.labels import IGNORE_LABEL
from utils.errors import SegMentorError, run_main

DATASET = DATASETS["coco_stuff"]
LABEL_MAPS_FOLDER = "stuffthingmaps_trainval2017"  # the name stuffthingmaps_trainval2017.zip unpacks to
SPLIT_FOLDERS = {"train": "train2017", "val": "val2017"}  # test labels are not public
DEFAULT_LABELS_FILE = "labels.txt"
UNLABELED_ID = 0  # stored in the label maps as IGNORE_LABEL
# Thing ids the COCO category list reserves but no COCO annotation uses (street sign,
# hat, shoe, eye glasses, plate, mirror, window, desk, door, blender, hair brush):
# labels.txt lists them, the label maps never contain them. Dropping them gives
# the usual 171 classes (80 things + 91 stuff).
UNUSED_COCO_IDS = frozenset({12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91})

LAYOUT = f"""\
expected source layout (COCO 2017 images + stuffthingmaps_trainval2017.zip):
  SRC/train2017/*.jpg
  SRC/val2017/*.jpg
  SRC/{LABEL_MAPS_FOLDER}/train2017/*.png    same base names as the images
  SRC/{LABEL_MAPS_FOLDER}/val2017/*.png
  SRC/labels.txt                              "id: name" per line, 0: unlabeled
                                              (labels.txt of github.com/nightrome/cocostuff)
Label map pixels hold id - 1 (0 = person ... 181 = wood) and 255 = unlabeled
(ignored). The 11 ids COCO never uses are dropped, the rest renumbered 0..C-1
in file order (171 classes with the official labels.txt)."""


def read_class_list(labels_file):
    """[(id, name)] of the classes in a COCO-Stuff label file, unlabeled and unused ids left out."""
    classes = []
    with open(require_file(labels_file, "COCO-Stuff label file",
                           "pass --labels_file (labels.txt of the cocostuff repository)")) as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            label_id, separator, name = line.partition(":")
            if not separator or not label_id.strip().isdigit() or not name.strip():
                raise SegMentorError(f"{labels_file} line {line_number} should be 'id: name', got "
                                     f"{line.strip()!r}; fix the file")
            label_id = int(label_id)
            if label_id == UNLABELED_ID or label_id in UNUSED_COCO_IDS:
                continue
            if not 0 <= pixel_value(label_id) < IGNORE_LABEL:
                raise SegMentorError(f"{labels_file} line {line_number}: id {label_id} does not fit "
                                     f"an 8-bit label map; fix the file")
            classes.append((label_id, name.strip()))
    if not classes:
        raise SegMentorError(f"{labels_file} lists no classes; expected 'id: name' lines")
    return classes


def pixel_value(label_id):
    """The label maps store id - 1: person (id 1) is pixel value 0."""
    return label_id - 1


def coco_stuff_splits(src):
    """{split: [Pair]} of same-named images and label maps."""
    require_dir(src, "COCO-Stuff folder", "pass --src, the folder holding train2017/ val2017/ "
                                          f"{LABEL_MAPS_FOLDER}/")
    splits = {}
    for split, folder in SPLIT_FOLDERS.items():
        image_dir = require_dir(os.path.join(src, folder), f"COCO {split} image folder",
                                "unpack the COCO 2017 images into --src (see --help)")
        label_dir = require_dir(os.path.join(src, LABEL_MAPS_FOLDER, folder),
                                f"COCO-Stuff {split} label folder",
                                "unpack stuffthingmaps_trainval2017.zip into --src (see --help)")
        splits[split] = pairs_from_folders(image_dir, label_dir)
    return splits


def convert(src, out_dir, labels_file=None, skip_bad=False, workers=DEFAULT_WORKERS):
    """Write COCO-Stuff's records and dataset.json into `out_dir` -> ConversionSummary."""
    src = os.path.abspath(src)
    classes = read_class_list(labels_file or os.path.join(src, DEFAULT_LABELS_FILE))
    label_map = LabelMap(len(classes), {
        IGNORE_LABEL: IGNORE_LABEL,
        **{pixel_value(label_id): index for index, (label_id, _) in enumerate(classes)}})
    return write_dataset(coco_stuff_splits(src), out_dir, name=DATASET.name,
                         class_names=[name for _, name in classes], label_map=label_map,
                         source=src, skip_bad=skip_bad, workers=workers)


def build_parser():
    parser = build_converter_parser(
        DATASET.name, description="Convert COCO-Stuff (images + PNG label maps) into seg-mentor "
                                  "tfrecords.",
        layout=LAYOUT, src_help="the COCO-Stuff folder (holding train2017/, val2017/, "
                                f"{LABEL_MAPS_FOLDER}/, labels.txt)")
    parser.add_argument("--labels_file", type=str, default=None,
                        help=f"the 'id: name' class list (default: SRC/{DEFAULT_LABELS_FILE})")
    return parser


def main(args):
    print_summary(convert(args.src, output_dir(args, DATASET.name), args.labels_file,
                          args.skip_bad, args.workers))


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser()))
