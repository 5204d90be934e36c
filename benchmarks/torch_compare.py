"""seg-mentor's FCN16 training step against the same step in PyTorch eager, side by side.

    SEGMENTOR_TORCH_PYTHON=/path/to/venv/bin/python \
        python -m benchmarks.torch_compare --nets mobilenet_v2 resnet_v1_50 --pixels 256 --batch_size 8

The TensorFlow side is utils/train_bench.py's graph (fcn_train.py's training graph
and per-step fetches, a constant batch in memory). The PyTorch side
(benchmarks/torch_fcn16.py: torchvision backbones, Adam, same batch, size and class
count) runs in a process of its own, started with $SEGMENTOR_TORCH_PYTHON: PyTorch
lives in a separate environment and seg-mentor never imports it. The two take turns
per net for --rounds rounds, so load from other jobs hits both alike; each line
gives both img/s, their ratio, and each side's multiply-accumulates per image (the
convolutions of one forward pass), which show that both run the same network.
"""
if __package__ in (None, ""):  # run as `python benchmarks/...`: find the repo root's packages
    import pathlib, sys; sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])

import json
import os
import subprocess
import sys
from pathlib import Path

from utils.tfcompat import session_config, tf  # first: it quiets TensorFlow's import-time logging
import fcn_arch  # noqa: E402
from benchmarks.torch_fcn16 import BACKBONES  # noqa: E402  (imports no torch)
from utils.cli import CheckedArgumentParser, bounded  # noqa: E402
from utils.datasets import DATASETS  # noqa: E402
from utils.errors import SegMentorError, run_main  # noqa: E402
from utils.train_bench import (BENCH_DATASET, DECODER, WARMUP_STEPS,  # noqa: E402
                               add_step_timing_flags, constant_batch, machine_description,
                               timed_runs, training_graph)

TORCH_PYTHON_ENV = "SEGMENTOR_TORCH_PYTHON"
TORCH_WORKER = Path(__file__).resolve().with_name("torch_fcn16.py")
positive_int = bounded(int, low=0, low_inclusive=False)


def torch_python():
    """The interpreter with PyTorch and torchvision; SegMentorError (one line) without one."""
    python = os.environ.get(TORCH_PYTHON_ENV)
    if not python:
        raise SegMentorError(f"PyTorch unavailable: set {TORCH_PYTHON_ENV} to a Python that has "
                             f"torch and torchvision (a separate environment; seg-mentor never "
                             f"installs PyTorch)")
    try:
        probe = subprocess.run([python, "-c", "import torch, torchvision"],
                               capture_output=True, text=True, timeout=300)
    except OSError as err:
        raise SegMentorError(f"PyTorch unavailable: {TORCH_PYTHON_ENV}={python} cannot run "
                             f"({err.strerror})") from None
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no message"])[-1]
        raise SegMentorError(f"PyTorch unavailable: {TORCH_PYTHON_ENV}={python} cannot import "
                             f"torch and torchvision ({last})")
    return python


class TorchWorker:
    """benchmarks/torch_fcn16.py in its own process: img/s of a net's step on request."""

    def __init__(self, python, pixels, batch_size, num_classes):
        self.process = subprocess.Popen(
            [python, str(TORCH_WORKER), "--pixels", str(pixels), "--batch_size",
             str(batch_size), "--num_classes", str(num_classes)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def images_per_sec(self, net, steps):
        self.process.stdin.write(f"{net} {steps} {WARMUP_STEPS}\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise SegMentorError(f"the PyTorch worker stopped (exit status "
                                 f"{self.process.wait()}) while timing {net}")
        return json.loads(line)

    def close(self):
        self.process.stdin.close()
        self.process.wait()


class TensorFlowStep:
    """fcn_train.py's training step of `net` (train_bench's graph), kept built between rounds."""

    def __init__(self, net, spec, pixels, batch_size):
        self.graph = tf.Graph()
        with self.graph.as_default():
            images, labels = constant_batch(batch_size, pixels, spec.num_classes)
            self.fetches = training_graph(net, spec, images, labels).step_fetches()
            self.sess = tf.Session(graph=self.graph, config=session_config())
            self.sess.run(tf.global_variables_initializer())
        self.batch_size = batch_size
        _, self.macs = fcn_arch.network_stats(net, DECODER, spec.num_classes, pixels)

    def images_per_sec(self, steps):
        return self.batch_size / timed_runs(self.sess, self.fetches, steps)

    def close(self):
        self.sess.close()


def build_parser():
    parser = CheckedArgumentParser(
        prog="python -m benchmarks.torch_compare",
        description="Training img/s of seg-mentor's FCN16 step (TensorFlow graph) against the "
                    "same step in PyTorch eager with torchvision backbones, taking turns; "
                    f"PyTorch runs in its own process, with ${TORCH_PYTHON_ENV}.")
    add_step_timing_flags(parser, BACKBONES, pixels=256, batch_size=8, steps=10)
    parser.add_argument("--rounds", type=positive_int, default=2,
                        help="turns of each side per net (default: %(default)s)")
    return parser


def main(args):
    python = torch_python()
    spec = DATASETS[BENCH_DATASET]  # its classes size the score layers, as in train_bench
    print(f"machine: {machine_description()}; TensorFlow {tf.version.VERSION}; PyTorch from "
          f"{python}")
    print(f"FCN16 training step, {args.pixels} px, batch {args.batch_size}, {spec.num_classes} "
          f"classes, Adam, {args.steps} timed steps per turn")
    worker = TorchWorker(python, args.pixels, args.batch_size, spec.num_classes)
    steps = {}
    try:
        for round_number in range(1, args.rounds + 1):
            for net in args.nets:
                if net not in steps:
                    steps[net] = TensorFlowStep(net, spec, args.pixels, args.batch_size)
                tf_rate = steps[net].images_per_sec(args.steps)
                torch_result = worker.images_per_sec(net, args.steps)
                print(f"round {round_number} {net:<14} TensorFlow {tf_rate:6.2f} img/s "
                      f"({steps[net].macs / 1e9:.2f} GMACs/img)   PyTorch {torch_result['torch']} "
                      f"eager {torch_result['img_s']:6.2f} img/s ({torch_result['macs'] / 1e9:.2f} "
                      f"GMACs/img, {torch_result['threads']} threads)   TensorFlow / PyTorch "
                      f"{tf_rate / torch_result['img_s']:.2f}x", flush=True)
    finally:
        worker.close()
        for step in steps.values():
            step.close()


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser()))
