"""Convert Pascal VOC 2012 plus the Berkeley SBD annotations ("VOC augmented") into tfrecords.

    python utils/pascal_voc_augmented_to_records.py --src DIR_WITH_BOTH [--out DIR]
    python utils/pascal_voc_augmented_to_records.py --voc VOC2012_DIR --sbd SBD_DATASET_DIR

Splits, as in the FCN and DeepLab papers:
    train = SBD train + SBD val + VOC12 train, minus every image of VOC12 val
    val   = VOC12 val
An image labelled by both VOC and SBD takes VOC's label: it is the official
one, and marks object borders as ignore. Importable: `convert(voc_dir, sbd_dir,
out_dir)` returns a ConversionSummary.
"""
if __package__ in (None, ""):  # run as `python utils/...`: find `utils` at the repo root,
    # as `python -m` does, not in this file's folder (sys.path[0]), whose modules shadow others
    import pathlib, sys; sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])

import os
import sys

import numpy as np
import scipy.io

from utils.converters import (DEFAULT_WORKERS, BadPairError, LabelMap, Pair,
                              build_converter_parser, output_dir, print_summary, require_dir,
                              require_file, write_dataset)
from utils.datasets import DATASETS
from utils.errors import SegMentorError, first_line, run_main

DATASET = DATASETS["pascal_voc"]
# Where the official archives unpack, relative to --src (first match wins):
# VOCtrainval_11-May-2012.tar -> VOCdevkit/VOC2012, SBD's benchmark.tgz -> benchmark_RELEASE/dataset.
# The seed kept them as /data/VOCdevkit and /data/SBD/benchmark_RELEASE: --src /data finds both.
VOC_FOLDERS = ("VOCdevkit/VOC2012", "VOC2012")
SBD_FOLDERS = ("benchmark_RELEASE/dataset", "SBD/benchmark_RELEASE/dataset", "SBD/dataset",
               "sbd/dataset", "dataset")
SBD_SPLITS = ("train", "val")  # SBD's own val is not VOC12 val: both feed training

LAYOUT = """\
expected source layout (give --src holding both, or --voc and --sbd):
  VOC (--voc, or SRC/VOCdevkit/VOC2012):
    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png            palette PNGs: the palette index is the
                                          class (0-20), 255 = border, ignored
    ImageSets/Segmentation/train.txt      one <id> per line
    ImageSets/Segmentation/val.txt
  SBD (--sbd, or SRC/benchmark_RELEASE/dataset, or SRC/SBD/benchmark_RELEASE/dataset):
    img/<id>.jpg
    cls/<id>.mat                          GTcls.Segmentation holds the classes
    train.txt, val.txt                    one <id> per line
Writes training.tfrecords (SBD train+val and VOC train, minus VOC val) and
validation.tfrecords (VOC val)."""


def read_sbd_label(path):
    """SBD's GTcls.Segmentation (class indices [h, w]) -> (array, None)."""
    try:
        mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
        values = np.asarray(mat["GTcls"].Segmentation)
    except FileNotFoundError as err:
        raise BadPairError(f"SBD label {path} not found") from err
    except (OSError, ValueError, KeyError, AttributeError, NotImplementedError, TypeError) as err:
        raise BadPairError(f"cannot read SBD label {path} as a .mat with GTcls.Segmentation "
                           f"({type(err).__name__}: {first_line(err)})") from err
    if not np.issubdtype(values.dtype, np.integer):
        raise BadPairError(f"SBD label {path} holds {values.dtype} values, not class indices")
    return values, None


def _read_ids(list_path):
    with open(require_file(list_path, "image list")) as f:
        return [line.strip() for line in f if line.strip()]


def voc_pairs(voc_dir, split):
    """{image id: Pair} of VOC12 `split` ('train' or 'val')."""
    ids = _read_ids(os.path.join(voc_dir, "ImageSets", "Segmentation", f"{split}.txt"))
    return {image_id: Pair(f"{image_id}.jpg", os.path.join(voc_dir, "JPEGImages", f"{image_id}.jpg"),
                           os.path.join(voc_dir, "SegmentationClass", f"{image_id}.png"))
            for image_id in ids}


def sbd_pairs(sbd_dir, split):
    """{image id: Pair} of SBD `split` ('train' or 'val'), labels from the .mat files."""
    ids = _read_ids(os.path.join(sbd_dir, f"{split}.txt"))
    return {image_id: Pair(f"{image_id}.jpg", os.path.join(sbd_dir, "img", f"{image_id}.jpg"),
                           os.path.join(sbd_dir, "cls", f"{image_id}.mat"), read_label=read_sbd_label)
            for image_id in ids}


def augmented_splits(voc_dir, sbd_dir):
    """{'train': [Pair], 'val': [Pair]}; no VOC12 val image is in train."""
    val = voc_pairs(voc_dir, "val")
    train = {}
    for split in SBD_SPLITS:
        train.update(sbd_pairs(sbd_dir, split))
    train.update(voc_pairs(voc_dir, "train"))  # VOC's label wins where both have one
    # Validating on a training image would overstate mIoU without any error to
    # notice: this filter is what keeps the splits disjoint (tests check it).
    train = {image_id: pair for image_id, pair in train.items() if image_id not in val}
    return {"train": [train[i] for i in sorted(train)], "val": [val[i] for i in sorted(val)]}


def find_sources(src, voc_dir, sbd_dir):
    """(voc_dir, sbd_dir) from --voc/--sbd, else found inside --src."""
    if src is None and (voc_dir is None or sbd_dir is None):
        raise SegMentorError("give --src (a folder holding VOCdevkit/VOC2012 and "
                             "benchmark_RELEASE/dataset) or both --voc and --sbd")
    # --voc VOCdevkit and --sbd benchmark_RELEASE (the archives' top folders) work too.
    voc_dir = _or_inner(voc_dir, "VOC2012", "JPEGImages") if voc_dir \
        else _first_dir(src, VOC_FOLDERS, "JPEGImages", "--voc")
    sbd_dir = _or_inner(sbd_dir, "dataset", "cls") if sbd_dir \
        else _first_dir(src, SBD_FOLDERS, "cls", "--sbd")
    require_dir(os.path.join(voc_dir, "SegmentationClass"), "VOC label folder",
                "--voc must be the VOC2012 folder (holding JPEGImages/, SegmentationClass/, ImageSets/)")
    require_dir(os.path.join(sbd_dir, "cls"), "SBD label folder",
                "--sbd must be SBD's dataset folder (holding img/, cls/, train.txt, val.txt)")
    return os.path.abspath(voc_dir), os.path.abspath(sbd_dir)


def _first_dir(src, candidates, marker, flag):
    require_dir(src, "source folder")
    for candidate in candidates:
        if os.path.isdir(os.path.join(src, candidate, marker)):
            return os.path.join(src, candidate)
    raise SegMentorError(f"no {' or '.join(candidates)} with {marker}/ in {src}; "
                         f"pass the folder with {flag}")


def _or_inner(folder, inner, marker):
    """`folder`, or `folder/inner` when only that one holds `marker`/."""
    if not os.path.isdir(os.path.join(folder, marker)) and \
            os.path.isdir(os.path.join(folder, inner, marker)):
        return os.path.join(folder, inner)
    return folder


def convert(voc_dir, sbd_dir, out_dir, skip_bad=False, workers=DEFAULT_WORKERS):
    """Write the augmented VOC records and dataset.json into `out_dir` -> ConversionSummary."""
    voc_dir, sbd_dir = os.path.abspath(voc_dir), os.path.abspath(sbd_dir)
    return write_dataset(augmented_splits(voc_dir, sbd_dir), out_dir, name=DATASET.name,
                         class_names=DATASET.class_names, colors=DATASET.colors,
                         label_map=LabelMap.identity(DATASET.num_classes),
                         source=f"voc={voc_dir} sbd={sbd_dir}", skip_bad=skip_bad, workers=workers)


def build_parser():
    parser = build_converter_parser(
        DATASET.name, description="Convert Pascal VOC 2012 + SBD (augmented VOC, 21 classes) "
                                  "into seg-mentor tfrecords.",
        layout=LAYOUT, src_required=False,
        src_help="folder holding both VOCdevkit/VOC2012 and benchmark_RELEASE/dataset "
                 "(overridden by --voc/--sbd)")
    parser.add_argument("--voc", type=str, default=None,
                        help="the VOC2012 folder (holding JPEGImages/, SegmentationClass/, ImageSets/)")
    parser.add_argument("--sbd", type=str, default=None,
                        help="SBD's dataset folder (holding img/, cls/, train.txt, val.txt)")
    return parser


def main(args):
    voc_dir, sbd_dir = find_sources(args.src, args.voc, args.sbd)
    print_summary(convert(voc_dir, sbd_dir, output_dir(args, DATASET.name), args.skip_bad, args.workers))


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser()))
