"""Data throughput benchmark: the feeder's training images/s, and the converter's.

    python -m utils.data_bench --datapath data --dataset camvid --pixels 512 --batch_size 16
    python -m utils.data_bench --camvid_src ../shared/datasets/camvid   # converter + feeder

With --camvid_src, CamVid is converted into a temporary folder (timing the
converter) and the feeder reads it from there; the folder is deleted after.

The feeder must outpace training by a wide margin (issue 3: >= 5x what
MobileNetV1-FCN16 consumes at batch 16, 512 px; utils/train_bench.py measures
that side). Batches are pulled with nothing else in the graph, so the figure
is the input pipeline's ceiling on this machine.
"""
if __package__ in (None, ""):  # run as `python utils/...`: find `utils` at the repo root,
    # as `python -m` does, not in this file's folder (sys.path[0]), whose modules shadow others
    import pathlib, sys; sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])

import sys
import tempfile
import time

import fcn_arch
from utils import camvid_to_records
from utils.augmentation import AugmentParams
from utils.cli import CheckedArgumentParser
from utils.datasets import DEFAULT_DATAPATH, load_dataset
from utils.errors import run_main
from utils.feeder import Feeder
from utils.tfcompat import tf

WARMUP_BATCHES = 3  # fill the prefetch buffer and the parallel map before timing
# The network whose padding the batches get: the one the issue-3 target is about.
BENCH_NET = "mobilenet_v1"


def feeder_images_per_sec(spec, datapath, pixels, batch_size, num_batches):
    """Training batches (augmented) per second times batch size."""
    with tf.Graph().as_default():
        feeder = Feeder(spec, datapath, batch_size, pixels, augment=AugmentParams(),
                        pad_rgb=fcn_arch.pad_rgb(BENCH_NET))
        with tf.Session() as sess, feeder.records_errors("train"):
            train = {feeder.handle: feeder.train_handle(sess)}
            for _ in range(WARMUP_BATCHES):
                sess.run(feeder.images.op, train)
            start = time.perf_counter()
            for _ in range(num_batches):
                sess.run(feeder.images.op, train)
            return num_batches * batch_size / (time.perf_counter() - start)


def build_parser():
    parser = CheckedArgumentParser(description="Measure the data pipeline's images/s.")
    parser.add_argument("--datapath", type=str, default=DEFAULT_DATAPATH,
                        help="folder holding <dataset>/*.tfrecords (default: %(default)s)")
    parser.add_argument("--dataset", type=str, default="camvid", help="dataset name (default: %(default)s)")
    parser.add_argument("--pixels", type=int, default=512, help="training size (default: %(default)s)")
    parser.add_argument("--batch_size", type=int, default=16, help="batch size (default: %(default)s)")
    parser.add_argument("--batches", type=int, default=20,
                        help="timed batches after %d warm-up ones (default: %%(default)s)" % WARMUP_BATCHES)
    parser.add_argument("--camvid_src", type=str, default=None,
                        help="CamVid folder (SegNet layout): time its conversion into a temporary "
                             "folder and feed from there (overrides --datapath and --dataset)")
    return parser


def report_feeder(spec, datapath, args):
    rate = feeder_images_per_sec(spec, datapath, args.pixels, args.batch_size, args.batches)
    print(f"feeder: {rate:.1f} images/s ({spec.name}, {args.pixels} px, batch {args.batch_size}, "
          f"training augmentation)")


def main(args):
    if not args.camvid_src:
        report_feeder(load_dataset(args.dataset, args.datapath), args.datapath, args)
        return
    with tempfile.TemporaryDirectory(prefix="data_bench_") as datapath:
        summary = camvid_to_records.convert(args.camvid_src, f"{datapath}/camvid")
        print(f"converter: {summary.images_per_sec:.1f} images/s (camvid, {summary.num_records} pairs, "
              f"{camvid_to_records.DEFAULT_WORKERS} workers)")
        report_feeder(load_dataset("camvid", datapath), datapath, args)


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser()))
