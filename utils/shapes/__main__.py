"""Generate the synthetic `shapes` dataset from the command line.

    python -m utils.shapes [--out DIR]       # default: <repo>/data/shapes
    python utils/shapes [--out DIR]          # the same

Training does this by itself on first use (`utils.datasets.load_dataset`). This file
is apart from the generator (`utils/shapes/__init__.py`) because it uses the dataset
registry, which imports the generator: one module holding both would be an import cycle.
"""
if __package__ in (None, ""):  # run as `python utils/...`: find `utils` at the repo root,
    # as `python -m` does, not in this file's folder (sys.path[0]), whose modules shadow others
    import pathlib, sys; sys.path[0] = str(pathlib.Path(__file__).resolve().parents[2])

import os
import sys

from utils.cli import CheckedArgumentParser
from utils.datasets import DEFAULT_DATAPATH, SPLIT_FILES, write_dataset_meta
from utils.errors import SegMentorError, first_line, run_main
from utils.shapes import write_shapes_dataset


def build_parser():
    parser = CheckedArgumentParser(
        prog="python -m utils.shapes",
        description="Generate the synthetic `shapes` dataset (train and val tfrecords plus "
                    "dataset.json). Training scripts do this by themselves on first use.")
    parser.add_argument("--out", type=str, default=None,
                        help="output folder (default: <repo>/data/shapes)")
    return parser


def main(args):
    out = args.out or os.path.join(DEFAULT_DATAPATH, "shapes")
    try:
        meta = write_shapes_dataset(out, SPLIT_FILES)
        write_dataset_meta(out, meta)
    except OSError as err:
        raise SegMentorError(f"cannot write shapes records to {out} ({first_line(err)}); "
                             f"pick another --out") from err
    print(f"wrote {out}: " + ", ".join(f"{s} {i['count']} images ({i['file']})"
                                        for s, i in meta["splits"].items()))


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser()))
