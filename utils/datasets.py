"""The dataset registry: what each dataset is and where its records live.

A `DatasetSpec` holds everything the rest of seg-mentor needs to know about a
dataset (class names, display colours, pixel frequencies, training size, the
records file of each split, the command that makes them). `DATASETS` has the
built-in entries; `load_dataset` merges an entry with the `dataset.json` its
converter wrote next to the records, which is also the only home of a user's
own folder dataset.

    spec = load_dataset('camvid', datapath)      # -> DatasetSpec, records checked
    path = record_path(spec, datapath, 'train')  # <datapath>/camvid/training.tfrecords

Layout: <datapath>/<name>/{training,validation,test}.tfrecords + dataset.json.
"""
import dataclasses
import fcntl
import json
import os
import pathlib
import sys
from types import MappingProxyType
from typing import Callable, Mapping, Optional

from utils import shapes
from utils.errors import SegMentorError, first_line
from utils.files import disk_full_errors, write_text_atomic
from utils.labels import IGNORE_LABEL
from utils.tf_records import count_records

# data/ in the repository root (ignored by git); every script takes --datapath.
DEFAULT_DATAPATH = str(pathlib.Path(__file__).resolve().parents[1] / "data")

DATASET_META_FILE = "dataset.json"
LOCK_FILE = ".lock"  # held while a synthetic dataset is generated
SPLIT_FILES = MappingProxyType({"train": "training.tfrecords",
                                "val": "validation.tfrecords",
                                "test": "test.tfrecords"})

# Training --pixels default for real photographs: the seg-mentor crop size.
REAL_DATASET_PIXELS = 512


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One dataset. Index i of class_names/colors/class_frequencies is class i."""
    name: str
    class_names: tuple
    colors: tuple                       # (r, g, b) per class, for display
    class_frequencies: Optional[tuple]  # fraction of valid train pixels, None if unknown
    default_pixels: int                 # training --pixels default (0 = native size)
    converter: str                      # command (without --out) that writes the records
    split_files: Mapping = dataclasses.field(default_factory=lambda: SPLIT_FILES, hash=False)
    split_counts: Optional[Mapping] = dataclasses.field(default=None, hash=False)  # from dataset.json
    source: Optional[str] = None        # where the records were converted from
    # Synthetic datasets: make_records(dataset_dir, split_files) writes the split
    # records and returns the dataset.json dict; load_dataset calls it when the
    # records are missing or were made by another version of the generator
    # (other `source`).
    make_records: Optional[Callable[[str, Mapping], dict]] = dataclasses.field(default=None,
                                                                               compare=False)

    @property
    def num_classes(self):
        return len(self.class_names)


def distinct_colors(num_colors):
    """The Pascal VOC palette, extended to any length up to 256.

    Class i gets a colour whose R, G, B bits are the bits of i, dealt out from
    the most significant bit down, so neighbouring indices look clearly
    different. It is VOC's own palette, and a fine default for any dataset
    without conventional colours.
    """
    colors = []
    for index in range(num_colors):
        red = green = blue = 0
        bits = index
        for shift in range(7, -1, -1):
            red |= (bits & 1) << shift
            green |= ((bits >> 1) & 1) << shift
            blue |= ((bits >> 2) & 1) << shift
            bits >>= 3
        colors.append((red, green, blue))
    return tuple(colors)


def _normalised(frequencies):
    total = sum(frequencies)
    return tuple(f / total for f in frequencies)


# CamVid (SegNet layout): the 11 scored classes; 11 "Unlabelled" (void) becomes IGNORE_LABEL.
_CAMVID_CLASSES = (
    # name, display colour, % of all train pixels (void's 4.0% excluded, hence _normalised)
    ("Sky", (128, 128, 128), 16.9),
    ("Building", (128, 0, 0), 23.3),
    ("Pole", (192, 192, 128), 1.0),
    ("Road", (128, 64, 128), 31.7),
    ("Pavement", (60, 40, 222), 4.5),
    ("Tree", (128, 128, 0), 9.7),
    ("SignSymbol", (192, 128, 128), 1.2),
    ("Fence", (64, 64, 128), 1.1),
    ("Car", (64, 0, 128), 5.9),
    ("Pedestrian", (64, 64, 0), 0.6),
    ("Bicyclist", (0, 128, 192), 0.3),
)

_PASCAL_VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)


def _register(*specs):
    return MappingProxyType({spec.name: spec for spec in specs})


DATASETS = _register(
    DatasetSpec(
        name="shapes",
        class_names=shapes.CLASS_NAMES,
        colors=shapes.CLASS_COLORS,
        class_frequencies=None,  # computed at generation, stored in dataset.json
        default_pixels=shapes.IMAGE_SIZE_PX,
        converter="python -m utils.shapes",
        source=shapes.SOURCE,
        make_records=shapes.write_shapes_dataset,
    ),
    DatasetSpec(
        name="camvid",
        class_names=tuple(name for name, _, _ in _CAMVID_CLASSES),
        colors=tuple(color for _, color, _ in _CAMVID_CLASSES),
        class_frequencies=_normalised([percent for _, _, percent in _CAMVID_CLASSES]),
        default_pixels=REAL_DATASET_PIXELS,
        converter="python utils/camvid_to_records.py --src CAMVID_DIR",
    ),
    DatasetSpec(
        name="pascal_voc",
        class_names=_PASCAL_VOC_CLASSES,
        colors=distinct_colors(len(_PASCAL_VOC_CLASSES)),
        class_frequencies=None,
        default_pixels=REAL_DATASET_PIXELS,
        converter="python utils/pascal_voc_augmented_to_records.py --src VOC_AND_SBD_DIR",
    ),
    DatasetSpec(
        name="coco_stuff",
        class_names=(),  # read from the dataset's label file by the converter -> dataset.json
        colors=(),
        class_frequencies=None,
        default_pixels=REAL_DATASET_PIXELS,
        converter="python utils/coco_stuff_to_records.py --src COCO_STUFF_DIR",
    ),
)

# What a user dataset (known only through its dataset.json) was made with.
FOLDER_CONVERTER = ("python utils/folder_to_records.py --images IMAGE_DIR --labels LABEL_DIR "
                    "--name {name} --num_classes N")


def write_dataset_meta(out_dir, meta):
    """Write `meta` as <out_dir>/dataset.json, atomically."""
    meta = dict(meta)
    meta.setdefault("ignore_label", IGNORE_LABEL)
    os.makedirs(out_dir, exist_ok=True)
    write_text_atomic(os.path.join(out_dir, DATASET_META_FILE), json.dumps(meta, indent=1) + "\n")


def read_dataset_meta(dataset_dir):
    """The dict in <dataset_dir>/dataset.json, or None when there is none."""
    path = os.path.join(dataset_dir, DATASET_META_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise SegMentorError(f"cannot read {path} ({err}); rerun the dataset's converter") from err


def _dataset_dir(datapath, name):
    return os.path.join(datapath or DEFAULT_DATAPATH, name)


def _found_datasets(datapath):
    root = datapath or DEFAULT_DATAPATH
    if not os.path.isdir(root):
        return []
    return sorted(entry for entry in os.listdir(root)
                  if os.path.isfile(os.path.join(root, entry, DATASET_META_FILE)))


def _spec_from_meta(name, meta):
    """A spec for a dataset that only exists through its dataset.json."""
    class_names = tuple(meta.get("class_names") or ())
    return DatasetSpec(name=name, class_names=class_names, colors=(), class_frequencies=None,
                       default_pixels=REAL_DATASET_PIXELS,
                       converter=FOLDER_CONVERTER.format(name=name))


def _merged(spec, meta):
    """`spec` overridden by what the converter found in the data."""
    if meta.get("ignore_label", IGNORE_LABEL) != IGNORE_LABEL:
        raise SegMentorError(f"dataset.json of {spec.name} uses ignore label {meta['ignore_label']}; "
                             f"seg-mentor needs {IGNORE_LABEL}: rerun its converter")
    class_names = tuple(meta.get("class_names") or spec.class_names)
    colors = tuple(tuple(c) for c in meta.get("colors") or ())
    if len(colors) != len(class_names):
        colors = spec.colors if len(spec.colors) == len(class_names) else distinct_colors(len(class_names))
    frequencies = meta.get("class_frequencies")
    frequencies = tuple(frequencies) if frequencies and len(frequencies) == len(class_names) \
        else spec.class_frequencies
    splits = meta.get("splits") or {}
    split_files = dict(spec.split_files)
    split_files.update({split: info["file"] for split, info in splits.items() if "file" in info})
    split_counts = {split: int(info["count"]) for split, info in splits.items() if "count" in info}
    return dataclasses.replace(
        spec, class_names=class_names, colors=colors, class_frequencies=frequencies,
        default_pixels=int(meta.get("default_pixels", spec.default_pixels)),
        split_files=MappingProxyType(split_files),
        split_counts=MappingProxyType(split_counts) if split_counts else None,
        source=meta.get("source", spec.source))


def how_to_make(spec, datapath):
    """The command that writes the records of `spec` under `datapath`."""
    return f"{spec.converter} --out {_dataset_dir(datapath, spec.name)}"


def load_dataset(name, datapath=None):
    """The spec of dataset `name`, merged with <datapath>/<name>/dataset.json.

    Synthetic datasets (shapes) are generated on first use. Raises
    SegMentorError for an unknown name (listing built-in and found datasets)
    or when the records are missing (naming the converter command).
    """
    dataset_dir = _dataset_dir(datapath, name)
    spec = DATASETS.get(name)
    meta = read_dataset_meta(dataset_dir)
    if meta is None and _holds_records(dataset_dir) and (spec is None or spec.make_records is None):
        converter = spec.converter if spec else FOLDER_CONVERTER.format(name=name)
        raise SegMentorError(f"{os.path.join(dataset_dir, DATASET_META_FILE)} is missing beside "
                             f"the records in {dataset_dir}: the converter writes it with them; "
                             f"rerun: {converter} --out {dataset_dir}")
    if spec is None and meta is None:
        found = _found_datasets(datapath)
        raise SegMentorError(
            f"unknown dataset '{name}': built-in {sorted(DATASETS)}, found in "
            f"{datapath or DEFAULT_DATAPATH}: {found or 'none'}; convert your own with "
            f"{FOLDER_CONVERTER.format(name=name)}")
    if spec is None:
        spec = _spec_from_meta(name, meta)
    if spec.make_records is not None and not _is_current(spec, dataset_dir, meta):
        meta = _generate(spec, dataset_dir)
    if meta is None:
        raise SegMentorError(f"no records of dataset '{name}' in {dataset_dir}; "
                             f"make them with: {how_to_make(spec, datapath)}")
    spec = _merged(spec, meta)
    if not spec.class_names:
        raise SegMentorError(f"{os.path.join(dataset_dir, DATASET_META_FILE)} lists no class names; "
                             f"rerun: {how_to_make(spec, datapath)}")
    if not _has_records(spec, dataset_dir, meta):
        raise SegMentorError(f"no records of dataset '{name}' in {dataset_dir}; "
                             f"make them with: {how_to_make(spec, datapath)}")
    return spec


def _holds_records(dataset_dir):
    return os.path.isdir(dataset_dir) and any(name.endswith(".tfrecords")
                                              for name in os.listdir(dataset_dir))


def _is_current(spec, dataset_dir, meta):
    """True when a synthetic dataset's records exist and come from this generator version."""
    return _has_records(spec, dataset_dir, meta) and meta.get("source") == spec.source


def _generate(spec, dataset_dir):
    """Write a synthetic dataset's records and dataset.json once; return the meta.

    Two first runs on a fresh machine may both find no records: an exclusive
    lock on <dataset_dir>/.lock lets one generate while the other waits, then
    finds the records current and uses them.
    """
    try:
        os.makedirs(dataset_dir, exist_ok=True)
        lock_file = open(os.path.join(dataset_dir, LOCK_FILE), "a")
    except OSError as err:
        raise SegMentorError(f"cannot write dataset {spec.name} into {dataset_dir} "
                             f"({first_line(err)}); pass another --datapath") from err
    with lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process generating {spec.name} in {dataset_dir}",
                  file=sys.stderr)
            fcntl.flock(lock_file, fcntl.LOCK_EX)
        meta = read_dataset_meta(dataset_dir)  # the other process may have made them meanwhile
        if _is_current(spec, dataset_dir, meta):
            return meta
        try:
            with disk_full_errors(dataset_dir, f"dataset {spec.name}"):
                meta = spec.make_records(dataset_dir, spec.split_files)
                write_dataset_meta(dataset_dir, meta)
        except OSError as err:
            raise SegMentorError(f"cannot write dataset {spec.name} into {dataset_dir} "
                                 f"({first_line(err)}); pass another --datapath") from err
        return meta  # the lock goes with the file's closing


def _has_records(spec, dataset_dir, meta):
    if meta is None:
        return False
    files = [info.get("file", spec.split_files.get(split)) for split, info in meta.get("splits", {}).items()]
    return bool(files) and all(os.path.isfile(os.path.join(dataset_dir, f)) for f in files)


def record_path(spec, datapath, split):
    """Path of the records of `split` ('train', 'val' or 'test')."""
    if split not in spec.split_files:
        raise SegMentorError(f"unknown split '{split}' of dataset {spec.name}: "
                             f"choose from {sorted(spec.split_files)}")
    return os.path.join(_dataset_dir(datapath, spec.name), spec.split_files[split])


def num_records(spec, datapath, split):
    """Number of examples in `split`, counted in the file (headers only, no decode) and
    checked against dataset.json: a file cut at a record boundary reads as a normal end
    of file, so only the count gives it away."""
    path = record_path(spec, datapath, split)
    if not os.path.isfile(path):
        raise SegMentorError(f"records file {path} not found; make it with: {how_to_make(spec, datapath)}")
    counted = count_records(path, how_to_make(spec, datapath))
    expected = (spec.split_counts or {}).get(split)
    if expected is not None and counted != expected:
        raise SegMentorError(f"{path} holds {counted} records but {DATASET_META_FILE} says "
                             f"{expected}: the file is incomplete or from another conversion; "
                             f"rebuild it with: {how_to_make(spec, datapath)}")
    return counted
