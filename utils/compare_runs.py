"""Compare trained runs on one split: is run B really better than run A, or is it noise?

    python -m utils.compare_runs tmp/RUN_A tmp/RUN_B [--split val] [--afteriter N]
    python -m utils.compare_runs tmp/seed0 tmp/seed1 tmp/seed2      # one recipe, three seeds

Prints each run's mIoU [95% CI], pixel accuracy and per-class IoU; for two
runs, the difference B - A with a paired bootstrap 95% interval (the same
resampled images for both runs, utils.inference) and a plain verdict; for
runs of one recipe that differ only in --seed, the mean and standard deviation
across them. Each run is scored as `fcn_test.py --traindir RUN` scores it (one
plain pass at the run's --pixels): its outputs in <run>/test_<split>_<step> are
reused when they are of the same split, step and settings, otherwise computed
and written there.
"""
if __package__ in (None, ""):  # run as `python utils/...`: find `utils` at the repo root,
    # as `python -m` does, not in this file's folder (sys.path[0]), whose modules shadow others
    import pathlib, sys; sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])

import os  # noqa: E402
import string  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402

from utils.cli import (CheckedArgumentParser, add_checkpoint_flags, add_gpu_flag,  # noqa: E402
                       bounded, select_gpu)
from utils.datasets import SPLIT_FILES  # noqa: E402
from utils.errors import SegMentorError, run_main  # noqa: E402
from utils.evaluation import (Drawing, default_outdir, evaluate_split, percent,  # noqa: E402
                              read_results)
from utils.inference import (CONFIDENCE_LEVEL, difference_verdict,  # noqa: E402
                             paired_bootstrap_miou_difference)
from utils.prediction import PIXELS_AS_TRAINED, TrainedRun, check_split  # noqa: E402

# runargs that say where or how often, not what is trained: two runs differing
# only in these (and the seed) follow one recipe.
BOOKKEEPING_KEYS = frozenset({"runs_dir", "datapath", "modelspath", "gpu", "resume",
                              "log_every", "val_every", "save_every", "snapshot_every"})
SEED_KEY = "seed"


class RunScores:
    """One run's scores on the split: its metrics.json plus per-image names and counts."""

    def __init__(self, label, traindir, runargs, metrics, names, counts):
        self.label, self.traindir, self.runargs = label, traindir, runargs
        self.metrics, self.names, self.counts = metrics, names, counts

    @property
    def name(self):
        return os.path.basename(os.path.normpath(self.traindir))


def run_labels(count):
    """'A', 'B', ... (then 'R27', ...) for `count` runs."""
    letters = string.ascii_uppercase
    return [letters[index] if index < len(letters) else f"R{index + 1}" for index in range(count)]


def score_run(label, traindir, split, afteriter, datapath, batch_size):
    """RunScores of one run, reusing fcn_test's outputs when they match."""
    run = TrainedRun(traindir, datapath)
    checkpoint = run.checkpoint(afteriter)
    plan = run.inference_plan(run.eval_pixels(PIXELS_AS_TRAINED))
    spec = run.dataset()
    check_split(spec, run.datapath, split)
    outdir = default_outdir(traindir, split, checkpoint.step, plan)
    stored = read_results(outdir)
    if stored and _matches(stored[0], split, checkpoint.step, plan):
        print(f"{label}: reusing {outdir}")
        metrics, names, counts = stored
    else:
        print(f"{label}: scoring {traindir} (step {checkpoint.step}) into {outdir}")
        with run.predictor(checkpoint) as predictor:
            metrics = evaluate_split(
                predictor, spec, run.datapath, split, plan, outdir, batch_size, Drawing(),
                extra=dict(step=checkpoint.step, checkpoint=os.path.basename(checkpoint.prefix),
                           pixels=plan.pixels))
        metrics, names, counts = read_results(outdir)  # as stored: one code path for both
    return RunScores(label, traindir, run.runargs, metrics, names, counts)


def _matches(metrics, split, step, plan):
    return (metrics.get("split") == split and metrics.get("step") == step
            and metrics.get("test_time") == plan.settings())


def check_comparable(runs):
    """SegMentorError unless every run was scored on the same classes and images."""
    first = runs[0]
    for other in runs[1:]:
        if list(other.metrics["per_class_iou"]) != list(first.metrics["per_class_iou"]):
            raise SegMentorError(f"runs {first.name} and {other.name} have different classes "
                                 f"(datasets {first.runargs.get('dataset')} and "
                                 f"{other.runargs.get('dataset')}): compare runs of one dataset")
        if other.names != first.names:
            raise SegMentorError(f"runs {first.name} and {other.name} were scored on different "
                                 f"images ({len(first.names)} vs {len(other.names)}); pass "
                                 f"--datapath so both read the same records")


def same_recipe(runs):
    """True when the runs' runargs differ at most in the seed and bookkeeping."""
    def recipe(runargs):
        return {key: value for key, value in runargs.items()
                if key not in BOOKKEEPING_KEYS and key != SEED_KEY}
    first = recipe(runs[0].runargs)
    return all(recipe(run.runargs) == first for run in runs[1:])


def mean_and_std(values):
    """(mean, sample standard deviation) of a list of fractions."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def print_table(runs):
    width = max(len("run"), *(len(run.name) for run in runs))
    print(f"\n{'':<4}{'run':<{width}}  {'step':>6}  {'mIoU [95% CI]':<20}  pixel acc")
    for run in runs:
        low, high = run.metrics["miou_ci95"]
        miou = f"{percent(run.metrics['miou'])} [{percent(low)}, {percent(high)}]"
        print(f"{run.label:<4}{run.name:<{width}}  {run.metrics['step']:>6}  {miou:<20}  "
              f"{percent(run.metrics['pixel_accuracy']):>9}")
    class_names = list(runs[0].metrics["per_class_iou"])
    class_width = max(len("IoU %"), *map(len, class_names))
    print(f"\n{'IoU %':<{class_width}}" + "".join(f"  {run.label:>5}" for run in runs))
    for name in class_names:
        print(f"{name:<{class_width}}" + "".join(
            f"  {percent(run.metrics['per_class_iou'][name]):>5}" for run in runs))


def print_difference(run_a, run_b):
    difference, low, high = paired_bootstrap_miou_difference(run_a.counts, run_b.counts)
    verdict = difference_verdict(low, high, run_a.label, run_b.label)
    print(f"\n{run_b.label} - {run_a.label}: mIoU {100 * difference:+.1f} "
          f"[{100 * low:+.1f}, {100 * high:+.1f}] (paired bootstrap, {CONFIDENCE_LEVEL:.0%}, "
          f"the same {len(run_a.names)} images resampled for both): {verdict}")
    return verdict


def print_seed_spread(runs):
    seeds = ", ".join(str(run.runargs.get(SEED_KEY)) for run in runs)
    miou_mean, miou_std = mean_and_std([run.metrics["miou"] for run in runs])
    acc_mean, acc_std = mean_and_std([run.metrics["pixel_accuracy"] for run in runs])
    print(f"\n{len(runs)} runs of one recipe (seeds {seeds}): mIoU {100 * miou_mean:.1f} "
          f"± {100 * miou_std:.1f}, pixel accuracy {100 * acc_mean:.1f} ± {100 * acc_std:.1f} "
          f"(mean ± standard deviation across runs)")


def build_parser():
    parser = CheckedArgumentParser(
        prog="python -m utils.compare_runs",
        description="Compare trained runs on one split: mIoU with 95%% intervals, per-class "
                    "IoU, a paired bootstrap of the difference of two runs, and the spread "
                    "across seeds of one recipe.")
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="run folders made by fcn_train.py (the first is A, then B, ...)")
    parser.add_argument("--split", choices=sorted(SPLIT_FILES), default="val",
                        help="split every run is scored on (default: %(default)s)")
    add_checkpoint_flags(parser, best=False)  # the same snapshot step in every run
    parser.add_argument("--datapath", default=None,
                        help="root of the converted datasets (default: each run's own)")
    parser.add_argument("--batch_size", type=bounded(int, low=1), default=1,
                        help="images per network run when a run must be scored (default: 1)")
    add_gpu_flag(parser)
    return parser


def main(args):
    select_gpu(args.gpu)
    if len(set(map(os.path.realpath, args.runs))) != len(args.runs):
        raise SegMentorError("a run is named twice; name each run folder once")
    runs = [score_run(label, traindir, args.split, args.afteriter, args.datapath,
                      args.batch_size)
            for label, traindir in zip(run_labels(len(args.runs)), args.runs)]
    check_comparable(runs)
    print_table(runs)
    if len(runs) == 2:
        print_difference(*runs)
    if len(runs) >= 2 and same_recipe(runs):
        print_seed_spread(runs)


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser()))
