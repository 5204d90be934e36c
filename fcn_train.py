"""Train an FCN: `python fcn_train.py --basenet mobilenet_v1 --fcn16 --scratch`.

Every run gets a folder tmp/<YYYYMMDD>_<basenet>__<N> holding `runargs` (the
resolved flags and the step plan), `runlog` (key=value lines), TensorBoard
events and checkpoints; `--resume FOLDER` continues a stopped or crashed run
in place.

main() is the recipe: settings -> data -> step plan -> network, loss, lr
schedule and optimizer in one graph -> run folder -> initialise (resume /
pretrained / scratch) -> loop (step, log, validate, save) -> one summary line.
The pieces live in utils/training_loop.py (plan, graph, loop),
utils/training.py (loss, schedules, optimizers), utils/checkpoints.py and
utils/run_folder.py.
"""
import argparse
import os
import signal
import sys

from utils.tfcompat import session_config, tf  # first: it quiets TensorFlow's import-time logging
import fcn_arch  # noqa: E402
from utils import distribute, training, training_loop  # noqa: E402
from utils.augmentation import NO_AUGMENT, AugmentParams  # noqa: E402
from utils.checkpoints import (CheckpointKeeper, newest_intact, pick_checkpoint,  # noqa: E402
                               remove_unfinished_saves)
from utils.cli import CheckedArgumentParser, add_gpu_flag, bounded, select_gpu  # noqa: E402
from utils.datasets import load_dataset  # noqa: E402
from utils.errors import SegMentorError, run_main  # noqa: E402
from utils.feeder import Feeder  # noqa: E402
from utils.run_folder import HeldRunFolder, create_run_dir, read_runargs, write_runargs  # noqa: E402
from utils.run_settings import PLAN_KEYS, RunSettings  # noqa: E402

# ---- Defaults: the README recipe (mobilenet_v1 FCN16 from scratch on `shapes`), one
# field each of utils/run_settings.py's RunSettings, the object a run's settings travel in.
DEFAULTS = RunSettings()
# Adam steps: random weights need large ones; ImageNet weights are already near a good
# solution, and steps as large would wreck the features being fine-tuned.
SCRATCH_LEARNRATE = 3e-3
FINETUNE_LEARNRATE = 3e-4
# Flags a resumed run may change: where things are on this machine, not what is trained.
RESUME_OVERRIDES = ("gpu", "datapath", "xla", "replicas", "connect_timeout")
# Flags added after runs were made, with the value that does what those runs did: a
# resumed run without them in its runargs gets it.
ADDED_WITH_OLD_BEHAVIOUR = {
    "output_stride": fcn_arch.FEATURE_STRIDE,
    "keep_snapshots": None,  # every snapshot kept
    "init_from": None,
    "afteriter": None,
    "xla": False,
    "replicas": 1,
    "connect_timeout": distribute.DEFAULT_CONNECT_TIMEOUT_SECS,
}
# XLA JIT of the towers (--xla): off by default, since on the CPU where it was measured it
# lost (README, Benchmarks: mobilenet_v1 FCN16 128 px batch 16, 2 cores AVX2 only: 3.8x
# slower per step; XLA's CPU convolutions are not oneDNN's). Untested on GPUs.
DEFAULT_XLA = False

positive_int = bounded(int, low=0, low_inclusive=False)
non_negative_int = bounded(int, low=0)
positive_float = bounded(float, low=0, low_inclusive=False)
non_negative_float = bounded(float, low=0)


# --- Flags ---------------------------------------------------------------------------

def _check_flag_combinations(parser, args):
    changed = sorted(name for name, value in vars(args).items()
                     if value != parser.get_default(name))
    if args.resume:
        extra = [name for name in changed if name not in RESUME_OVERRIDES + ("resume",)]
        if extra:
            parser.error(f"--resume takes every setting from {args.resume}/runargs; besides it "
                         f"only {', '.join('--' + n for n in RESUME_OVERRIDES)} may be given "
                         f"(got --{', --'.join(extra)})")
        return
    schedules = [flag for flag in ("decaylr", "lr_schedule", "constantlr") if getattr(args, flag)]
    if len(schedules) > 1:
        parser.error(f"--{' and --'.join(schedules)} each set the learning-rate schedule: "
                     f"give one")
    if schedules and args.lr_policy != "step":
        parser.error(f"--{schedules[0]} sets the drops of --lr_policy step; --lr_policy "
                     f"{args.lr_policy} has none: drop one of them")
    if args.crop and args.pixels is not None:
        parser.error("--crop trains at the images' own scale and evaluates at native size, so "
                     "--pixels would be unused: drop one of them")
    if not args.crop and not args.crop_pad:
        parser.error("--no-crop_pad is about --crop windows: give --crop HEIGHT WIDTH or drop it")
    if args.lr_schedule and (max(args.lr_schedule) >= args.epochs or any(
            later <= earlier for earlier, later in zip(args.lr_schedule, args.lr_schedule[1:]))):
        parser.error(f"--lr_schedule epochs must increase strictly and lie inside the "
                     f"{args.epochs} --epochs, got {' '.join(f'{e:g}' for e in args.lr_schedule)}")
    if args.scratch and "modelspath" in changed:
        parser.error("--scratch trains from random weights, so --modelspath would be unused")
    if args.init_from and (args.scratch or "modelspath" in changed):
        parser.error(f"--init_from takes the weights from {args.init_from}: drop "
                     f"--{'scratch' if args.scratch else 'modelspath'}")
    if args.afteriter is not None and not args.init_from:
        parser.error("--afteriter picks a snapshot of the --init_from run: give --init_from")
    if args.scratch and args.difflr:
        parser.error("--difflr speeds up the new decoder layers against a pretrained encoder; "
                     "with --scratch every layer is new: drop one of them")
    if args.replicas > 1 and args.gpu is not None:
        parser.error("--gpu picks one GPU, --replicas uses the first N visible ones: drop "
                     "--gpu (set CUDA_VISIBLE_DEVICES to choose which GPUs)")
    if args.optimizer != "adam" and "epsilon" in changed:
        parser.error(f"--epsilon is Adam's; --optimizer {args.optimizer} has none")
    try:
        fcn_arch.check_arch_settings(args.extended_arch, args.basenet, args.output_stride,
                                     args.fcn16, args.fcn8, args.fcn4)
    except SegMentorError as err:
        parser.error(str(err))
    if args.batch_norm_decay is not None and not fcn_arch.get_feature_extractor(
            args.basenet).has_batch_norm:
        parser.error(f"--basenet {args.basenet} has no batch norm: drop --batch_norm_decay")
    for name in ("scale_range", "stretch_range"):
        low, high = getattr(args, name)
        if low > high:
            parser.error(f"--{name} LOW HIGH needs LOW <= HIGH, got {low:g} {high:g}")
    augment_flags = [name for name in ("flip", "scale_range", "stretch_range", "photometric")
                     if name in changed]
    if args.debug_overfit and augment_flags:
        parser.error(f"--debug_overfit trains without augmentation, so "
                     f"--{', --'.join(augment_flags)} would be unused")


def build_parser():
    parser = CheckedArgumentParser(
        prog="fcn_train.py", check=_check_flag_combinations,
        description="Train an FCN on a segmentation dataset. Each run gets a folder "
                    "<runs_dir>/<YYYYMMDD>_<basenet>__<N> with runargs, runlog, TensorBoard "
                    "events and checkpoints.")
    net = parser.add_argument_group("network")
    net.add_argument("--basenet", choices=list(fcn_arch.FEATURE_EXTRACTORS),
                     default=DEFAULTS.basenet,
                     help="feature extractor (encoder; default: %(default)s)")
    net.add_argument("--fcn16", action="store_true",
                     help="add the stride-16 skip (FCN16; FCN-family decoders only)")
    net.add_argument("--fcn8", action="store_true",
                     help="skips down to stride 8 (FCN8; FCN-family decoders only)")
    net.add_argument("--fcn4", action="store_true",
                     help="skips down to stride 4 (FCN4; FCN-family decoders only)")
    net.add_argument("--trainable_upsampling", action="store_true",
                     help="learn the upsampling kernels (they start bilinear either way)")
    net.add_argument("--extended_arch", choices=list(fcn_arch.ARCHS),
                     default=DEFAULTS.extended_arch,
                     help="decoder (default: %(default)s); fcn and fcn_refine take "
                          "--fcn16/--fcn8/--fcn4, the others tap fixed strides")
    net.add_argument("--output_stride", type=int, choices=fcn_arch.OUTPUT_STRIDES,
                     default=DEFAULTS.output_stride,
                     help=f"stride of the encoder output; 16 and 8 turn the later strides "
                          f"into atrous convolution, same variables "
                          f"({', '.join(fcn_arch.ATROUS_NETS)}; default: %(default)s)")
    net.add_argument("--weight_decay", type=non_negative_float, default=DEFAULTS.weight_decay,
                     help="L2 weight decay: adds weight_decay * sum(w^2) / 2 over the "
                          "convolution weights of encoder and decoder (not biases, batch norm, "
                          "MobileNet depthwise weights or learnt upsampling kernels) to the "
                          "loss, through the encoder family's slim arg scope; with --optimizer "
                          "momentum/nesterov that is a decay of lr * weight_decay * w per step, "
                          "with adam it is rescaled per weight (default: the family's own, "
                          "e.g. 4e-05 for the MobileNets)")
    net.add_argument("--batch_norm_decay", type=bounded(float, 0, 1, False, False),
                     default=DEFAULTS.batch_norm_decay,
                     help=f"batch-norm moving-average decay per step, for nets with batch "
                          f"norm (default: {training.DEFAULT_BATCH_NORM_DECAY:g}; see "
                          f"utils/training.py for why)")

    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default=DEFAULTS.dataset,
                      help="dataset name: a built-in one, or one converted into --datapath "
                           "(default: %(default)s)")
    data.add_argument("--datapath", default=DEFAULTS.datapath,
                      help="folder holding <dataset>/*.tfrecords (default: %(default)s)")
    data.add_argument("--pixels", type=positive_int, default=DEFAULTS.pixels,
                      help="training size: the larger side is scaled to it (then --scale_range "
                           "applies), padded to a square; validation the same without "
                           "randomness (default: the dataset's own; not with --crop)")
    data.add_argument("--crop", type=positive_int, nargs=2, metavar=("HEIGHT", "WIDTH"),
                      default=DEFAULTS.crop,
                      help="train on random HEIGHT x WIDTH windows of the images at their own "
                           "scale: --scale_range and --stretch_range apply to the native size, "
                           "padding only where the augmented image is smaller; validation and "
                           "fcn_test.py then run at native size (runargs pixels = 0)")
    data.add_argument("--crop_pad", action=argparse.BooleanOptionalAction,
                      default=DEFAULTS.crop_pad,
                      help="pad --crop windows where the augmented image is smaller; with "
                           "--no-crop_pad the size factor is raised until the image covers "
                           "the window, and an image smaller than the window at native size "
                           "stops training with one error line (the first image is checked "
                           "before the run starts) (default: %(default)s)")
    data.add_argument("--batch_size", type=positive_int, default=DEFAULTS.batch_size,
                      help="images per step (default: %(default)s)")
    data.add_argument("--class_weighting", choices=list(training.CLASS_WEIGHTINGS),
                      default=DEFAULTS.class_weighting,
                      help="loss weight per class, from the dataset's training pixel "
                           "frequencies: 1/f, median(f)/f, or ENet's 1/ln(1.02 + f) "
                           "(default: %(default)s)")
    data.add_argument("--flip", action=argparse.BooleanOptionalAction,
                      default=DEFAULTS.flip,
                      help="random horizontal flips of training images (default: %(default)s)")
    data.add_argument("--scale_range", type=positive_float, nargs=2, metavar=("LOW", "HIGH"),
                      default=list(DEFAULTS.scale_range),
                      help="random size factor of training images, drawn uniformly, on top "
                           "of the --pixels sizing, or of the native size with --crop "
                           "(default: %(default)s; 1 1 = off)")
    data.add_argument("--stretch_range", type=positive_float, nargs=2, metavar=("LOW", "HIGH"),
                      default=list(DEFAULTS.stretch_range),
                      help="random width/height ratio change of training images, area kept "
                           "(default: %(default)s; 1 1 = off)")
    data.add_argument("--photometric", action="store_true",
                      help="random brightness, contrast, saturation and hue of training images "
                           "(slim Inception strengths, see utils/augmentation.py; default: off)")
    data.add_argument("--debug_overfit", type=non_negative_int,
                      default=DEFAULTS.debug_overfit, metavar="N",
                      help="train on the first N training images only, without augmentation: "
                           "train mIoU should approach 1 (0 = off)")

    init = parser.add_argument_group("initialisation")
    init.add_argument("--modelspath", default=DEFAULTS.modelspath,
                      help="folder of the slim ImageNet checkpoints (e.g. "
                           "mobilenet_v1_1.0_224.ckpt); the encoder starts from its file "
                           "(default: %(default)s)")
    init.add_argument("--scratch", action="store_true",
                      help="start from random weights instead of an ImageNet checkpoint")
    init.add_argument("--init_from", metavar="RUNDIR", default=DEFAULTS.init_from,
                      help="start from another run's newest intact checkpoint: the encoder, "
                           "and the decoder when its variables and class count match; steps, "
                           "optimizer and learning-rate schedule start new")
    init.add_argument("--afteriter", type=non_negative_int, default=DEFAULTS.afteriter, metavar="N",
                      help="with --init_from: its snapshot fcn.ckpt_N instead of the newest "
                           "checkpoint")
    init.add_argument("--resume", metavar="RUNDIR", default=DEFAULTS.resume,
                      help="continue the run in RUNDIR from its newest intact checkpoint, "
                           "with its saved runargs")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=positive_int, default=DEFAULTS.epochs,
                       help="passes over the training images (default: %(default)s)")
    optim.add_argument("--optimizer", choices=list(training.OPTIMIZERS),
                       default=DEFAULTS.optimizer,
                       help="update rule: adam, SGD with momentum, or SGD with Nesterov "
                            "momentum (--momentum; weight decay: --weight_decay) "
                            "(default: %(default)s)")
    optim.add_argument("--learnrate", type=positive_float, default=DEFAULTS.learnrate,
                       help=f"initial learning rate (default: {SCRATCH_LEARNRATE:g} with "
                            f"--scratch, {FINETUNE_LEARNRATE:g} from ImageNet weights)")
    optim.add_argument("--momentum", type=bounded(float, 0, 1, high_inclusive=False),
                       default=DEFAULTS.momentum,
                       help="Adam's beta1, or SGD's momentum (default: %(default)s)")
    optim.add_argument("--epsilon", type=positive_float, default=DEFAULTS.epsilon,
                       help="Adam's epsilon (default: %(default)s)")
    optim.add_argument("--difflr", action="store_true",
                       help=f"new decoder layers learn {training.DIFFLR_FACTOR:g}x faster "
                            f"than the ImageNet-pretrained encoder (not with --scratch)")
    optim.add_argument("--lr_policy", choices=list(training.LR_POLICIES),
                       default=DEFAULTS.lr_policy,
                       help=f"learning-rate shape over the run: step (drops, see --constantlr, "
                            f"--decaylr, --lr_schedule), poly ((1 - t)^{training.POLY_POWER:g}) "
                            f"or cosine, t going 0 to 1 from the end of warmup to the last "
                            f"step (default: %(default)s)")
    optim.add_argument("--warmup_steps", type=non_negative_int,
                       default=DEFAULTS.warmup_steps, metavar="STEPS",
                       help="raise the learning rate linearly over the first STEPS steps "
                            "(step s at (s+1)/STEPS of it), any --lr_policy; must be fewer "
                            "than the run's steps (default: %(default)s)")
    optim.add_argument("--constantlr", action="store_true",
                       help=f"keep the learning rate constant (default: divide it by "
                            f"{training.LR_DROP_FACTOR:g} for the last "
                            f"{training.ANNEAL_FRACTION * 100:g}%% of training)")
    optim.add_argument("--decaylr", action="store_true",
                       help=f"divide the learning rate by {training.LR_DROP_FACTOR:g} at 1/3 "
                            f"and 2/3 of training")
    optim.add_argument("--lr_schedule", type=positive_float, nargs="+", metavar="EPOCH",
                       default=DEFAULTS.lr_schedule, help=f"divide the learning rate by "
                                          f"{training.LR_DROP_FACTOR:g} at each of these "
                                          f"epochs (increasing)")

    run = parser.add_argument_group("run")
    run.add_argument("--log_every", type=positive_int, default=DEFAULTS.log_every,
                     metavar="STEPS", help="runlog / console / TensorBoard line every STEPS "
                          "(default: %(default)s)")
    run.add_argument("--val_every", type=positive_int, default=DEFAULTS.val_every, metavar="STEPS",
                     help=f"validate every STEPS (default: once per epoch, at least "
                          f"{training_loop.MIN_DEFAULT_EVERY_STEPS} steps apart)")
    run.add_argument("--val_fraction", type=bounded(float, 0, 1, low_inclusive=False),
                     default=DEFAULTS.val_fraction, metavar="F",
                     help="validate on every round(1/F)-th val image (1 = all of them, scored "
                          "as fcn_test.py does; default: %(default)s)")
    run.add_argument("--keep_best", action="store_true",
                     help="also keep fcn.ckpt_best, the state of the best val mIoU so far "
                          "(fcn_test.py --best scores it)")
    run.add_argument("--save_every", type=positive_int,
                     default=DEFAULTS.save_every, metavar="STEPS",
                     help="overwrite the latest checkpoint fcn.ckpt every STEPS "
                          f"(default: once per epoch, at least "
                          f"{training_loop.MIN_DEFAULT_EVERY_STEPS} steps apart)")
    run.add_argument("--snapshot_every", type=positive_int,
                     default=DEFAULTS.snapshot_every, metavar="STEPS",
                     help=f"keep a snapshot fcn.ckpt_<step> every STEPS (default: "
                          f"{training_loop.DEFAULT_SNAPSHOTS_PER_RUN} per run)")
    run.add_argument("--keep_snapshots", type=non_negative_int, default=DEFAULTS.keep_snapshots,
                     metavar="N", help="keep the newest N snapshots (model only, no optimizer "
                                       "state), delete older ones (default: %(default)s; 0 = none)")
    run.add_argument("--runs_dir", default=DEFAULTS.runs_dir,
                     help="where new run folders are made (default: %(default)s)")
    run.add_argument("--seed", type=int, default=DEFAULTS.seed,
                     help="seed of weights, data order and augmentation (default: %(default)s)")
    run.add_argument("--xla", action=argparse.BooleanOptionalAction, default=DEFAULTS.xla,
                     help=f"compile each tower and its loss with XLA's JIT (the confusion "
                          f"counts and optimizer updates stay TensorFlow ops); may differ by "
                          f"machine, so --resume may change it; one replica per process, "
                          f"not with --replicas 2+ (default: "
                          f"{'on' if DEFAULT_XLA else 'off'}: it made the step 3.8x slower on "
                          f"a 2-core AVX2 CPU)")
    add_gpu_flag(run)

    scale = parser.add_argument_group(
        "scale out", "data-parallel training with tf.distribute; several machines: set "
                     "TF_CONFIG on each (README, Scale out)")
    scale.add_argument("--replicas", type=positive_int, default=DEFAULTS.replicas, metavar="N",
                       help="train on N local devices at once (the first N GPUs, or N logical "
                            "CPU devices without GPUs; with TF_CONFIG: per worker): "
                            "--batch_size stays the global batch, split evenly over every "
                            "replica, the gradients are summed over replicas (all-reduce); "
                            "batch norm normalises with each replica's own part of the batch "
                            "(its moving averages take the replicas' mean) "
                            "(default: %(default)s)")
    scale.add_argument("--connect_timeout", type=positive_float,
                       default=DEFAULTS.connect_timeout, metavar="SECS",
                       help="with TF_CONFIG: how long a worker waits for every other worker "
                            "to answer before it stops with an error (default: %(default)g)")
    return parser


# --- Settings ----------------------------------------------------------------------------

def run_settings(args):
    """The RunSettings of this run: the flags with their defaults resolved, or for
    --resume the saved runargs (step plan included) and the RESUME_OVERRIDES given."""
    if args.resume:
        return _resumed_settings(args)
    return RunSettings.from_runargs(dict(
        vars(args),
        learnrate=args.learnrate or (SCRATCH_LEARNRATE if args.scratch else FINETUNE_LEARNRATE),
        batch_norm_decay=training.batch_norm_decay_for(args.basenet, args.batch_norm_decay),
        xla=DEFAULT_XLA if args.xla is None else args.xla))


def _resumed_settings(args):
    runargs = {**ADDED_WITH_OLD_BEHAVIOUR, **read_runargs(args.resume)}
    expected = set(vars(args)) - {"resume"} | set(PLAN_KEYS)
    missing = sorted(expected - set(runargs))
    if missing:
        raise SegMentorError(f"{args.resume}/runargs lacks {', '.join(missing)}: it was "
                             f"written by another version of fcn_train.py; start a new run")
    overrides = {name: getattr(args, name) for name in RESUME_OVERRIDES
                 if getattr(args, name) != build_parser().get_default(name)}
    return RunSettings.from_runargs({**runargs, **overrides, "resume": args.resume})


def augment_params(settings):
    if settings.debug_overfit:
        return NO_AUGMENT
    return AugmentParams(flip=settings.flip, scale_range=settings.scale_range,
                         stretch_range=settings.stretch_range, photometric=settings.photometric)


# --- main -----------------------------------------------------------------------------------

def main(args):
    select_gpu(args.gpu)  # before the first session, which is when TF claims devices
    with HeldRunFolder() as run_folder:
        try:
            with training.signals_as_interrupts():
                train(args, run_folder)
        except training.Interrupted as stop:  # outside the loop, which saves and says so itself
            print(training_loop.interrupted_line(stop.signal_name, run_folder.path),
                  file=sys.stderr)
            raise SystemExit(128 + signal.Signals[stop.signal_name]) from None


def resume_point(run_dir, is_chief=True):
    """(newest intact checkpoint or None, [(damaged prefix, reason)]) of a run folder,
    after sweeping what killed writes left there (the chief, which holds it, only:
    other workers of a multi-worker run just read)."""
    if is_chief:
        remove_unfinished_saves(run_dir)
    skipped = []
    resume_from = newest_intact(run_dir, on_skip=lambda *damaged: skipped.append(damaged))
    if resume_from is None and is_chief:
        print(f"{run_dir} holds no checkpoint: its start failed or was interrupted before the "
              f"first save; training it from step 0", file=sys.stderr)
    return resume_from, skipped


def start_replicas(settings):
    """The DataParallel (utils/distribute.py) of --replicas and TF_CONFIG; checked first."""
    if settings.xla and settings.replicas > 1:
        # tf.distribute builds each local replica's tower in its own thread, and those
        # threads take turns inside the towers (at the batch-norm updates), while XLA's
        # jit scope is one graph-wide setting: entered and left out of order, it leaks
        # onto the ops after the towers (the confusion counts), which XLA cannot compile.
        raise SegMentorError(f"--xla compiles the towers of one replica per process; with "
                             f"--replicas {settings.replicas} drop --xla (or train with one "
                             f"replica per worker through TF_CONFIG)")
    cluster = distribute.cluster_from_tf_config(os.environ.get(distribute.TF_CONFIG_VAR))
    parallel = distribute.start(settings.replicas, settings.batch_size, cluster,
                                settings.connect_timeout)
    if parallel.num_replicas > 1:
        print(f"data-parallel: {parallel.describe()}, batch {settings.batch_size} split "
              f"{settings.batch_size // parallel.num_replicas} per replica", file=sys.stderr)
    return parallel


def train(args, run_folder):
    """The run; `run_folder` (a HeldRunFolder) gets the run folder as soon as there is one."""
    clock = training_loop.PhaseClock()  # the runlog's closing line splits this run's time
    settings = run_settings(args)
    parallel = start_replicas(settings)  # before any session: it fixes the devices
    chief = parallel.is_chief  # only the chief writes in the run folder
    spec = load_dataset(settings.dataset, settings.datapath)
    # A --crop run trains at native scale and evaluates at native size: pixels 0, which
    # fcn_test's "as in training" then also means.
    settings = settings.replace(
        pixels=0 if settings.crop else (settings.pixels or spec.default_pixels))
    resume_from, skipped_checkpoints = None, []
    if settings.resume:  # the step is needed now: the data stream starts from it
        if chief:
            run_folder.hold(settings.resume)
        resume_from, skipped_checkpoints = resume_point(settings.resume, chief)
    # Another run's checkpoint, picked now so a missing one fails before any work.
    init_from = (pick_checkpoint(settings.init_from, settings.afteriter)
                 if settings.init_from and not resume_from else None)
    if resume_from and resume_from.step >= settings.plan.total_steps:
        print(f"{settings.resume} already finished at step {resume_from.step} of "
              f"{settings.plan.total_steps}: nothing to resume")
        return

    with tf.Graph().as_default():
        tf.set_random_seed(settings.seed)
        feeder = Feeder(spec, settings.datapath, settings.batch_size, settings.pixels,
                        augment=augment_params(settings), val_fraction=settings.val_fraction,
                        seed=settings.seed, debug_overfit=settings.debug_overfit,
                        start_step=resume_from.step if resume_from else 0,
                        crop=settings.crop, crop_pad=settings.crop_pad,
                        pad_rgb=fcn_arch.pad_rgb(settings.basenet),
                        num_workers=parallel.num_workers, worker_index=parallel.worker_index)
        plan = (training_loop.resumed_plan(settings, feeder.num_train_images, settings.resume)
                if settings.resume else training_loop.make_plan(settings, feeder.num_train_images))
        settings = settings.replace(plan=plan)
        graph = training_loop.build_graph(settings, spec, feeder.images, feeder.labels,
                                          plan.lr_drop_steps, plan.total_steps, parallel)
        # Checked before the run folder is made, so a missing or mismatched checkpoint
        # leaves no empty folder.
        weights = None if resume_from else training_loop.start_weights(
            settings, graph.train_arch, init_from)

        run_dir = settings.resume or (create_run_dir(settings.runs_dir, settings.basenet)
                                      if chief else None)
        if not settings.resume and chief:
            run_folder.hold(run_dir)
            write_runargs(run_dir, {**settings.as_runargs(), **weights.as_runargs()})
        keeper = run_dir and CheckpointKeeper(run_dir, graph.model_variables,
                                              settings.keep_snapshots,
                                              verified=resume_from and resume_from.prefix)
        with training_loop.run_outputs(run_dir if chief else None,
                                       None if settings.resume else tf.get_default_graph()) \
                as (log, events), distribute.lost_worker_errors(parallel, run_dir):
            for prefix, reason in skipped_checkpoints if log else ():
                print(log.event("skip_checkpoint", path=prefix, reason=reason))
            with tf.Session(parallel.session_target,
                            config=parallel.session_config(session_config())) as sess:
                init = training_loop.initialise(sess, keeper, resume_from, weights,
                                                graph.copy_first_replica)
                tf.get_default_graph().finalize()  # an op made inside the loop would be a leak
                loop = training_loop.TrainingLoop(sess, graph, feeder, spec, plan, keeper, log,
                                                  events, keep_best=settings.keep_best,
                                                  clock=clock)
                if log:
                    loop.log_start("resume" if settings.resume else "start", init, run_dir)
                if init_from and log:  # which parts of the other run were taken
                    print(log.event("init_from", checkpoint=weights.checkpoint,
                                    step=weights.step, decoder=weights.decoder))
                signal_name = loop.run()
            training_loop.finish(run_dir, log, loop.step, plan.total_steps, signal_name, clock)


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser()))
