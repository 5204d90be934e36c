"""fcn_train.py's training step with TensorFlow's oneDNN CPU kernels off and on, side by side.

    python -m benchmarks.onednn_compare --nets mobilenet_v1 mobilenet_v2 --pixels 256 --batch_size 8

oneDNN is chosen once per process, before TensorFlow loads (TF_ENABLE_ONEDNN_OPTS,
which utils/tfcompat.py sets to 1 unless the user did), so each measurement is a
child process of this script: utils/train_bench.py's training step (fcn_train.py's
graph and fetches, FCN16, a constant batch in memory) with oneDNN off, then on, for
--rounds rounds per net, so load from other jobs hits both alike. Each line gives
both step times and their ratio.
"""
if __package__ in (None, ""):  # run as `python benchmarks/...`: find the repo root's packages
    import pathlib, sys; sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])

import json
import os
import subprocess
import sys
from pathlib import Path

import fcn_arch
from utils.cli import CheckedArgumentParser, bounded
from utils.errors import SegMentorError, run_main
from utils.train_bench import add_step_timing_flags, machine_description

REPO_ROOT = Path(__file__).resolve().parents[1]
ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"
positive_int = bounded(int, low=0, low_inclusive=False)

# The child: one net's step time, with the oneDNN setting its environment gave it.
CHILD = """
import json, sys
from utils.tfcompat import onednn_enabled, session_config, tf
from utils.datasets import DATASETS
from utils.train_bench import BENCH_DATASET, constant_batch, timed_runs, training_graph
net, pixels, batch_size, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
spec = DATASETS[BENCH_DATASET]
with tf.Graph().as_default():
    images, labels = constant_batch(batch_size, pixels, spec.num_classes)
    graph = training_graph(net, spec, images, labels)
    with tf.Session(config=session_config()) as sess:
        sess.run(tf.global_variables_initializer())
        secs = timed_runs(sess, graph.step_fetches(), steps)
print(json.dumps({"onednn": onednn_enabled(), "step_secs": secs}))
"""


def step_secs(net, pixels, batch_size, steps, onednn):
    """(seconds per training step, whether oneDNN really was on) in a fresh process."""
    env = dict(os.environ, **{ONEDNN_ENV: "1" if onednn else "0"})
    done = subprocess.run([sys.executable, "-c", CHILD, net, str(pixels), str(batch_size),
                           str(steps)], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise SegMentorError(f"the {net} step failed with oneDNN {'on' if onednn else 'off'}: "
                             f"{last}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["step_secs"], result["onednn"]


def build_parser():
    parser = CheckedArgumentParser(
        description="fcn_train.py's FCN16 training step with TensorFlow's oneDNN CPU kernels "
                    "off and on, in alternating processes.")
    add_step_timing_flags(parser, fcn_arch.FEATURE_EXTRACTORS, pixels=256, batch_size=8, steps=5)
    parser.add_argument("--rounds", type=positive_int, default=2,
                        help="off/on pairs per net (default: %(default)s)")
    return parser


def main(args):
    print(f"machine: {machine_description()} (this process; each child sets its own)")
    print(f"FCN16, {args.pixels} px, batch {args.batch_size}, {args.steps} timed steps per child")
    for net in args.nets:
        for round_index in range(args.rounds):
            (off, off_flag), (on, on_flag) = (
                step_secs(net, args.pixels, args.batch_size, args.steps, onednn)
                for onednn in (False, True))
            if off_flag or not on_flag:
                raise SegMentorError(f"TensorFlow ignored {ONEDNN_ENV} (off run: oneDNN "
                                     f"{off_flag}, on run: {on_flag}); this build cannot switch it")
            print(f"{net:<14} round {round_index + 1}: oneDNN off {off:.3f} s/step, "
                  f"on {on:.3f} s/step, {off / on:.2f}x", flush=True)


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser()))
