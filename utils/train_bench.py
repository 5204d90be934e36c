"""Training benchmark: images/s of each feature extractor with FCN16, against this machine's peak.

    python -m utils.train_bench --pixels 512 --batch_size 16                  # every net
    python -m utils.train_bench --nets mobilenet_v1 --datapath data          # + input pipeline

For each net it builds fcn_train.py's own graph (`training_loop.build_graph`
with fcn_train's defaults) and times its training step, with the fetches of
fcn_train's loop (loss, confusion, lr), and inference (eval tower, predictions
fetched), on one constant batch held in memory, so no input pipeline takes
part; it turns them into GFLOP/s using the net's multiply-accumulates
(`fcn_arch.network_stats`): a training step counts as 3x the forward pass
(forward, gradients of activations, gradients of weights).
The peak is the best rate of several large float32 kernels timed in the same
process (matmuls of three sizes and two convolutions, PEAK_KERNELS), so that
no network's rate exceeds it: a single 4096^2 matmul reached 61-65 GFLOP/s on
an AVX2-only EPYC, less than ResNet-50's convolutions (137% "of peak"). On
GPUs with TF32 enabled (TensorFlow's default) it is the TF32 peak that
convolutions also use.

With CamVid records under --datapath it also times --pipeline_net's training
step on real batches from the feeder (augmented as fcn_train.py does) against
the constant batch: the difference is what the input pipeline costs.
"""
if __package__ in (None, ""):  # run as `python utils/...`: find `utils` at the repo root,
    # as `python -m` does, not in this file's folder (sys.path[0]), whose modules shadow others
    import pathlib, sys; sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])

import os
import platform
import sys
import time

from utils.tfcompat import onednn_enabled, session_config, tf  # first: it quiets TensorFlow's import-time logging
import fcn_arch  # noqa: E402
from utils import training, training_loop  # noqa: E402
from utils.augmentation import AugmentParams  # noqa: E402
from utils.cli import CheckedArgumentParser, add_gpu_flag, bounded, select_gpu  # noqa: E402
from utils.datasets import DATASETS, DEFAULT_DATAPATH, load_dataset  # noqa: E402
from utils.errors import SegMentorError, run_main  # noqa: E402
from utils.feeder import Feeder  # noqa: E402
from utils.run_settings import RunSettings  # noqa: E402

DECODER = "fcn16"
BENCH_DATASET = "camvid"          # its class count sizes the score layers; its records feed
# A training step does the forward pass, then gradients with respect to activations and
# to weights, each about as costly as the forward pass.
TRAIN_FLOPS_PER_FORWARD = 3
FLOPS_PER_MAC = 2
WARMUP_STEPS = 3                  # graph optimisation, autotuning, prefetch buffers
MIN_PEAK_SECS = 1.0               # time each peak kernel at least this long
LEARNRATE = 1e-4                  # small: steps must not diverge during the timing
positive_int = bounded(int, low=0, low_inclusive=False)


def machine_description():
    """'<CPU model> x<cores>' plus the GPU name when TensorFlow sees one."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    description = f"{cpu}, {os.cpu_count()} cores, oneDNN {'on' if onednn_enabled() else 'off'}"
    for gpu in tf.config.list_physical_devices("GPU"):
        name = tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
        description += f", GPU {name}"
    return description


def timed_runs(sess, fetch, num_steps, feed=None):
    """Seconds per sess.run of `fetch`, after WARMUP_STEPS untimed ones."""
    for _ in range(WARMUP_STEPS):
        sess.run(fetch, feed)
    start = time.perf_counter()
    for _ in range(num_steps):
        sess.run(fetch, feed)
    return (time.perf_counter() - start) / num_steps


def _constant(shape):
    return tf.Variable(tf.random.uniform(shape), trainable=False)


def matmul_kernel(size):
    """A size x size float32 matmul: fn() -> (op, FLOPs)."""
    def build():
        return tf.matmul(_constant([size, size]), _constant([size, size])), \
            FLOPS_PER_MAC * size ** 3
    return build


def conv_kernel(batch, side, channels_in, channels_out, kernel_px):
    """A float32 kernel_px^2 SAME convolution of a [batch, side, side, channels_in] input:
    fn() -> (op, FLOPs)."""
    def build():
        images = _constant([batch, side, side, channels_in])
        weights = _constant([kernel_px, kernel_px, channels_in, channels_out])
        macs = batch * side * side * kernel_px * kernel_px * channels_in * channels_out
        return tf.nn.conv2d(images, weights, 1, "SAME"), FLOPS_PER_MAC * macs
    return build


# Candidates for the peak: no single kernel is fastest everywhere (blocking, cache sizes,
# the convolution library's own kernels), so the best of them is taken. The convolutions
# are ResNet-50's widest 3x3 and a 1x1 of its third stage, at sizes its FCN16 meets.
PEAK_KERNELS = {
    "matmul 1024^2": matmul_kernel(1024),
    "matmul 2048^2": matmul_kernel(2048),
    "matmul 4096^2": matmul_kernel(4096),
    "conv 3x3 256->256, 8x64x64": conv_kernel(8, 64, 256, 256, 3),
    "conv 1x1 1024->256, 8x32x32": conv_kernel(8, 32, 1024, 256, 1),
}


def kernel_gflops(build):
    """float32 GFLOP/s of the kernel `build` makes, timed >= MIN_PEAK_SECS."""
    with tf.Graph().as_default():
        output, flops = build()
        # Reducing on the device keeps the result transfer out of the timing.
        total = tf.reduce_sum(output)
        with tf.Session(config=session_config()) as sess:
            sess.run(tf.global_variables_initializer())
            secs_per_run = timed_runs(sess, total, 1)
            runs = max(1, int(MIN_PEAK_SECS / secs_per_run))
            secs_per_run = timed_runs(sess, total, runs)
    return flops / secs_per_run / 1e9


def peak_gflops(kernels=None):
    """(best GFLOP/s, its kernel's name, {name: GFLOP/s}) over the `kernels` registry
    (default: PEAK_KERNELS)."""
    rates = {name: kernel_gflops(build) for name, build in (kernels or PEAK_KERNELS).items()}
    best = max(rates, key=rates.get)
    return rates[best], best, rates


def constant_batch(batch_size, pixels, num_classes, seed=0):
    """(images, labels) held in non-trainable variables: a batch that costs nothing to feed."""
    images = tf.Variable(tf.random.uniform([batch_size, pixels, pixels, 3], 0, 255, seed=seed),
                         trainable=False, name="bench_images")
    labels = tf.Variable(tf.random.uniform([batch_size, pixels, pixels], 0, num_classes,
                                           dtype=tf.int32, seed=seed),
                         trainable=False, name="bench_labels")
    return images, labels


def bench_settings(net, xla=False):
    """The settings of an fcn_train.py run of `net` with FCN16 and every other default
    (XLA JIT of the towers with `xla`)."""
    return RunSettings(basenet=net, **fcn_arch.decoder_flags(DECODER),
                       batch_norm_decay=training.batch_norm_decay_for(net), learnrate=LEARNRATE,
                       xla=xla)


def training_graph(net, spec, images, labels, xla=False):
    """fcn_train.py's graph of `net` (train and eval towers), on `images` and `labels`."""
    return training_loop.build_graph(bench_settings(net, xla), spec, images, labels,
                                     lr_drop_steps=(), total_steps=1)


def bench_net(net, spec, pixels, batch_size, num_steps, xla=False):
    """(train images/s, inference images/s) of one net on a constant batch."""
    with tf.Graph().as_default():
        images, labels = constant_batch(batch_size, pixels, spec.num_classes)
        graph = training_graph(net, spec, images, labels, xla)
        predictions = tf.argmax(graph.eval_logits, axis=-1, output_type=tf.int32)
        with tf.Session(config=session_config()) as sess:
            sess.run(tf.global_variables_initializer())
            train_secs = timed_runs(sess, graph.step_fetches(), num_steps)
            infer_secs = timed_runs(sess, predictions, num_steps)
    return batch_size / train_secs, batch_size / infer_secs


def bench_input_pipeline(net, spec, datapath, pixels, batch_size, num_steps):
    """(secs per training step on feeder batches, on a constant batch), one graph each."""
    step_secs = []
    for use_feeder in (True, False):
        with tf.Graph().as_default():
            if use_feeder:
                feeder = Feeder(spec, datapath, batch_size, pixels, augment=AugmentParams(),
                                pad_rgb=fcn_arch.pad_rgb(net))
                images, labels = feeder.images, feeder.labels
            else:
                images, labels = constant_batch(batch_size, pixels, spec.num_classes)
            graph = training_graph(net, spec, images, labels)
            with tf.Session(config=session_config()) as sess:
                sess.run(tf.global_variables_initializer())
                feed = {feeder.handle: feeder.train_handle(sess)} if use_feeder else None
                step_secs.append(timed_runs(sess, graph.step_fetches(), num_steps, feed))
    return tuple(step_secs)


def add_step_timing_flags(parser, nets, pixels, batch_size, steps):
    """--nets, --pixels, --batch_size and --steps with these defaults: what every
    benchmark timing fcn_train.py's step on a constant batch takes."""
    parser.add_argument("--nets", nargs="+", choices=list(nets), default=list(nets),
                        help="feature extractors to time (default: all)")
    parser.add_argument("--pixels", type=positive_int, default=pixels,
                        help="square input side (default: %(default)s)")
    parser.add_argument("--batch_size", type=positive_int, default=batch_size,
                        help="images per step (default: %(default)s)")
    parser.add_argument("--steps", type=positive_int, default=steps,
                        help=f"timed steps per measurement, after {WARMUP_STEPS} warm-up ones "
                             f"(default: %(default)s)")


def build_parser():
    parser = CheckedArgumentParser(
        description=f"Training and inference images/s of every feature extractor with "
                    f"{DECODER.upper()}, as GFLOP/s against a float32 peak (the best of large "
                    f"matmuls and convolutions); with "
                    f"CamVid records, the input pipeline's cost too.")
    add_step_timing_flags(parser, fcn_arch.FEATURE_EXTRACTORS, pixels=512, batch_size=16,
                          steps=20)
    parser.add_argument("--datapath", default=DEFAULT_DATAPATH,
                        help=f"folder holding {BENCH_DATASET}/*.tfrecords for the input-pipeline "
                             f"comparison (default: %(default)s; skipped when absent)")
    parser.add_argument("--pipeline_net", choices=list(fcn_arch.FEATURE_EXTRACTORS),
                        default="mobilenet_v1",
                        help="net of the input-pipeline comparison (default: %(default)s)")
    parser.add_argument("--xla", action="store_true",
                        help="XLA-compile the towers, as fcn_train.py --xla does (default: off, "
                             "fcn_train.py's default)")
    add_gpu_flag(parser)
    return parser


def main(args):
    select_gpu(args.gpu)
    spec = DATASETS[BENCH_DATASET]  # its classes size the score layers
    num_classes = spec.num_classes
    peak, peak_kernel, rates = peak_gflops()
    print(f"machine: {machine_description()}; TensorFlow {tf.version.VERSION}")
    print(f"float32 peak: {peak:.0f} GFLOP/s ({peak_kernel}; best of "
          f"{', '.join(f'{name} {rate:.0f}' for name, rate in rates.items())})")
    print(f"{DECODER.upper()}, {args.pixels} px, batch {args.batch_size}, {num_classes} classes, "
          f"{args.steps} timed steps{', XLA' if args.xla else ''}")
    header = (f"{'net':<14}{'GFLOP/img':>10}{'train img/s':>13}{'train GFLOP/s':>15}"
              f"{'% peak':>8}{'infer img/s':>13}{'infer GFLOP/s':>15}{'% peak':>8}")
    print(header)
    for net in args.nets:
        _, macs = fcn_arch.network_stats(net, DECODER, num_classes, args.pixels)
        forward_gflop = FLOPS_PER_MAC * macs / 1e9
        train_rate, infer_rate = bench_net(net, spec, args.pixels, args.batch_size, args.steps,
                                           args.xla)
        train_gflops = train_rate * TRAIN_FLOPS_PER_FORWARD * forward_gflop
        infer_gflops = infer_rate * forward_gflop
        print(f"{net:<14}{forward_gflop:>10.2f}{train_rate:>13.1f}{train_gflops:>15.0f}"
              f"{100 * train_gflops / peak:>7.0f}%{infer_rate:>13.1f}{infer_gflops:>15.0f}"
              f"{100 * infer_gflops / peak:>7.0f}%", flush=True)

    try:
        records_spec = load_dataset(BENCH_DATASET, args.datapath)
    except SegMentorError as err:
        print(f"input pipeline: skipped ({err})")
        return
    feeder_secs, constant_secs = bench_input_pipeline(args.pipeline_net, records_spec,
                                                      args.datapath,
                                                      args.pixels, args.batch_size, args.steps)
    print(f"input pipeline ({BENCH_DATASET}, {args.pipeline_net}): training step "
          f"{feeder_secs:.3f} s on real batches vs {constant_secs:.3f} s on a constant batch: "
          f"{100 * (feeder_secs / constant_secs - 1):+.1f}% (target < 5%)")


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser()))
