"""Inference benchmark of a run's deployments: images/s of the checkpoint graph, its
SavedModel and its TFLite exports (float32, float16, int8) on the CPU, per thread count.

    python -m utils.infer_bench --traindir tmp/20240131_mobilenet_v1__1
    python -m utils.infer_bench --traindir tmp/... --threads 1 2 4 --images 50

Every model runs one image at a time, the models taking turns; images/s by
wall clock (its fastest call) and by CPU time (the median call's CPU seconds:
robust on a shared machine, and the single-core speed for 1 thread) at the run's size (`--pixels`): the graph
and the TFLite models take the sized [1, P, P, 3] network input, the
SavedModel a P x P uint8 image through its whole signature (sizing, network,
resize back, softmax, argmax). The exports are written unchecked into a
temporary folder (fcn_export.py checks them); int8 calibrates on the run's
training images. Prints a Markdown table and the int8 / float-graph ratio.
"""
if __package__ in (None, ""):  # run as `python utils/...`: find `utils` at the repo root,
    # as `python -m` does, not in this file's folder (sys.path[0]), whose modules shadow others
    import pathlib, sys; sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])

import os
import sys
import tempfile
import time

import numpy as np

from utils.tfcompat import session_config, tf  # first: it quiets TensorFlow's import-time logging
from utils.cli import CheckedArgumentParser, add_checkpoint_flags, bounded  # noqa: E402
from utils.errors import SegMentorError, first_line, run_main  # noqa: E402
from utils.export import (QUANTIZATIONS, TfliteNetwork, build_fixed_size_graph,  # noqa: E402
                          export_pixels, load_exported, representative_images, write_export)
from utils.prediction import PIXELS_AS_TRAINED, TrainedRun  # noqa: E402
from utils.train_bench import machine_description  # noqa: E402

WARMUP_RUNS = 3  # graph optimisation, XNNPACK packing, caches
DEFAULT_THREADS = (1, 2)
positive_int = bounded(int, low=0, low_inclusive=False)


class GraphNetwork:
    """The checkpoint's fixed-size network in a session limited to `num_threads`."""

    def __init__(self, run, checkpoint, num_classes, pixels, num_threads):
        self.graph = tf.Graph()
        with self.graph.as_default():
            self.image, _, self.probabilities = build_fixed_size_graph(run, num_classes, pixels)
            saver = tf.train.Saver(tf.global_variables())
        self.sess = tf.Session(graph=self.graph, config=session_config(num_threads))
        try:
            saver.restore(self.sess, checkpoint.prefix)
        except (tf.errors.OpError, ValueError) as err:
            self.sess.close()
            raise SegMentorError(
                f"cannot restore {checkpoint.prefix} ({first_line(err)})") from None

    def __call__(self, sized_image):
        return self.sess.run(self.probabilities, {self.image: sized_image})

    def close(self):
        self.sess.close()


class SavedModelNetwork:
    """The SavedModel's whole signature on a P x P uint8 image."""

    def __init__(self, path, num_threads):
        self.model = load_exported(path, num_threads)

    def __call__(self, image):
        return self.model.probabilities(image)

    def close(self):
        self.model.close()


def images_per_sec(networks, inputs):
    """{name: (images/s by wall clock, images/s by CPU time)} of `networks` ({name:
    (callable, its inputs)}), after WARMUP_RUNS untimed calls each.

    The models take turns image by image, so on a shared machine each sees the
    same competition for the CPU. Wall clock: the fastest call, the one that
    lost least to other processes (the median moved 2x between runs at a load
    average of 10 on 2 cores). CPU time: the median call's CPU seconds of this
    process, which other processes do not inflate; with one thread it is the
    single-core speed, with more it sums every thread's work (spinning included).
    """
    for network, inputs in networks.values():
        for index in range(WARMUP_RUNS):
            network(inputs[index % len(inputs)])
    wall = {name: [] for name in networks}
    cpu = {name: [] for name in networks}
    for index in range(len(next(iter(networks.values()))[1])):
        for name, (network, inputs) in networks.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            network(inputs[index])
            cpu[name].append(time.process_time() - start_cpu)
            wall[name].append(time.perf_counter() - start)
    return {name: (1.0 / min(wall[name]), 1.0 / max(float(np.median(cpu[name])), 1e-9))
            for name in networks}


def bench_inputs(spec, datapath, pixels, pad_rgb, count):
    """`count` sized training images [1, P, P, 3] float32 (the calibration images, cycled)."""
    calibration = list(representative_images(spec, datapath, pixels, pad_rgb)())
    return [calibration[index % len(calibration)][0] for index in range(count)]


def build_parser():
    parser = CheckedArgumentParser(
        prog="utils/infer_bench.py",
        description="Images/s of a run's checkpoint graph, SavedModel and TFLite float32 / "
                    "float16 / int8 exports on the CPU, with 1 and 2 threads.")
    parser.add_argument("--traindir", required=True, help="run folder made by fcn_train.py")
    add_checkpoint_flags(parser, best=False)
    parser.add_argument("--pixels", type=positive_int, default=None,
                        help="input side in pixels (default: the run's training size)")
    parser.add_argument("--threads", type=positive_int, nargs="+", default=list(DEFAULT_THREADS),
                        help="CPU thread counts to time each model with (default: 1 2)")
    parser.add_argument("--images", type=positive_int, default=20,
                        help="timed images per model and thread count (default: %(default)s)")
    parser.add_argument("--datapath", default=None,
                        help="root of the converted datasets (default: the run's own); int8 "
                             "calibrates on, and the timing feeds, its training images")
    return parser


def main(args):
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # a CPU benchmark, whatever the machine has
    run = TrainedRun(args.traindir, args.datapath)
    checkpoint = run.checkpoint(args.afteriter)
    spec = run.dataset()
    pixels = export_pixels(run, "tflite", PIXELS_AS_TRAINED if args.pixels is None
                           else args.pixels)
    inputs = bench_inputs(spec, run.datapath, pixels, run.pad_rgb, args.images)
    uint8_inputs = [np.clip(np.rint(sized[0]), 0, 255).astype(np.uint8) for sized in inputs]
    calibration = representative_images(spec, run.datapath, pixels, run.pad_rgb)

    rows, cpu_rows = {}, {}  # name -> {threads: images/s by wall clock, by CPU time}
    with tempfile.TemporaryDirectory(prefix="infer_bench_") as folder:
        exports = {"SavedModel": ("savedmodel", "none")}
        exports.update({f"TFLite {'float32' if name == 'none' else name}": ("tflite", name)
                        for name in QUANTIZATIONS})
        paths = {}
        for name, (format_name, quantize) in exports.items():
            print(f"exporting {name} ...", flush=True)
            paths[name], _ = write_export(run, checkpoint, spec, format_name, quantize, pixels,
                                          calibration, os.path.join(folder, name.replace(" ", "_")))
        for threads in args.threads:
            networks = {"graph (checkpoint)": (GraphNetwork(run, checkpoint, spec.num_classes,
                                                            pixels, threads), inputs),
                        "SavedModel": (SavedModelNetwork(paths["SavedModel"], threads),
                                       uint8_inputs)}
            networks.update({name: (TfliteNetwork(paths[name], threads), inputs)
                             for name in exports if name.startswith("TFLite")})
            try:
                for name, (speed, cpu_speed) in images_per_sec(networks, inputs).items():
                    rows.setdefault(name, {})[threads] = speed
                    cpu_rows.setdefault(name, {})[threads] = cpu_speed
                    print(f"{name}, {threads} thread(s): {speed:.1f} img/s "
                          f"({cpu_speed:.1f} by CPU time)", flush=True)
            finally:
                for network, _ in networks.values():
                    if hasattr(network, "close"):
                        network.close()

    print(f"\n{run.settings.basenet} ({os.path.basename(os.path.normpath(args.traindir))}), "
          f"{pixels}x{pixels}, batch 1, {args.images} images, {machine_description()}\n")
    print("| model | " + " | ".join(f"{t} thread{'s' if t > 1 else ''} img/s"
                                    for t in args.threads)
          + " | " + " | ".join(f"{t} thread{'s' if t > 1 else ''} img/s by CPU time"
                               for t in args.threads) + " |")
    print("|---|" + "---|" * 2 * len(args.threads))
    for name, by_threads in rows.items():
        print(f"| {name} | " + " | ".join(f"{by_threads[t]:.1f}" for t in args.threads)
              + " | " + " | ".join(f"{cpu_rows[name][t]:.1f}" for t in args.threads) + " |")
    for threads in args.threads:
        ratios = [table["TFLite int8"][threads] / table["graph (checkpoint)"][threads]
                  for table in (rows, cpu_rows)]
        print(f"TFLite int8 / float graph, {threads} thread(s): {ratios[0]:.2f}x "
              f"({ratios[1]:.2f}x by CPU time)")


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser()))
