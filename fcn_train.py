"""Train an FCN: `python fcn_train.py --basenet mobilenet_v1 --fcn16 --scratch`.

Every run gets a folder tmp/<YYYYMMDD>_<basenet>__<N> holding `runargs` (the
resolved flags), `runlog` (key=value lines), TensorBoard events and
checkpoints; `--resume FOLDER` continues a stopped or crashed run in place.

main() is the recipe: settings -> data -> network, loss, lr schedule and
optimizer in one graph -> run folder -> initialise (resume / pretrained /
scratch) -> loop (step, log, validate, save) -> one summary line.
"""
import argparse
import math
import os
import signal
import sys
import time
import types

import numpy as np
from tqdm import tqdm

from utils.tfcompat import tf  # first: it quiets TensorFlow's import-time logging
import fcn_arch  # noqa: E402
from utils import training
from utils.augmentation import NO_AUGMENT, AugmentParams
from utils.checkpoints import CheckpointKeeper, checkpoint_candidates
from utils.datasets import DEFAULT_DATAPATH, IGNORE_LABEL, load_dataset
from utils.errors import EXIT_USER_ERROR, SegMentorError, run_main
from utils.feeder import Feeder
from utils.inference import segmentation_metrics
from utils.run_folder import (RUNLOG_FILE, RUNS_DIR, RunLog, create_run_dir, parse_runlog,
                              read_runargs, write_runargs)
from utils.visualization import colorize_labels_tf

# ---- Defaults: the README recipe (mobilenet_v1 FCN16 from scratch on `shapes`) ----
DEFAULT_BASENET = "mobilenet_v1"     # thin enough to train on a laptop CPU
DEFAULT_DATASET = "shapes"           # generated on first use: works with no download
DEFAULT_BATCH_SIZE = 16
DEFAULT_EPOCHS = 12                  # shapes: val mIoU > 0.8 from scratch in ~7 min on 2 cores
# Adam steps: random weights need large ones; ImageNet weights are already near a good
# solution, and steps as large would wreck the features being fine-tuned.
SCRATCH_LEARNRATE = 3e-3
FINETUNE_LEARNRATE = 3e-4
DEFAULT_MOMENTUM = 0.9               # Adam's beta1; SGD's momentum
DEFAULT_EPSILON = 1e-8               # Adam's epsilon (TF's default)
DEFAULT_LOG_EVERY_STEPS = 10
# Batch-norm moving averages keep decay**t of their initial value (variance 1) after t
# steps. The slim families' 0.997-0.9997 need thousands of steps to forget it; from
# scratch, depthwise layers have variances near 0.02, so until then the eval tower
# normalises with a variance several times too large and validates garbage. 0.9 (PyTorch's
# default) forgets within ~50 steps and still averages over ~10 batches.
DEFAULT_BATCH_NORM_DECAY = 0.9
# Slim ImageNet checkpoints (FEATURE_EXTRACTORS[net].checkpoint_file) are looked up here.
DEFAULT_MODELSPATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")
# Validation scores this fraction of the val split (a fixed subset): a trend, quickly.
VAL_FRACTION = 0.25
# Snapshots by default: this many over the run, so disk use is bounded whatever the length.
DEFAULT_SNAPSHOTS_PER_RUN = 10
IMAGE_SUMMARY_COUNT = 3              # validation images shown in TensorBoard
# Flags a resumed run may change: where things are on this machine, not what is trained.
RESUME_OVERRIDES = ("gpu", "datapath")


# --- Flags ---------------------------------------------------------------------------

def _number(convert, accept, requirement):
    """An argparse type: `convert` the text, then insist on `requirement`."""
    def parse(text):
        value = convert(text)
        if not accept(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
        return value
    parse.__name__ = convert.__name__  # argparse names it in "invalid int value"
    return parse


positive_int = _number(int, lambda v: v > 0, "> 0")
non_negative_int = _number(int, lambda v: v >= 0, ">= 0")
positive_float = _number(float, lambda v: v > 0, "> 0")
non_negative_float = _number(float, lambda v: v >= 0, ">= 0")
fraction = _number(float, lambda v: 0 < v < 1, "strictly between 0 and 1")


class TrainArgumentParser(argparse.ArgumentParser):
    """Adds the checks between flags, and keeps every flag error to one line."""

    def parse_args(self, args=None, namespace=None):
        parsed = super().parse_args(args, namespace)
        _check_flag_combinations(self, parsed)
        return parsed

    def error(self, message):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see --help)\n")


def _check_flag_combinations(parser, args):
    changed = sorted(name for name, value in vars(args).items()
                     if value != parser.get_default(name))
    if args.resume:
        extra = [name for name in changed if name not in RESUME_OVERRIDES + ("resume",)]
        if extra:
            parser.error(f"--resume takes every setting from {args.resume}/runargs; besides it "
                         f"only {', '.join('--' + n for n in RESUME_OVERRIDES)} may be given "
                         f"(got --{', --'.join(extra)})")
    if args.decaylr and args.lr_schedule:
        parser.error("--decaylr and --lr_schedule are two schedules: give one")
    if args.lr_schedule and max(args.lr_schedule) >= args.epochs:
        parser.error(f"--lr_schedule epochs must lie inside the {args.epochs} --epochs, "
                     f"got {args.lr_schedule}")
    if args.scratch and "modelspath" in changed:
        parser.error("--scratch trains from random weights, so --modelspath would be unused")


def build_parser():
    parser = TrainArgumentParser(
        prog="fcn_train.py",
        description="Train an FCN on a segmentation dataset. Each run gets a folder "
                    "<runs_dir>/<YYYYMMDD>_<basenet>__<N> with runargs, runlog, TensorBoard "
                    "events and checkpoints.")
    net = parser.add_argument_group("network")
    net.add_argument("--basenet", choices=list(fcn_arch.FEATURE_EXTRACTORS),
                     default=DEFAULT_BASENET,
                     help="feature extractor (encoder; default: %(default)s)")
    net.add_argument("--fcn16", action="store_true", help="add the stride-16 skip (FCN16)")
    net.add_argument("--fcn8", action="store_true", help="skips down to stride 8 (FCN8)")
    net.add_argument("--fcn4", action="store_true", help="skips down to stride 4 (FCN4)")
    net.add_argument("--trainable_upsampling", action="store_true",
                     help="learn the upsampling kernels (they start bilinear either way)")
    net.add_argument("--extended_arch", choices=list(fcn_arch.ARCHS), default="fcn",
                     help="decoder class (default: %(default)s)")
    net.add_argument("--weight_decay", type=non_negative_float, default=None,
                     help="L2 weight decay (default: the encoder family's own)")
    net.add_argument("--batch_norm_decay", type=fraction, default=DEFAULT_BATCH_NORM_DECAY,
                     help="batch-norm moving-average decay per step (default: %(default)s)")

    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default=DEFAULT_DATASET,
                      help="dataset name: a built-in one, or one converted into --datapath "
                           "(default: %(default)s)")
    data.add_argument("--datapath", default=DEFAULT_DATAPATH,
                      help="folder holding <dataset>/*.tfrecords (default: %(default)s)")
    data.add_argument("--pixels", type=positive_int, default=None,
                      help="training crop side in pixels (default: the dataset's own)")
    data.add_argument("--batch_size", type=positive_int, default=DEFAULT_BATCH_SIZE,
                      help="images per step (default: %(default)s)")
    data.add_argument("--class_weighting", choices=list(training.CLASS_WEIGHTINGS),
                      default="none", help="loss weight per class, from the dataset's "
                                           "training pixel frequencies (default: %(default)s)")
    data.add_argument("--debug_overfit", type=non_negative_int, default=0, metavar="N",
                      help="train on the first N training images only, without augmentation: "
                           "train mIoU should approach 1 (0 = off)")

    init = parser.add_argument_group("initialisation")
    init.add_argument("--modelspath", default=DEFAULT_MODELSPATH,
                      help="folder of the slim ImageNet checkpoints (e.g. "
                           "mobilenet_v1_1.0_224.ckpt); the encoder starts from its file "
                           "(default: %(default)s)")
    init.add_argument("--scratch", action="store_true",
                      help="start from random weights instead of an ImageNet checkpoint")
    init.add_argument("--resume", metavar="RUNDIR", default=None,
                      help="continue the run in RUNDIR from its newest good checkpoint, "
                           "with its saved runargs")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=positive_int, default=DEFAULT_EPOCHS,
                       help="passes over the training images (default: %(default)s)")
    optim.add_argument("--optimizer", choices=list(training.OPTIMIZERS), default="adam",
                       help="update rule (default: %(default)s)")
    optim.add_argument("--learnrate", type=positive_float, default=None,
                       help=f"initial learning rate (default: {SCRATCH_LEARNRATE:g} with "
                            f"--scratch, {FINETUNE_LEARNRATE:g} from ImageNet weights)")
    optim.add_argument("--momentum", type=fraction, default=DEFAULT_MOMENTUM,
                       help="Adam's beta1, or SGD's momentum (default: %(default)s)")
    optim.add_argument("--epsilon", type=positive_float, default=DEFAULT_EPSILON,
                       help="Adam's epsilon (default: %(default)s)")
    optim.add_argument("--difflr", action="store_true",
                       help=f"new decoder layers learn {training.DIFFLR_FACTOR:g}x faster "
                            f"than the (pretrained) encoder")
    optim.add_argument("--decaylr", action="store_true",
                       help=f"divide the learning rate by {training.LR_DROP_FACTOR:g} at 1/3 "
                            f"and 2/3 of training")
    optim.add_argument("--lr_schedule", type=positive_float, nargs="+", metavar="EPOCH",
                       default=None, help=f"divide the learning rate by "
                                          f"{training.LR_DROP_FACTOR:g} at each of these epochs")

    run = parser.add_argument_group("run")
    run.add_argument("--log_every", type=positive_int, default=DEFAULT_LOG_EVERY_STEPS,
                     metavar="STEPS", help="runlog / console / TensorBoard line every STEPS "
                          "(default: %(default)s)")
    run.add_argument("--val_every", type=positive_int, default=None, metavar="STEPS",
                     help="validate every STEPS (default: once per epoch)")
    run.add_argument("--save_every", type=positive_int, default=None, metavar="STEPS",
                     help="overwrite the latest checkpoint fcn.ckpt every STEPS "
                          "(default: once per epoch)")
    run.add_argument("--snapshot_every", type=positive_int, default=None, metavar="STEPS",
                     help=f"keep a snapshot fcn.ckpt_<step> every STEPS (default: "
                          f"{DEFAULT_SNAPSHOTS_PER_RUN} per run)")
    run.add_argument("--runs_dir", default=RUNS_DIR,
                     help="where new run folders are made (default: %(default)s)")
    run.add_argument("--seed", type=int, default=0,
                     help="seed of weights and data order (default: %(default)s)")
    run.add_argument("-g", "--gpu", type=int, default=None, metavar="INDEX",
                     help="GPU to train on (sets CUDA_VISIBLE_DEVICES); -1 = CPU only "
                          "(default: TensorFlow's choice, the first GPU if any)")
    return parser


# --- Settings and plan -------------------------------------------------------------------

def run_settings(args):
    """The settings of this run: the flags, or for --resume the saved runargs.

    `resume` itself is part of the settings but never of the saved runargs.
    """
    if not args.resume:
        return types.SimpleNamespace(**vars(args))
    settings = read_runargs(args.resume)
    missing = sorted(set(vars(args)) - set(settings) - {"resume"})
    if missing:
        raise SegMentorError(f"{args.resume}/runargs lacks {', '.join(missing)}: it was "
                             f"written by another version of fcn_train.py; start a new run")
    for name in RESUME_OVERRIDES:
        if getattr(args, name) != build_parser().get_default(name):
            settings[name] = getattr(args, name)
    return types.SimpleNamespace(**settings, resume=args.resume)


def saved_settings(settings):
    """What runargs holds: every resolved setting but `resume`, with absolute paths."""
    saved = {name: value for name, value in vars(settings).items() if name != "resume"}
    saved.update({name: os.path.abspath(saved[name])
                  for name in ("datapath", "modelspath", "runs_dir")})
    return saved


def make_plan(settings, num_train_images):
    """Step counts of the run, all derived from settings and the dataset size."""
    steps_per_epoch = math.ceil(num_train_images / settings.batch_size)
    total_steps = settings.epochs * steps_per_epoch
    return types.SimpleNamespace(
        batch_size=settings.batch_size,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        log_every=settings.log_every,
        val_every=settings.val_every or steps_per_epoch,
        save_every=settings.save_every or steps_per_epoch,
        snapshot_every=settings.snapshot_every
        or max(1, math.ceil(total_steps / DEFAULT_SNAPSHOTS_PER_RUN)))


# --- The graph ------------------------------------------------------------------------------

def build_graph(settings, spec, feeder, plan):
    """Train tower, eval tower (shared variables), loss, schedule and train op."""
    arch_class = fcn_arch.get_arch_class(settings.extended_arch)
    arch_options = dict(net=settings.basenet, fcn16=settings.fcn16, fcn8=settings.fcn8,
                        fcn4=settings.fcn4, trainable_upsampling=settings.trainable_upsampling,
                        weight_decay=settings.weight_decay,
                        batch_norm_decay=settings.batch_norm_decay)
    train_arch = arch_class(spec.num_classes, is_training=True, **arch_options)
    eval_arch = arch_class(spec.num_classes, is_training=False, **arch_options)
    with tf.variable_scope(tf.get_variable_scope(), reuse=tf.AUTO_REUSE):
        train_logits = train_arch.build_net(feeder.images)
        eval_logits = eval_arch.build_net(feeder.images)

    weights = training.class_weights(settings.class_weighting, spec)
    loss = training.segmentation_loss(train_logits, feeder.labels, IGNORE_LABEL, weights)
    global_step = tf.train.get_or_create_global_step()
    drop_steps = training.lr_drop_steps("epochs" if settings.lr_schedule else
                                        "thirds" if settings.decaylr else "constant",
                                        plan.total_steps, plan.steps_per_epoch,
                                        settings.lr_schedule or ())
    lr = training.learning_rate(settings.learnrate, global_step, drop_steps)
    objective = loss + tf.losses.get_regularization_loss()
    train_op = training.make_train_op(objective, global_step, lr, settings.optimizer,
                                      settings.momentum, settings.epsilon,
                                      *training.trainable_pretrained_and_new(train_arch),
                                      difflr=settings.difflr)

    val_loss_sum, val_pixels = training.pixel_cross_entropy(eval_logits, feeder.labels,
                                                            IGNORE_LABEL, weights)
    colorize = lambda labels: colorize_labels_tf(labels, spec.colors, IGNORE_LABEL)  # noqa: E731
    images_summary = tf.summary.merge([
        tf.summary.image("val/input", tf.cast(feeder.images, tf.uint8), IMAGE_SUMMARY_COUNT),
        tf.summary.image("val/prediction", colorize(tf.argmax(eval_logits, axis=-1)),
                         IMAGE_SUMMARY_COUNT),
        tf.summary.image("val/ground_truth", colorize(feeder.labels), IMAGE_SUMMARY_COUNT)])
    return types.SimpleNamespace(
        train_arch=train_arch, global_step=global_step, lr=lr, loss=loss, train_op=train_op,
        train_confusion=training.batch_confusion(train_logits, feeder.labels, spec.num_classes,
                                                 IGNORE_LABEL),
        weights_finite=training.all_finite(tf.global_variables()),
        val_loss_sum=val_loss_sum, val_pixels=val_pixels, images_summary=images_summary,
        val_confusion=training.batch_confusion(eval_logits, feeder.labels, spec.num_classes,
                                               IGNORE_LABEL))


def pretrained_restorer(settings, graph):
    """restore(sess) of the encoder's ImageNet checkpoint, or None for --scratch / resume.

    Built before the run folder exists, so a missing checkpoint leaves no empty folder.
    """
    if settings.scratch or (settings.resume and checkpoint_candidates(settings.resume)):
        return None
    checkpoint_file = fcn_arch.FEATURE_EXTRACTORS[settings.basenet].checkpoint_file
    return fcn_arch.make_pretrained_restorer(
        graph.train_arch, os.path.join(settings.modelspath, checkpoint_file))


def initialise(sess, settings, keeper, restore_pretrained, log):
    """Set every variable: from the run's checkpoint, else ImageNet, else random. Says which."""
    sess.run(tf.global_variables_initializer())
    if settings.resume:
        def skipped(prefix, reason):
            tqdm.write(log.event("skip_checkpoint", path=prefix, reason=reason))
        restored = keeper.restore_newest(sess, on_skip=skipped)
        if restored:
            return restored
    if restore_pretrained:
        restore_pretrained(sess)
        return "imagenet"
    return "scratch"


# --- Validation and logging -------------------------------------------------------------------

def scalar_summary(**tagged_values):
    return tf.Summary(value=[tf.Summary.Value(tag=tag, simple_value=float(value))
                             for tag, value in tagged_values.items()])


def validate(sess, graph, feeder, spec):
    """(loss, mIoU, image summary) over one pass of the validation subset."""
    feeder.start_validation(sess)
    val_feed = {feeder.handle: feeder.val_handle(sess)}
    confusion = np.zeros((spec.num_classes, spec.num_classes), np.int64)
    loss_sum = pixels = 0.0
    images_summary = None
    fetches = [graph.val_loss_sum, graph.val_pixels, graph.val_confusion]
    while True:
        try:
            if images_summary is None:  # the first batch also draws its pictures
                *values, images_summary = sess.run(fetches + [graph.images_summary], val_feed)
            else:
                values = sess.run(fetches, val_feed)
        except tf.errors.OutOfRangeError:
            break
        loss_sum += values[0]
        pixels += values[1]
        confusion += values[2]
    miou = segmentation_metrics(confusion, spec.class_names)["miou"]
    return loss_sum / max(pixels, 1.0), miou, images_summary


class TrainWindow:
    """Loss, confusion and step time summed since the last log line."""

    def __init__(self, num_classes):
        self.num_classes = num_classes
        self.reset()

    def reset(self):
        self.steps, self.loss_sum, self.secs = 0, 0.0, 0.0
        self.confusion = np.zeros((self.num_classes, self.num_classes), np.int64)

    def add(self, loss, confusion, secs):
        self.steps += 1
        self.loss_sum += loss
        self.confusion += confusion
        self.secs += secs


def diverged(what, step, run_dir, last_saved_step):
    """The error of a run whose loss or weights (`what`) stopped being finite at `step`."""
    saved = (f"the last checkpoint ({run_dir}/fcn.ckpt, step {last_saved_step}) is kept"
             if last_saved_step is not None else "no checkpoint had been saved")
    return SegMentorError(f"{what} at step {step}: training diverged and stopped without "
                          f"saving; {saved}; try a lower --learnrate")


# --- The loop ------------------------------------------------------------------------------------

class TrainingLoop:
    """Steps until the planned step or a stop signal; logs, validates and saves on the way."""

    def __init__(self, sess, graph, feeder, spec, plan, keeper, log, events):
        self.sess, self.graph, self.feeder, self.spec, self.plan = sess, graph, feeder, spec, plan
        self.keeper, self.log, self.events = keeper, log, events
        self.step = int(sess.run(graph.global_step))
        self.last_saved_step = self.step or None  # a resumed run starts from a saved step
        self.window = TrainWindow(spec.num_classes)

    def run(self):
        """Train; returns the name of the signal that stopped it, or None when done."""
        plan, graph = self.plan, self.graph
        train_feed = {self.feeder.handle: self.feeder.train_handle(self.sess)}
        with training.StopRequests() as stop, self.feeder.records_errors(), \
                tqdm(total=plan.total_steps, initial=self.step, unit="step",
                     dynamic_ncols=True) as self.bar:
            while self.step < plan.total_steps and not stop.signal_name:
                started = time.perf_counter()
                self.step, loss, confusion = self.sess.run(
                    [graph.train_op, graph.loss, graph.train_confusion], train_feed)
                if not math.isfinite(loss):
                    raise diverged(f"the loss became {loss}", self.step, self.keeper.run_dir,
                                   self.last_saved_step)
                self.window.add(loss, confusion, time.perf_counter() - started)
                self.bar.update()
                last_step = self.step == plan.total_steps
                if self.step % plan.log_every == 0 or last_step:
                    self.log_training()
                if self.step % plan.val_every == 0 or last_step:
                    self.validate()
                snapshot = self.step % plan.snapshot_every == 0 or last_step
                if snapshot or self.step % plan.save_every == 0 or stop.signal_name:
                    self.save(snapshot)
        return stop.signal_name

    def log_training(self):
        window = self.window
        values = dict(step=self.step, epoch=self.step / self.plan.steps_per_epoch,
                      loss=window.loss_sum / window.steps, lr=self.sess.run(self.graph.lr),
                      train_miou=segmentation_metrics(window.confusion,
                                                      self.spec.class_names)["miou"],
                      img_s=window.steps * self.plan.batch_size / window.secs)
        tqdm.write(self.log.write(**values))
        self.bar.set_postfix(loss=f"{values['loss']:.3f}")
        self.events.add_summary(scalar_summary(**{
            "train/loss": values["loss"], "train/lr": values["lr"],
            "train/miou": values["train_miou"], "train/images_per_sec": values["img_s"]}),
            self.step)
        self.events.flush()
        window.reset()

    def validate(self):
        val_loss, val_miou, images = validate(self.sess, self.graph, self.feeder, self.spec)
        tqdm.write(self.log.write(step=self.step, val_loss=val_loss, val_miou=val_miou))
        self.events.add_summary(scalar_summary(**{"val/loss": val_loss, "val/miou": val_miou}),
                                self.step)
        self.events.add_summary(images, self.step)
        self.events.flush()

    def save(self, snapshot):
        if not self.sess.run(self.graph.weights_finite):
            raise diverged("the weights became NaN or Inf", self.step, self.keeper.run_dir,
                           self.last_saved_step)
        self.keeper.save(self.sess, self.step, snapshot=snapshot)
        self.last_saved_step = self.step


def summary_line(run_dir, step, secs):
    val_lines = [line for line in parse_runlog(os.path.join(run_dir, RUNLOG_FILE))
                 if "val_miou" in line and math.isfinite(line["val_miou"])]
    if not val_lines:
        return f"finished {run_dir} at step {step} in {secs / 60:.1f} min"
    best = max(val_lines, key=lambda line: line["val_miou"])
    return (f"finished {run_dir} at step {step} in {secs / 60:.1f} min: val mIoU "
            f"{val_lines[-1]['val_miou']:.3f} (best {best['val_miou']:.3f} at step {best['step']})")


def finish(run_dir, log, step, signal_name, secs):
    """The closing runlog line and console line; a stop signal also sets the exit status."""
    if signal_name:
        log.event("stop", step=step, reason=signal_name)
        print(f"stopped by {signal_name} at step {step} and saved; continue with "
              f"--resume {run_dir}", file=sys.stderr)
        # The exit status of a process ended by that signal: a calling script sees the
        # training did not finish.
        raise SystemExit(128 + signal.Signals[signal_name])
    log.event("done", step=step, secs=round(secs))
    print(summary_line(run_dir, step, secs))


# --- main -----------------------------------------------------------------------------------

def main(args):
    if args.gpu is not None:  # before the first session, which is when TF claims devices
        os.environ["CUDA_VISIBLE_DEVICES"] = str(args.gpu) if args.gpu >= 0 else ""
    settings = run_settings(args)
    spec = load_dataset(settings.dataset, settings.datapath)
    settings.pixels = settings.pixels or spec.default_pixels
    settings.learnrate = settings.learnrate or (SCRATCH_LEARNRATE if settings.scratch
                                                else FINETUNE_LEARNRATE)

    with tf.Graph().as_default():
        tf.set_random_seed(settings.seed)
        feeder = Feeder(spec, settings.datapath, settings.batch_size, settings.pixels,
                        augment=NO_AUGMENT if settings.debug_overfit else AugmentParams(),
                        val_fraction=VAL_FRACTION, seed=settings.seed,
                        debug_overfit=settings.debug_overfit)
        plan = make_plan(settings, feeder.num_train_images)
        graph = build_graph(settings, spec, feeder, plan)
        restore_pretrained = pretrained_restorer(settings, graph)

        run_dir = settings.resume or create_run_dir(settings.runs_dir, settings.basenet)
        if not settings.resume:
            write_runargs(run_dir, saved_settings(settings))
        keeper = CheckpointKeeper(run_dir)
        started = time.perf_counter()
        with RunLog(run_dir) as log:
            with tf.Session() as sess, tf.summary.FileWriter(
                    run_dir, None if settings.resume else sess.graph) as events:
                init = initialise(sess, settings, keeper, restore_pretrained, log)
                tf.get_default_graph().finalize()  # an op made inside the loop would be a leak
                start_step = int(sess.run(graph.global_step))
                # START at the resumed step: TensorBoard drops what a killed run logged after it.
                events.add_session_log(tf.SessionLog(status=tf.SessionLog.START), start_step)
                tqdm.write(log.event(
                    "resume" if settings.resume else "start", step=start_step,
                    total_steps=plan.total_steps, steps_per_epoch=plan.steps_per_epoch,
                    train_images=feeder.num_train_images, val_images=feeder.num_val_images,
                    init=init, run=run_dir))
                loop = TrainingLoop(sess, graph, feeder, spec, plan, keeper, log, events)
                try:
                    signal_name = loop.run()
                except BaseException as err:  # a second Ctrl-C too: the runlog says how it ended
                    log.event("error", step=loop.step, message=str(err) or type(err).__name__)
                    raise
            finish(run_dir, log, loop.step, signal_name, time.perf_counter() - started)


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser()))
