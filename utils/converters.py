"""Shared plumbing of the dataset converters (utils/*_to_records.py).

A converter only knows its source layout: it lists the image/label pairs of
each split and says which source label values are which class. The rest is
done here, the same way for every dataset:

    splits = {'train': pairs_from_folders(img_dir, ann_dir), 'val': [...]}
    summary = write_dataset(splits, out_dir, name='camvid', class_names=...,
                            label_map=LabelMap.identity(11, {11: IGNORE_LABEL}), source=src)
    print_summary(summary)

- Every pair is checked: the image decodes completely (a truncated file fails
  here, not in the middle of training), the label is one channel of the same
  size, and every label value is a class or the ignore label after remapping.
  A bad pair raises BadPairError naming the file, or is skipped with a warning
  under --skip_bad.
- Images keep their PNG/JPEG bytes; labels are stored as single-channel PNG,
  re-encoded only when remapped or not already an 8-bit grey PNG.
- The records of all splits are staged first. Only when every split is
  written is the old dataset.json removed, the new split files moved in and
  the new dataset.json written last. A conversion that fails or is stopped
  while converting leaves the old dataset as it was; one killed during the
  final moves leaves no dataset.json, so the dataset reads as missing (rerun
  the converter), never as a mix of old and new splits.
- The pixel frequency of each class over the train split goes into dataset.json.
"""
import argparse
import collections
import concurrent.futures
import dataclasses
import io
import os
import shutil
import sys
import tempfile
import time
from typing import Callable, Optional

import numpy as np
from PIL import Image
from tqdm import tqdm

from utils.cli import CheckedArgumentParser
from utils.datasets import (DEFAULT_DATAPATH, DATASET_META_FILE, SPLIT_FILES, distinct_colors,
                            write_dataset_meta)
from utils.labels import IGNORE_LABEL, NUM_LABEL_VALUES
from utils.errors import SegMentorError, first_line
from utils.files import IMAGE_EXTENSIONS, IMAGE_READ_ERRORS, disk_full_errors, is_disk_full
from utils.tf_records import RecordWriter, encode_label_png

# Lossless only: JPEG artefacts would invent class indices along every edge.
LABEL_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff")

# PIL format -> record format, for images whose bytes go into the record as they are.
# MPO is what PIL calls the JPEGs some cameras write (a JPEG with extra frames after it).
KEPT_IMAGE_FORMATS = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg"}
# Colour modes TF's decoder turns into the RGB the feeder expects; anything else
# (CMYK JPEG, 16-bit grey, ...) is re-encoded as an RGB PNG.
KEPT_IMAGE_MODES = {"png": ("RGB", "RGBA", "L", "P"), "jpeg": ("RGB", "L")}
# Single-channel label modes: 8-bit grey, palette (the index is the class, as in
# Pascal VOC), 16/32-bit integer grey, and 1-bit.
LABEL_MODES = ("L", "P", "I", "I;16", "I;16B", "I;16L", "1")

# Threads: PIL decodes and zlib compresses with the GIL released, so pairs are
# prepared in parallel while the main thread writes records in order.
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)
PAIRS_IN_FLIGHT_PER_WORKER = 4  # bounds the memory held by prepared pairs

SKIP_HINT = "fix or remove the file, or rerun with --skip_bad to leave the pair out"


class BadPairError(SegMentorError):
    """One image/label pair cannot be converted; --skip_bad turns it into a warning."""

    def __init__(self, problem):
        super().__init__(f"{problem}; {SKIP_HINT}")
        self.problem = problem


# ----------------------------------------------------------------------------- pairs


def read_label_image(path):
    """A label map from an image file -> (int array [h, w], reusable PNG bytes or None).

    The bytes are returned only for an 8-bit grey PNG, which can go into the
    record as it is when no value needs remapping.
    """
    data = _read_bytes(path, "label")
    try:
        with Image.open(io.BytesIO(data)) as label:
            label.load()
            mode, file_format = label.mode, label.format
            if mode not in LABEL_MODES:
                raise BadPairError(f"label {path} has colour mode {mode}; labels must be single-channel "
                                   "maps of class indices (convert colour-coded masks to indices first)")
            values = np.asarray(label)
    except IMAGE_READ_ERRORS as err:
        raise BadPairError(f"cannot read label {path} ({first_line(err)})") from err
    reusable = data if file_format == "PNG" and mode == "L" else None
    return values, reusable


@dataclasses.dataclass(frozen=True)
class Pair:
    """One image and its label. `problem` is set when pairing already failed
    (e.g. an image without a label): converting the pair raises it."""
    name: str                     # base name stored in the record (image/filename)
    image_path: Optional[str]
    label_path: Optional[str]
    read_label: Callable = read_label_image  # path -> (int array [h, w], reusable PNG bytes | None)
    problem: Optional[str] = None


def pairs_from_folders(image_dir, label_dir):
    """Pairs of same-named files (base name without extension) in two folders, sorted by name.

    An image without a label, a label without an image, or two files of the
    same base name in one folder become pairs with a `problem`.
    """
    images = _files_by_stem(require_dir(image_dir, "image folder"), IMAGE_EXTENSIONS)
    labels = _files_by_stem(require_dir(label_dir, "label folder"), LABEL_EXTENSIONS)
    pairs = []
    for stem in sorted(set(images) | set(labels)):
        image_paths, label_paths = images.get(stem, []), labels.get(stem, [])
        problem = None
        if not label_paths:
            problem = (f"image {image_paths[0]} has no label {stem}.* in {label_dir} "
                       f"(label types: {', '.join(LABEL_EXTENSIONS)})")
        elif not image_paths:
            problem = f"label {label_paths[0]} has no image {stem}.* in {image_dir}"
        elif len(image_paths) > 1 or len(label_paths) > 1:
            twins = image_paths if len(image_paths) > 1 else label_paths
            problem = f"{len(twins)} files named {stem}: {', '.join(twins)}; keep one"
        image_path = image_paths[0] if image_paths else None
        name = os.path.basename(image_path) if image_path else stem
        pairs.append(Pair(name, image_path, label_paths[0] if label_paths else None, problem=problem))
    return pairs


def _files_by_stem(folder, extensions):
    files = collections.defaultdict(list)
    for entry in sorted(os.listdir(folder)):
        stem, extension = os.path.splitext(entry)
        if extension.lower() in extensions and not entry.startswith("."):
            files[stem].append(os.path.join(folder, entry))
    return files


def require_dir(path, what, fix=None):
    """Raise SegMentorError unless `path` is a folder."""
    if not os.path.isdir(path):
        raise SegMentorError(f"{what} {path} not found; {fix or 'check the path'}")
    return path


def require_file(path, what, fix=None):
    """Raise SegMentorError unless `path` is a file."""
    if not os.path.isfile(path):
        raise SegMentorError(f"{what} {path} not found; {fix or 'check the path'}")
    return path


# ----------------------------------------------------------------------- label values


class LabelMap:
    """Source label value -> stored value (a class index 0..C-1 or IGNORE_LABEL).

    A source value the map does not list is an error: it is either a broken
    label or a class the converter does not know.
    """
    _INVALID = -1

    def __init__(self, num_classes, source_to_stored):
        self.num_classes = num_classes
        self.table = np.full(NUM_LABEL_VALUES, self._INVALID, np.int16)
        for source, stored in source_to_stored.items():
            if not (0 <= stored < num_classes or stored == IGNORE_LABEL):
                raise ValueError(f"value {source} maps to {stored}, not a class of {num_classes} "
                                 f"nor {IGNORE_LABEL}")
            self.table[source] = stored

    @classmethod
    def identity(cls, num_classes, extra=None):
        """Values 0..C-1 are the classes and IGNORE_LABEL is ignored; `extra` adds remappings."""
        mapping = {value: value for value in range(num_classes)}
        mapping[IGNORE_LABEL] = IGNORE_LABEL
        mapping.update(extra or {})
        return cls(num_classes, mapping)

    def describe(self):
        """The accepted source values as ranges, e.g. '0-11, 255'."""
        ranges, valid = [], np.flatnonzero(self.table != self._INVALID)
        for value in valid:
            if ranges and value == ranges[-1][1] + 1:
                ranges[-1][1] = value
            else:
                ranges.append([value, value])
        return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)

    def apply(self, values, path):
        """Map a source label [h, w] -> (uint8 label, pixels per class int64 [C], changed).

        Raises BadPairError naming `path` and the first value that is no class.
        """
        if values.dtype == np.bool_:
            values = values.astype(np.uint8)
        if values.size and values.min() < 0:
            raise BadPairError(f"label {path} has negative value {values.min()}")
        counts = np.bincount(values.ravel())
        present = np.flatnonzero(counts)
        stored = np.full(present.shape, self._INVALID, np.int16)
        in_table = present < NUM_LABEL_VALUES
        stored[in_table] = self.table[present[in_table]]
        unknown = present[stored == self._INVALID]
        if unknown.size:
            raise BadPairError(f"label {path} has value {unknown[0]} at {counts[unknown[0]]} pixels, "
                               f"which is not a class; valid values: {self.describe()} "
                               f"({self.num_classes} classes, {IGNORE_LABEL} = ignore)")
        class_counts = np.bincount(stored, weights=counts[present], minlength=IGNORE_LABEL + 1)
        changed = bool((stored != present).any())
        label = self.table[values].astype(np.uint8) if changed else values.astype(np.uint8)
        return label, class_counts[:self.num_classes].astype(np.int64), changed


# ------------------------------------------------------------------- encoding a pair


@dataclasses.dataclass(frozen=True)
class EncodedPair:
    """What goes into one record, plus the class pixel counts for the frequencies."""
    name: str
    image_bytes: bytes
    image_format: str
    label_png: bytes
    height: int
    width: int
    class_counts: np.ndarray  # int64 [C]


def read_image(path):
    """-> (encoded bytes, 'png' | 'jpeg', (width, height)), decoding the whole file.

    PNG and JPEG bytes are kept as they are; other formats and colour modes TF
    cannot decode to RGB are re-encoded as an RGB PNG.
    """
    data = _read_bytes(path, "image")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # a truncated file only fails when fully decoded
            stored_format = KEPT_IMAGE_FORMATS.get(image.format)
            if stored_format and image.mode in KEPT_IMAGE_MODES[stored_format]:
                return data, stored_format, image.size
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="PNG")
            return buffer.getvalue(), "png", image.size
    except IMAGE_READ_ERRORS as err:
        raise BadPairError(f"cannot read image {path} ({first_line(err)})") from err


def encode_pair(pair, label_map):
    """Check one pair and encode it -> EncodedPair; raises BadPairError."""
    if pair.problem:
        raise BadPairError(pair.problem)
    image_bytes, image_format, (width, height) = read_image(pair.image_path)
    values, reusable_png = pair.read_label(pair.label_path)
    if values.ndim != 2:
        raise BadPairError(f"label {pair.label_path} has shape {values.shape}; "
                           "labels must be single-channel maps of class indices")
    label_height, label_width = values.shape
    if (label_height, label_width) != (height, width):
        raise BadPairError(f"image {pair.image_path} is {width}x{height} px but its label "
                           f"{pair.label_path} is {label_width}x{label_height} px")
    label, class_counts, changed = label_map.apply(values, pair.label_path)
    label_png = reusable_png if reusable_png is not None and not changed else encode_label_png(label)
    return EncodedPair(pair.name, image_bytes, image_format, label_png, height, width, class_counts)


def _read_bytes(path, what):
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError as err:
        raise BadPairError(f"{what} {path} not found") from err
    except OSError as err:
        raise BadPairError(f"cannot read {what} {path} ({first_line(err)})") from err


# ------------------------------------------------------------------ writing splits


@dataclasses.dataclass(frozen=True)
class ConversionSummary:
    """What a conversion wrote; `convert()` of every converter returns one."""
    name: str
    out_dir: str
    files: dict                # split -> path of its records
    counts: dict               # split -> records written
    skipped: dict              # split -> bad pairs left out (--skip_bad)
    meta_path: str
    num_classes: int
    seconds: float

    @property
    def num_records(self):
        return sum(self.counts.values())

    @property
    def images_per_sec(self):
        return self.num_records / self.seconds if self.seconds > 0 else float("inf")


def write_dataset(splits, out_dir, *, name, class_names, label_map, source, colors=None,
                  skip_bad=False, workers=DEFAULT_WORKERS):
    """Convert `splits` ({'train'|'val'|'test': [Pair]}) into <out_dir> records + dataset.json.

    Stops at the first bad pair with BadPairError, leaving `out_dir` as it was,
    unless `skip_bad` (then it warns on stderr and counts the pair as skipped).
    Returns a ConversionSummary.
    """
    if label_map.num_classes != len(class_names):
        raise ValueError(f"label map has {label_map.num_classes} classes, class_names {len(class_names)}")
    unknown = set(splits) - set(SPLIT_FILES)
    if unknown:
        raise ValueError(f"unknown splits {sorted(unknown)}; use {sorted(SPLIT_FILES)}")
    for split, pairs in splits.items():
        if not pairs:
            raise SegMentorError(f"no image/label pairs for the {split} split of {name}; "
                                 f"check the source folder {source}")
    # A full disk anywhere below (records, staging, dataset.json) is one line naming out_dir.
    with disk_full_errors(out_dir, f"the records of {name}"):
        try:
            os.makedirs(out_dir, exist_ok=True)
            staging_dir = tempfile.mkdtemp(prefix=".converting-", dir=out_dir)
        except OSError as err:
            if is_disk_full(err):
                raise
            raise SegMentorError(f"cannot write into {out_dir} ({first_line(err)}); pick another --out") from err
        started = time.perf_counter()
        try:
            counts, skipped, train_pixels = {}, {}, np.zeros(len(class_names), np.int64)
            for split, pairs in splits.items():
                path = os.path.join(staging_dir, SPLIT_FILES[split])
                counts[split], skipped[split], pixels = _write_split(
                    pairs, path, label_map, f"{name} {split}", skip_bad, workers)
                if counts[split] == 0:
                    raise SegMentorError(f"all {len(pairs)} pairs of the {split} split of {name} are bad; "
                                         "see the warnings above")
                if split == "train":
                    train_pixels = pixels
            seconds = time.perf_counter() - started
            files = {}
            # Without dataset.json the folder is no dataset: a kill between the moves below
            # cannot leave new and old splits that pass for one conversion.
            meta_path = os.path.join(out_dir, DATASET_META_FILE)
            if os.path.exists(meta_path):
                os.remove(meta_path)
            for split, file_name in SPLIT_FILES.items():
                final_path = os.path.join(out_dir, file_name)
                if split in splits:
                    files[split] = final_path
                    os.replace(os.path.join(staging_dir, file_name), final_path)
                elif os.path.exists(final_path):
                    os.remove(final_path)  # an older conversion's split must not pass for this one's
        finally:
            shutil.rmtree(staging_dir, ignore_errors=True)
        total_train_pixels = train_pixels.sum()
        write_dataset_meta(out_dir, {
            "name": name,
            "class_names": list(class_names),
            "colors": [list(c) for c in (colors or distinct_colors(len(class_names)))],
            "ignore_label": IGNORE_LABEL,
            "class_frequencies": (train_pixels / total_train_pixels).tolist() if total_train_pixels else None,
            "splits": {split: {"file": SPLIT_FILES[split], "count": counts[split]} for split in splits},
            "source": source,
        })
    return ConversionSummary(name=name, out_dir=out_dir, files=files, counts=counts, skipped=skipped,
                             meta_path=os.path.join(out_dir, DATASET_META_FILE),
                             num_classes=len(class_names), seconds=seconds)


def _write_split(pairs, path, label_map, description, skip_bad, workers):
    """-> (records written, pairs skipped, pixels per class int64 [C])."""
    pixels = np.zeros(label_map.num_classes, np.int64)
    skipped = 0
    with RecordWriter(path) as writer, tqdm(total=len(pairs), desc=description, unit="img") as progress:
        for pair, result in _ordered_map(lambda p: _encode_or_error(p, label_map), pairs, workers):
            progress.update()
            if isinstance(result, BadPairError):
                if not skip_bad:
                    raise result
                skipped += 1
                tqdm.write(f"warning: skipped {pair.name}: {result.problem}", file=sys.stderr)
                continue
            writer.write(result.image_bytes, result.image_format, result.label_png,
                         result.height, result.width, result.name)
            pixels += result.class_counts
    return writer.count, skipped, pixels


def _encode_or_error(pair, label_map):
    try:
        return encode_pair(pair, label_map)
    except BadPairError as err:
        return err  # decided by the writing thread, so skipping stays in input order


def _ordered_map(fn, items, workers):
    """Yield (item, fn(item)) in input order, computed on `workers` threads with a bounded backlog."""
    if workers <= 1:
        for item in items:
            yield item, fn(item)
        return
    pool = concurrent.futures.ThreadPoolExecutor(workers)
    try:
        pending = collections.deque()
        for item in items:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) >= workers * PAIRS_IN_FLIGHT_PER_WORKER:
                item_done, future = pending.popleft()
                yield item_done, future.result()
        while pending:
            item_done, future = pending.popleft()
            yield item_done, future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def print_summary(summary):
    """Tell the user what was written, one line per file."""
    print(f"{summary.name}: {summary.num_records} records in {summary.seconds:.1f} s "
          f"({summary.images_per_sec:.0f} images/s) -> {summary.out_dir}")
    for split, path in summary.files.items():
        skipped = f" ({summary.skipped[split]} bad pairs skipped)" if summary.skipped[split] else ""
        print(f"  {split:<5} {path}: {summary.counts[split]} records{skipped}")
    print(f"  meta  {summary.meta_path}: {summary.num_classes} classes")


# ----------------------------------------------------------------------- arguments


def build_converter_parser(dataset, description, layout, src_help=None, src_required=True):
    """The arguments every converter shares; each converter adds its own.

    `layout` (the expected source folder tree) is shown verbatim by --help.
    Pass src_help=None for a converter without --src.
    """
    parser = CheckedArgumentParser(description=description, epilog=layout,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    if src_help:
        parser.add_argument("--src", type=str, required=src_required, help=src_help)
    parser.add_argument("--out", type=str, default=None,
                        help=f"output folder for the records and dataset.json "
                             f"(default: <datapath>/{dataset})")
    parser.add_argument("--datapath", type=str, default=DEFAULT_DATAPATH,
                        help="root of all converted datasets, as given to fcn_train.py/fcn_test.py "
                             "(default: %(default)s)")
    parser.add_argument("--skip_bad", action="store_true",
                        help="leave out bad image/label pairs with a warning instead of stopping")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                        help="threads decoding and checking pairs (default: %(default)s)")
    return parser


def output_dir(args, dataset):
    """--out, else <datapath>/<dataset>."""
    return args.out or os.path.join(args.datapath, dataset)
