"""Check a converted dataset before training on it.

    python -m utils.check_dataset --dataset camvid --datapath data [--split val]

Reads every record of each split (or of --split) and reports: record counts
against dataset.json; the label values found per split (anything that is neither a class
0..C-1 nor the ignore label is an error naming the values and the first records
holding them: the usual cause of an mIoU near 0 or all-background predictions);
image/label size agreement; the share of ignored pixels; class pixel
frequencies against dataset.json. It draws check_<name>.png (--outdir): 16
random pairs, each label over its image in the dataset's colours, with a
legend. Each problem is one line starting 'error:' (on stderr), and the exit
status is 1 when there is any; 'warning:' lines (odd, not wrong) do not change it.
"""
if __package__ in (None, ""):  # run as `python utils/...`: find `utils` at the repo root,
    # as `python -m` does, not in this file's folder (sys.path[0]), whose modules shadow others
    import pathlib, sys; sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])

import dataclasses  # noqa: E402
import io  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

from utils.datasets import DEFAULT_DATAPATH, how_to_make, load_dataset, record_path  # noqa: E402
from utils.labels import IGNORE_LABEL, NUM_LABEL_VALUES  # noqa: E402
from utils.cli import CheckedArgumentParser  # noqa: E402
from utils.errors import first_line, run_main  # noqa: E402
from utils.files import IMAGE_READ_ERRORS  # noqa: E402
from utils.tf_records import FILENAME_KEY, HEIGHT_KEY, IMAGE_KEY, LABEL_KEY, WIDTH_KEY  # noqa: E402
from utils.tfcompat import tf  # noqa: E402
from utils.visualization import (colorize, legend_handles, overlay,  # noqa: E402
                                 save_figure)

EXIT_PROBLEMS = 1
NUM_SHOWN = 16          # pairs drawn into check_<name>.png (a 4 x 4 grid)
SAMPLE_SEED = 0         # the same pairs each time, so two checks can be compared by eye
MAX_LISTED = 5          # records named in one error line
# A class frequency further than this from dataset.json's (percentage points of
# the train split's counted pixels) means dataset.json describes other records.
FREQUENCY_TOLERANCE_POINTS = 1.0
# Above this share of ignored pixels, labels may be 0/255 masks or mis-encoded.
LARGE_IGNORED_SHARE = 0.5


@dataclasses.dataclass
class SplitCheck:
    """What one split's records hold."""
    split: str
    path: str
    num_records: int = 0
    value_counts: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros(NUM_LABEL_VALUES, np.int64))  # pixels per label value
    first_holders: dict = dataclasses.field(default_factory=dict)  # bad value -> [record names]
    size_mismatches: list = dataclasses.field(default_factory=list)      # record descriptions
    stored_size_mismatches: list = dataclasses.field(default_factory=list)
    undecodable: list = dataclasses.field(default_factory=list)
    sizes: dict = dataclasses.field(default_factory=dict)               # (h, w) -> records
    read_error: str | None = None  # the file ends early or is corrupt

    def counted_pixels(self, num_classes):
        return int(self.value_counts[:num_classes].sum())


def _feature(example, key):
    values = example.features.feature[key]
    return values.bytes_list.value[0] if values.bytes_list.value else values.int64_list.value[0]


def _decode(data):
    with Image.open(io.BytesIO(data)) as picture:
        picture.load()
        return picture.copy()


def check_split(spec, datapath, split, on_pair=None):
    """SplitCheck of every record in `split`; on_pair(split, index, name, image, label) sees
    each decodable pair of matching size (for the picture)."""
    check = SplitCheck(split, record_path(spec, datapath, split))
    num_classes = spec.num_classes
    records = tf.io.tf_record_iterator(check.path)
    with tqdm(desc=f"checking {split}", unit="rec") as progress:
        while True:
            try:
                serialized = next(records)
            except StopIteration:
                break
            except tf.errors.OpError as err:  # DataLossError: truncated or checksum-failing
                check.read_error = first_line(err)
                break
            _check_record(check, check.num_records, serialized, num_classes, on_pair)
            check.num_records += 1
            progress.update()
    return check


def _check_record(check, index, serialized, num_classes, on_pair):
    try:
        example = tf.train.Example.FromString(serialized)
        name = _feature(example, FILENAME_KEY).decode(errors="replace")
        stored_size = (_feature(example, HEIGHT_KEY), _feature(example, WIDTH_KEY))
        image = _decode(_feature(example, IMAGE_KEY))
        label = np.asarray(_decode(_feature(example, LABEL_KEY)))
    except (*IMAGE_READ_ERRORS, IndexError, UnicodeError) as err:
        check.undecodable.append(f"#{index} ({first_line(err)})")
        return
    record = f"#{index} {name}"
    image_size = (image.height, image.width)
    check.sizes[image_size] = check.sizes.get(image_size, 0) + 1
    if label.ndim != 2:
        check.undecodable.append(f"{record} (label has {label.shape[-1]} channels, not 1)")
        return
    if label.shape != image_size:
        check.size_mismatches.append(f"{record} (label {label.shape[0]}x{label.shape[1]}, "
                                     f"image {image_size[0]}x{image_size[1]})")
    if stored_size != image_size:
        check.stored_size_mismatches.append(
            f"{record} (stored {stored_size[0]}x{stored_size[1]}, "
            f"image {image_size[0]}x{image_size[1]})")
    counts = np.bincount(label.ravel(), minlength=NUM_LABEL_VALUES)
    check.value_counts += counts
    for value in np.flatnonzero(counts[num_classes:]) + num_classes:
        if value != IGNORE_LABEL:
            holders = check.first_holders.setdefault(int(value), [])
            if len(holders) < MAX_LISTED:
                holders.append(record)
    if on_pair and label.shape == image_size:
        on_pair(check.split, index, name, image, label)


def _listed(items):
    more = f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return ", ".join(items[:MAX_LISTED]) + more


def split_problems(spec, datapath, check):
    """One line per problem of a split (empty: all well)."""
    fix = f"rerun the converter: {how_to_make(spec, datapath)}"
    split = check.split
    problems = []
    if check.read_error:
        problems.append(f"{split}: {check.path} is cut short or corrupt after record "
                        f"{check.num_records} ({check.read_error}); {fix}")
    expected = (spec.split_counts or {}).get(split)
    if expected is not None and check.num_records != expected and not check.read_error:
        problems.append(f"{split}: {check.num_records} records in {check.path}, dataset.json "
                        f"says {expected}; {fix}")
    if check.first_holders:
        values = sorted(check.first_holders)
        holders = []
        for value in values:
            holders += [record for record in check.first_holders[value] if record not in holders]
        problems.append(
            f"{split}: label values {', '.join(map(str, values))} are outside "
            f"0..{spec.num_classes - 1} "
            f"and not the ignore label {IGNORE_LABEL}, first in records {_listed(holders)}; "
            f"labels must hold class indices: {fix}")
    if check.size_mismatches:
        problems.append(f"{split}: {len(check.size_mismatches)} record(s) whose label size "
                        f"differs from the image's: {_listed(check.size_mismatches)}; {fix}")
    if check.stored_size_mismatches:
        problems.append(f"{split}: {len(check.stored_size_mismatches)} record(s) whose stored "
                        f"height/width differ from the image: "
                        f"{_listed(check.stored_size_mismatches)}; {fix}")
    if check.undecodable:
        problems.append(f"{split}: {len(check.undecodable)} record(s) that do not decode: "
                        f"{_listed(check.undecodable)}; {fix}")
    return problems


def split_warnings(spec, check):
    """Lines for what is odd but not wrong: many ignored pixels, classes never seen."""
    warnings = []
    labelled = check.counted_pixels(spec.num_classes) + int(check.value_counts[IGNORE_LABEL])
    ignored_share = check.value_counts[IGNORE_LABEL] / labelled if labelled else 0.0
    if ignored_share > LARGE_IGNORED_SHARE:
        warnings.append(f"{check.split}: {ignored_share:.0%} of the pixels carry the ignore label "
                        f"{IGNORE_LABEL}: are labels stored as 0/255 masks?")
    absent = [name for name, count in zip(spec.class_names, check.value_counts) if count == 0]
    if absent and check.num_records:
        warnings.append(f"{check.split}: no pixel of class {', '.join(absent)}")
    return warnings


def frequencies(spec, check):
    """Fraction of the split's counted pixels per class (NaN without any)."""
    counts = check.value_counts[:spec.num_classes].astype(np.float64)
    total = counts.sum()
    return counts / total if total else np.full(spec.num_classes, np.nan)


def frequency_warning(spec, train_check):
    """A line when the train split's class frequencies are not dataset.json's."""
    if spec.class_frequencies is None or not train_check.counted_pixels(spec.num_classes):
        return None
    stored = np.asarray(spec.class_frequencies, np.float64)
    measured = frequencies(spec, train_check)
    gaps = np.abs(measured - stored) * 100
    worst = int(np.argmax(gaps))
    if gaps[worst] <= FREQUENCY_TOLERANCE_POINTS:
        return None
    return (f"train: class pixel frequencies differ from dataset.json by up to "
            f"{gaps[worst]:.1f} points ({spec.class_names[worst]}: {100 * stored[worst]:.1f}% "
            f"listed, {100 * measured[worst]:.1f}% found); class weighting uses the listed ones")


class PairSample:
    """A seeded reservoir of `size` (split, index, name, image, label) pairs."""

    def __init__(self, size, seed=SAMPLE_SEED):
        self._size, self._rng, self._seen, self.pairs = size, np.random.default_rng(seed), 0, []

    def offer(self, *pair):
        self._seen += 1
        if len(self.pairs) < self._size:
            self.pairs.append(pair)
        else:
            slot = self._rng.integers(0, self._seen)
            if slot < self._size:
                self.pairs[slot] = pair


def pairs_figure(pairs, spec, columns=4):
    """Grid of labels drawn over their images, with one legend of the classes shown."""
    rows = -(-len(pairs) // columns)
    first_label = pairs[0][4]
    panel_height_in = 4 * first_label.shape[0] / first_label.shape[1] + 0.3  # + the title
    fig = Figure(figsize=(4 * columns, panel_height_in * rows + 0.8), dpi=100,
                 layout="constrained")
    for position, (split, index, name, image, label) in enumerate(pairs):
        ax = fig.add_subplot(rows, columns, position + 1)
        ax.imshow(overlay(np.asarray(image.convert("RGB")),
                          colorize(label, spec.colors, IGNORE_LABEL)))
        ax.set_title(f"{split} #{index} {name}", fontsize="small")
        ax.set_axis_off()
    handles = legend_handles([pair[4] for pair in pairs], spec.colors, spec.class_names,
                             IGNORE_LABEL)
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)),
                   frameon=False, fontsize="small")
    fig.suptitle(f"{spec.name}: labels over images")
    return fig


def value_ranges(value_counts):
    """'0..10, 255' for the label values that occur (runs of consecutive values joined)."""
    values = np.flatnonzero(value_counts).tolist()
    runs = []
    for value in values:
        if runs and value == runs[-1][1] + 1:
            runs[-1][1] = value
        else:
            runs.append([value, value])
    return ", ".join(f"{low}..{high}" if high > low else str(low) for low, high in runs) or "none"


def print_summary(spec, checks):
    for check in checks:
        sizes = ", ".join(f"{h}x{w} ({n})" for (h, w), n in
                          sorted(check.sizes.items(), key=lambda item: -item[1])[:3])
        more = f" and {len(check.sizes) - 3} more sizes" if len(check.sizes) > 3 else ""
        labelled = check.counted_pixels(spec.num_classes) + int(check.value_counts[IGNORE_LABEL])
        ignored = check.value_counts[IGNORE_LABEL] / labelled if labelled else 0.0
        expected = (spec.split_counts or {}).get(check.split, "?")
        print(f"{check.split}: {check.num_records} records (dataset.json: {expected}), "
              f"image sizes {sizes or 'none'}{more}, label values "
              f"{value_ranges(check.value_counts)}, ignored pixels {100 * ignored:.1f}%")
    width = max(len("class"), *map(len, spec.class_names))
    header = f"{'class':<{width}}  {'listed':>7}" + "".join(f"  {c.split:>7}" for c in checks)
    print(f"class pixel frequencies, % of counted pixels (listed: dataset.json)\n{header}")
    shares = [frequencies(spec, check) for check in checks]
    for class_id, name in enumerate(spec.class_names):
        listed = (f"{100 * spec.class_frequencies[class_id]:7.1f}" if spec.class_frequencies
                  else f"{'-':>7}")
        print(f"{name:<{width}}  {listed}" + "".join(
            f"  {100 * share[class_id]:7.1f}" for share in shares))


def build_parser():
    parser = CheckedArgumentParser(
        prog="python -m utils.check_dataset",
        description="Check a converted dataset: record counts, label values, image/label "
                    "sizes, ignored pixels, class frequencies, and a picture of 16 pairs. "
                    "Exit status 1 when there is a problem.")
    parser.add_argument("--dataset", required=True,
                        help="dataset name (built-in, or any folder with a dataset.json)")
    parser.add_argument("--datapath", default=None,
                        help=f"root of the converted datasets (default: {DEFAULT_DATAPATH})")
    parser.add_argument("--split", choices=["train", "val", "test"], default=None,
                        help="check only this split (default: every split the dataset has)")
    parser.add_argument("--outdir", default=".",
                        help="folder for check_<name>.png (default: the current folder)")
    return parser


def main(args):
    spec = load_dataset(args.dataset, args.datapath)
    splits = [args.split] if args.split else [
        split for split in spec.split_files
        if os.path.isfile(record_path(spec, args.datapath, split))]
    sample = PairSample(NUM_SHOWN)
    checks = []
    for split in splits:
        if not os.path.isfile(record_path(spec, args.datapath, split)):
            print(f"error: {split}: no records file {record_path(spec, args.datapath, split)}",
                  file=sys.stderr)
            return EXIT_PROBLEMS
        checks.append(check_split(spec, args.datapath, split, sample.offer))
    print(f"dataset {spec.name}: {spec.num_classes} classes, ignore label {IGNORE_LABEL}")
    print_summary(spec, checks)
    warnings = [line for check in checks for line in split_warnings(spec, check)]
    train = next((check for check in checks if check.split == "train"), None)
    if train and (line := frequency_warning(spec, train)):
        warnings.append(line)
    problems = [line for check in checks for line in split_problems(spec, args.datapath, check)]
    if sample.pairs:
        path = os.path.join(args.outdir, f"check_{spec.name}.png")
        os.makedirs(args.outdir, exist_ok=True)
        save_figure(pairs_figure(sample.pairs, spec), path)
        print(f"{len(sample.pairs)} pairs drawn into {path}")
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    print(f"{len(problems)} problem(s)" if problems else "no problems found")
    return EXIT_PROBLEMS if problems else 0


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser()))
