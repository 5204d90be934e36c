"""A training run step by step: its step plan, its graph, validation, logging and the loop.

    plan = make_plan(settings, num_train_images)    # StepPlan, saved in runargs
    graph = build_graph(settings, spec, images, labels, plan.lr_drop_steps, plan.total_steps)
    init = initialise(sess, keeper, resume_from, start_weights(settings, arch, init_from),
                      graph.copy_first_replica)
    loop = TrainingLoop(sess, graph, feeder, spec, plan, keeper, log, events, keep_best=True)
    loop.log_start('start', init, run_dir); signal_name = loop.run()
    finish(run_dir, log, loop.step, plan.total_steps, signal_name, clock)
    interrupted_line(signal_name, run_dir)     # what a signal outside the loop leaves

`settings` is a run's utils.run_settings.RunSettings (basenet, learnrate,
optimizer, ...), passed in by fcn_train.py; nothing here parses or reads flags. utils/train_bench.py times this same graph and the
same per-step fetches.
"""
import collections
import contextlib
import dataclasses
import math
import os
import signal
import sys
import threading
import time

import numpy as np
from tqdm import tqdm

from utils.tfcompat import tf  # first: it quiets TensorFlow's import-time logging
import fcn_arch  # noqa: E402
from utils import distribute, training  # noqa: E402
from utils.checkpoints import checkpoint_candidates, saved_step  # noqa: E402
from utils.labels import IGNORE_LABEL  # noqa: E402
from utils.errors import SegMentorError  # noqa: E402
from utils.files import disk_full_errors, is_disk_full  # noqa: E402
from utils.inference import segmentation_metrics  # noqa: E402
from utils.run_folder import RUNLOG_FILE, RunLog, parse_runlog  # noqa: E402
from utils.run_settings import StepPlan, read_run_settings  # noqa: E402
from utils.visualization import colorize_labels_tf  # noqa: E402

# Snapshots by default: this many over the run (a quarter of it apart), so disk use is
# bounded whatever the length: the README job's folder (mobilenet_v1) is fcn.ckpt 38.7 MB
# + 4 snapshots of 12.9 MB + ~7 MB of events = ~98 MB; ten would take it to ~175 MB.
DEFAULT_SNAPSHOTS_PER_RUN = 4
IMAGE_SUMMARY_COUNT = 3  # validation images shown in TensorBoard
# Validation and saves default to once per epoch, but no more often than this: an
# epoch of --debug_overfit 4 at batch 4 is one step, and validating CamVid after
# every step took 5 times as long as the step itself.
MIN_DEFAULT_EVERY_STEPS = 25


# --- The step plan -----------------------------------------------------------------------

def _lr_schedule_name(settings):
    """The LR_SCHEDULES entry of the step policy's drops; poly and cosine have none."""
    if settings.lr_policy != "step":
        return "constant"
    if settings.lr_schedule:
        return "epochs"
    if settings.decaylr:
        return "thirds"
    return "constant" if settings.constantlr else "anneal"


def make_plan(settings, num_train_images):
    """The StepPlan of a new run: from its settings and the training set's size.

    SegMentorError when the lr warmup would not end before training does.
    """
    steps_per_epoch = math.ceil(num_train_images / settings.batch_size)
    total_steps = settings.epochs * steps_per_epoch
    training.check_warmup(settings.warmup_steps, total_steps)
    return StepPlan(
        train_images=num_train_images,
        batch_size=settings.batch_size,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        lr_drop_steps=tuple(training.lr_drop_steps(_lr_schedule_name(settings), total_steps,
                                                   steps_per_epoch, settings.lr_schedule or ())),
        log_every=settings.log_every,
        val_every=settings.val_every or max(steps_per_epoch, MIN_DEFAULT_EVERY_STEPS),
        save_every=settings.save_every or max(steps_per_epoch, MIN_DEFAULT_EVERY_STEPS),
        snapshot_every=settings.snapshot_every
        or max(1, math.ceil(total_steps / DEFAULT_SNAPSHOTS_PER_RUN)))


def resumed_plan(settings, num_train_images, run_dir):
    """The StepPlan saved with a resumed run; SegMentorError if its training set changed size
    (the data stream, epochs and schedule would no longer match the run's first part)."""
    plan = settings.plan
    if num_train_images != plan.train_images:
        raise SegMentorError(
            f"dataset {settings.dataset} now has {num_train_images} training images, but "
            f"{run_dir} was planned for {plan.train_images}; resume with the records it "
            f"trained on (--datapath), or start a new run")
    return plan


# --- The graph ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TrainGraph:
    """The tensors of the training graph: a train tower and an eval tower sharing variables."""
    train_arch: fcn_arch.BaseFcnArch
    global_step: tf.Variable
    lr: tf.Tensor                 # the rate of the step that starts at `global_step`
    loss: tf.Tensor               # mean cross-entropy per valid pixel of the train batch
    train_op: tf.Tensor           # one step; evaluates to the new global step
    train_confusion: tf.Tensor    # int64 [C, C] of the train batch
    eval_logits: tf.Tensor        # [B, H, W, C], eval tower
    weights_finite: tf.Tensor
    val_loss_sum: tf.Tensor
    val_pixels: tf.Tensor
    val_confusion: tf.Tensor
    images_summary: tf.Tensor
    model_variables: tuple        # what snapshots hold: all but the optimizer's variables
    copy_first_replica: tf.Operation  # run after a restore (utils.distribute)

    def step_fetches(self):
        """What one training step fetches. `lr` comes from the same run as the step,
        so it is the rate that step used."""
        return dict(step=self.train_op, loss=self.loss, confusion=self.train_confusion,
                    lr=self.lr)


def xla_scope(enabled):
    """With `enabled`, XLA compiles the ops made inside and (tf.gradients follows the
    forward ops' scope) their gradients; otherwise nothing changes. Used around each
    tower and its loss only: the confusion counts (a bincount, whose output size XLA
    must know when compiling) and the optimizer's updates stay TensorFlow ops, which is
    why a global JIT setting fails on this graph."""
    return tf.xla.experimental.jit_scope() if enabled else contextlib.nullcontext()


def build_graph(settings, spec, images, labels, lr_drop_steps, total_steps,
                parallel=distribute.ONE_DEVICE):
    """Train tower, eval tower (shared variables), loss, lr schedule and train op.

    images float32 [B, H, W, 3] RGB 0..255, labels int32 [B, H, W] (IGNORE_LABEL
    where unknown), e.g. a Feeder's. The lr follows settings.lr_policy with
    settings.warmup_steps over the plan's `total_steps` and `lr_drop_steps`; each tower
    with its loss is XLA-compiled when settings.xla.
    `parallel` (utils.distribute): with a DataParallel, each replica's train tower
    gets its part of the batch and the step applies the summed gradients; loss
    and train confusion are the whole (global) batch's. The eval tower runs
    on the whole batch in one place, as on one device.
    """
    train_arch = fcn_arch.arch_from_settings(settings, spec.num_classes, is_training=True)
    eval_arch = fcn_arch.arch_from_settings(settings, spec.num_classes, is_training=False)
    weights = training.class_weights(settings.class_weighting, spec)

    def train_tower(images, labels):
        images, labels = parallel.local_part(images), parallel.local_part(labels)
        with tf.variable_scope(tf.get_variable_scope(), reuse=tf.AUTO_REUSE), \
                xla_scope(settings.xla):
            logits = train_arch.build_net(images)
            loss = training.segmentation_loss(logits, labels, IGNORE_LABEL, weights)
        return dict(loss=loss, confusion=training.batch_confusion(
            logits, labels, spec.num_classes, IGNORE_LABEL))

    with parallel.scope():
        tower = parallel.run(train_tower, images, labels)
        with tf.variable_scope(tf.get_variable_scope(), reuse=tf.AUTO_REUSE), \
                xla_scope(settings.xla):
            eval_logits = eval_arch.build_net(images)
            val_loss_sum, val_pixels = training.pixel_cross_entropy(eval_logits, labels,
                                                                    IGNORE_LABEL, weights)
        global_step = tf.train.get_or_create_global_step()
        lr = training.learning_rate(settings.learnrate, global_step, settings.lr_policy,
                                    total_steps, lr_drop_steps, settings.warmup_steps)
        model_variables = tuple(tf.global_variables())  # the optimizer's slots come next

        def train_step(loss):
            # The regularization losses are made once per process, with the variables,
            # and read the first local replica's copies: only that replica's gradient
            # sees them, and each worker's first replica carries that worker's share.
            objective = loss + parallel.worker_share() * tf.losses.get_regularization_loss()
            return training.make_train_op(objective, global_step, lr, settings.optimizer,
                                          settings.momentum, settings.epsilon,
                                          *training.trainable_pretrained_and_new(train_arch),
                                          difflr=settings.difflr)

        train_op = parallel.new_value(parallel.run(train_step, tower["loss"]))
        loss, train_confusion = parallel.sum(tower["loss"]), parallel.sum(tower["confusion"])

    colorize = lambda classes: colorize_labels_tf(classes, spec.colors, IGNORE_LABEL)  # noqa: E731
    images_summary = tf.summary.merge([
        tf.summary.image("val/input", tf.cast(images, tf.uint8), IMAGE_SUMMARY_COUNT),
        tf.summary.image("val/prediction", colorize(tf.argmax(eval_logits, axis=-1)),
                         IMAGE_SUMMARY_COUNT),
        tf.summary.image("val/ground_truth", colorize(labels), IMAGE_SUMMARY_COUNT)])
    return TrainGraph(
        train_arch=train_arch, global_step=global_step, lr=lr, loss=loss, train_op=train_op,
        train_confusion=train_confusion,
        eval_logits=eval_logits, weights_finite=training.all_finite(tf.global_variables()),
        val_loss_sum=val_loss_sum, val_pixels=val_pixels,
        val_confusion=training.batch_confusion(eval_logits, labels, spec.num_classes,
                                               IGNORE_LABEL),
        images_summary=images_summary, model_variables=model_variables,
        copy_first_replica=parallel.copy_first_replica())


# --- Initialisation ----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class StartWeights:
    """Where a new run's weights come from, before its first step.

    restore: fn(sess) run after the global initializer, None for random weights.
    checkpoint: absolute path of the checkpoint restored (None from scratch).
    step: that checkpoint's training step (another run's), else None.
    decoder: 'restored', or 'fresh (why)' when the decoder starts from its initializers.
    """
    restore: object
    checkpoint: str | None
    step: int | None
    decoder: str

    def as_runargs(self):
        """What runargs records (fcn_test.py prints it)."""
        return dict(init_checkpoint=self.checkpoint, init_step=self.step,
                    init_decoder=self.decoder)

    @property
    def label(self):
        """The runlog's `init=` value."""
        return self.checkpoint or "scratch"


def start_weights(settings, arch, init_from=None):
    """The StartWeights of a new run: another run's checkpoint `init_from` (a Checkpoint,
    for --init_from), else the encoder's ImageNet checkpoint in --modelspath, else
    (--scratch) random. Every check happens now, before anything is written."""
    if init_from:
        trained_with = read_run_settings(settings.init_from).basenet
        if trained_with != arch.net:
            raise SegMentorError(f"{settings.init_from} was trained with --basenet "
                                 f"{trained_with}, not {arch.net}: pass --basenet "
                                 f"{trained_with}, or start from a run of {arch.net}")
        restore, decoder = fcn_arch.make_run_restorer(arch, init_from.prefix)
        return StartWeights(restore, os.path.abspath(init_from.prefix), init_from.step, decoder)
    if settings.scratch:
        return StartWeights(None, None, None, "fresh")
    checkpoint = os.path.join(settings.modelspath,
                              fcn_arch.FEATURE_EXTRACTORS[arch.net].checkpoint_file)
    return StartWeights(fcn_arch.make_pretrained_restorer(arch, checkpoint),
                        os.path.abspath(checkpoint), None, "fresh")


def initialise(sess, keeper, resume_from, weights, copy_first_replica=None):
    """Set every variable: from the run's checkpoint `resume_from`, else as the
    StartWeights `weights` say. Returns which, for the runlog.
    `copy_first_replica`: the TrainGraph's op, run after a restore."""
    sess.run(tf.global_variables_initializer())
    if resume_from:
        full = keeper.restore(sess, resume_from.prefix)
        restored = (resume_from.prefix if full else
                    f"{resume_from.prefix} (a snapshot: model only, fresh optimizer state)")
    elif weights.restore:
        weights.restore(sess)
        restored = weights.label
    else:
        return weights.label
    if copy_first_replica is not None:
        sess.run(copy_first_replica)
    return restored


# --- Errors a user can fix ---------------------------------------------------------------

@contextlib.contextmanager
def out_of_memory_errors(batch_size):
    """An out-of-memory error inside `sess.run` as one SegMentorError line saying what to lower."""
    try:
        yield
    except tf.errors.ResourceExhaustedError as err:
        if is_disk_full(err):  # TF reports a full disk with the same error class
            raise
        raise SegMentorError(f"out of memory with --batch_size {batch_size}; lower "
                             f"--batch_size or --pixels") from None


@contextlib.contextmanager
def event_file_disk_errors(run_dir):
    """A full disk under TensorBoard's event writer as one SegMentorError line.

    TF writes events from its own thread; when the file cannot grow, that
    thread logs an error and dies with a traceback, and the main thread gets
    the same error at its next flush. The main thread's report is the one
    kept: the writer thread's two are dropped.
    """
    logger = tf.get_logger()

    def thread_report(record):
        return not (record.getMessage().startswith("EventFileWriter writer thread error") and
                    any(is_disk_full(Exception(arg)) for arg in record.args or ()))

    def thread_death(args, previous=threading.excepthook):
        if args.thread is None or args.thread.name != "EventLoggerThread" or \
                not is_disk_full(args.exc_value):
            previous(args)

    logger.addFilter(thread_report)
    threading.excepthook, previous_hook = thread_death, threading.excepthook
    try:
        with disk_full_errors(run_dir, "TensorBoard events"):
            yield
    finally:
        threading.excepthook = previous_hook
        logger.removeFilter(thread_report)


@contextlib.contextmanager
def run_outputs(run_dir, graph=None):
    """(RunLog, TensorBoard writer) of the run folder `run_dir` (events start with `graph`
    unless None), a full disk under either as one line. (None, None) for `run_dir` None:
    a worker of a multi-worker run other than the chief writes nothing."""
    if run_dir is None:
        yield None, None
        return
    with event_file_disk_errors(run_dir), RunLog(run_dir) as log, \
            tf.summary.FileWriter(run_dir, graph) as events:
        yield log, events


# --- Validation and logging ----------------------------------------------------------------

def scalar_summary(**tagged_values):
    return tf.Summary(value=[tf.Summary.Value(tag=tag, simple_value=float(value))
                             for tag, value in tagged_values.items()])


def validate(sess, graph, feeder, spec):
    """(loss, mIoU, image summary) over one pass of the validation subset."""
    val_feed = {feeder.handle: feeder.val_handle(sess)}
    confusion = np.zeros((spec.num_classes, spec.num_classes), np.int64)
    loss_sum = pixels = 0.0
    images_summary = None
    fetches = [graph.val_loss_sum, graph.val_pixels, graph.val_confusion]
    with feeder.records_errors("val"):
        for _ in range(feeder.val_batches_per_pass):
            if images_summary is None:  # the first batch also draws its pictures
                *values, images_summary = sess.run(fetches + [graph.images_summary], val_feed)
            else:
                values = sess.run(fetches, val_feed)
            loss_sum += values[0]
            pixels += values[1]
            confusion += values[2]
    miou = segmentation_metrics(confusion, spec.class_names)["miou"]
    return loss_sum / max(pixels, 1.0), miou, images_summary


class TrainWindow:
    """Loss, confusion and step time summed since the last log line, and the last lr."""

    def __init__(self, num_classes):
        self.num_classes = num_classes
        self.reset()

    def reset(self):
        self.steps, self.loss_sum, self.secs, self.lr = 0, 0.0, 0.0, None
        self.confusion = np.zeros((self.num_classes, self.num_classes), np.int64)

    def add(self, loss, confusion, lr, secs):
        self.steps += 1
        self.loss_sum += loss
        self.confusion += confusion
        self.lr = lr
        self.secs += secs


def diverged(what, step, run_dir, lastsaved_step):
    """The error of a run whose loss or weights (`what`) stopped being finite at `step`
    (`run_dir` None: a worker other than the chief, which saves for it)."""
    if run_dir is None:
        saved = "the chief keeps its last checkpoint"
    elif lastsaved_step is not None:
        saved = f"the last checkpoint ({run_dir}/fcn.ckpt, step {lastsaved_step}) is kept"
    else:
        saved = "no checkpoint had been saved"
    return SegMentorError(f"{what} at step {step}: training diverged and stopped without "
                          f"saving; {saved}; try a lower --learnrate")


# --- Where the time goes -------------------------------------------------------------------

class PhaseClock:
    """Wall seconds of one training process by phase, for the runlog's closing line.

    `start` runs from the clock's start to the first step (data, graph, session,
    initialisation); `steps` holds the training steps after the first; the first
    one also optimises the graph, so it is a phase of its own; what is in no phase
    is `other` (the loop's own bookkeeping, closing). `step_secs` times the
    benchmark's step time is what the run would take with nothing outside its
    steps: `outside_secs` is the rest.
    """
    PHASES = ("start", "first_step", "steps", "validation", "saves", "logging")

    def __init__(self):
        self.started = time.perf_counter()
        self.secs = collections.Counter()

    @contextlib.contextmanager
    def timing(self, phase):
        started = time.perf_counter()
        if not self.secs:  # the first timed phase ends the start-up
            self.secs["start"] = started - self.started
        try:
            yield
        finally:
            self.secs[phase] += time.perf_counter() - started

    def total_secs(self):
        return time.perf_counter() - self.started

    def split(self):
        """The closing line's timing fields: total, in steps, outside them, and each phase."""
        total = self.total_secs()
        split = dict(secs=round(total), step_secs=round(self.secs["steps"], 1),
                     outside_secs=round(total - self.secs["steps"], 1))
        split.update({f"{phase}_secs": round(self.secs[phase], 1)
                      for phase in self.PHASES if phase != "steps"})
        split["other_secs"] = round(total - sum(self.secs.values()), 1)
        return split


# --- The loop ------------------------------------------------------------------------------

BEST_EVENT = "best_checkpoint"  # runlog event of each fcn.ckpt_best save (step, val_miou)


def best_miou_so_far(runlog_path):
    """val mIoU of the run's fcn.ckpt_best, from its runlog (-inf when there is none).

    The event is written after the checkpoint, so a resumed run never believes
    in a best it does not have.
    """
    if not os.path.exists(runlog_path):
        return -math.inf
    return max((line["val_miou"] for line in parse_runlog(runlog_path)
                if line.get("event") == BEST_EVENT), default=-math.inf)


class TrainingLoop:
    """Steps until the planned step or a stop signal; logs, validates and saves on the way.

    With `keep_best`, each validation that beats the best val mIoU so far
    (across resumes) also replaces fcn.ckpt_best. Without a `log` (a worker
    of a multi-worker run other than the chief) it only trains: the chief
    logs, validates and saves for the whole cluster.
    """

    def __init__(self, sess, graph, feeder, spec, plan, keeper, log, events, keep_best=False,
                 clock=None):
        self.sess, self.graph, self.feeder, self.spec, self.plan = sess, graph, feeder, spec, plan
        self.keeper, self.log, self.events = keeper, log, events
        self.clock = clock or PhaseClock()
        self.step = int(sess.run(graph.global_step))
        self.lastsaved_step = self.step or None  # a resumed run starts from a saved step
        self.best_miou = best_miou_so_far(log.path) if keep_best and log else None
        self.window = TrainWindow(spec.num_classes)
        self.bar = None

    def log_start(self, event, init, run_dir):
        """The runlog's 'start' or 'resume' line; TensorBoard's session start."""
        # START at the resumed step: TensorBoard drops what a killed run logged after it.
        self.events.add_session_log(tf.SessionLog(status=tf.SessionLog.START), self.step)
        tqdm.write(self.log.event(
            event, step=self.step, total_steps=self.plan.total_steps,
            steps_per_epoch=self.plan.steps_per_epoch, train_images=self.plan.train_images,
            val_images=self.feeder.num_val_images, init=init, run=run_dir))

    def run(self):
        """Train; returns the name of the signal that stopped it, or None when done.

        Any error also ends the runlog with an 'error' line.
        """
        try:
            with out_of_memory_errors(self.plan.batch_size):
                if self.log is None:
                    return self._steps()
                with disk_full_errors(self.keeper.run_dir, "TensorBoard events"):
                    return self._steps()
        except BaseException as err:  # a second Ctrl-C too: the runlog says how it ended
            with contextlib.suppress(SegMentorError):  # unless the disk is full
                if self.log is not None:
                    self.log.event("error", step=self.step,
                                   message=str(err) or type(err).__name__)
            raise

    def _steps(self):
        plan, fetches = self.plan, self.graph.step_fetches()
        train_feed = {self.feeder.handle: self.feeder.train_handle(self.sess)}
        with training.StopRequests() as stop, \
                tqdm(total=plan.total_steps, initial=self.step, unit="step",
                     dynamic_ncols=True) as self.bar:
            first_step = True
            while self.step < plan.total_steps and not stop.signal_name:
                started = time.perf_counter()
                with self.clock.timing("first_step" if first_step else "steps"), \
                        self.feeder.records_errors("train"):
                    result = self.sess.run(fetches, train_feed)
                first_step = False
                self.step = int(result["step"])
                if not math.isfinite(result["loss"]):
                    raise diverged(f"the loss became {result['loss']}", self.step,
                                   self.keeper and self.keeper.run_dir, self.lastsaved_step)
                self.window.add(result["loss"], result["confusion"], result["lr"],
                                time.perf_counter() - started)
                self.bar.update()
                if self.log is None:  # not the chief: it trains only
                    continue
                last_step = self.step == plan.total_steps
                if self.step % plan.log_every == 0 or last_step:
                    with self.clock.timing("logging"):
                        self.log_training()
                if self.step % plan.val_every == 0 or last_step:
                    with self.clock.timing("validation"):
                        self.validate()
                snapshot = self.step % plan.snapshot_every == 0 or last_step
                if snapshot or self.step % plan.save_every == 0 or stop.signal_name:
                    with self.clock.timing("saves"):
                        self.save(snapshot)
        return stop.signal_name

    def log_training(self):
        window = self.window
        values = dict(step=self.step, epoch=self.step / self.plan.steps_per_epoch,
                      loss=window.loss_sum / window.steps, lr=window.lr,
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
        if self.best_miou is not None and val_miou > self.best_miou:
            self.keeper.save_best(self.sess)
            self.best_miou = val_miou
            self.log.event(BEST_EVENT, step=self.step, val_miou=val_miou)

    def save(self, snapshot):
        if not self.sess.run(self.graph.weights_finite):
            raise diverged("the weights became NaN or Inf", self.step, self.keeper.run_dir,
                           self.lastsaved_step)
        self.keeper.save(self.sess, self.step, snapshot=snapshot)
        self.lastsaved_step = self.step


# --- The end -------------------------------------------------------------------------------

def summary_line(run_dir, step, split):
    """The console's closing line, from the PhaseClock `split` and the run's runlog."""
    secs = split["secs"]
    timing = (f"{secs / 60:.1f} min ({split['step_secs'] / max(secs, 1e-9):.0%} in training "
              f"steps)")
    val_lines = [line for line in parse_runlog(os.path.join(run_dir, RUNLOG_FILE))
                 if "val_miou" in line and "event" not in line and math.isfinite(line["val_miou"])]
    if not val_lines:
        return f"finished {run_dir} at step {step} in {timing}"
    best = max(val_lines, key=lambda line: line["val_miou"])
    return (f"finished {run_dir} at step {step} in {timing}: val mIoU "
            f"{val_lines[-1]['val_miou']:.3f} (best {best['val_miou']:.3f} at step {best['step']})")


def finish(run_dir, log, step, total_steps, signal_name, clock):
    """The closing runlog line and console line; a stop signal before the last step
    also sets the exit status (one during the last step changes nothing: the run is done).
    The line splits the PhaseClock `clock`'s time into the steps and the rest.
    Without a `log` (a worker other than the chief) the console line only."""
    if log is None:
        if signal_name and step < total_steps:
            print(f"stopped by {signal_name} at step {step}; the chief's run folder keeps "
                  f"its last save: restart every worker with --resume <that folder>",
                  file=sys.stderr)
            raise SystemExit(128 + signal.Signals[signal_name])
        print(f"worker finished at step {step} in {clock.total_secs() / 60:.1f} min (the chief "
              f"wrote the run folder)")
        return
    if signal_name and step < total_steps:
        log.event("stop", step=step, reason=signal_name, **clock.split())
        print(f"stopped by {signal_name} at step {step} and saved; continue with "
              f"--resume {run_dir}", file=sys.stderr)
        # The exit status of a process ended by that signal: a calling script sees the
        # training did not finish.
        raise SystemExit(128 + signal.Signals[signal_name])
    split = clock.split()
    log.event("done", step=step, **split)
    print(summary_line(run_dir, step, split))


def interrupted_line(signal_name, run_dir):
    """One line for a signal outside the loop (which saves and says so itself): what the
    run folder `run_dir` (None: not made yet) keeps."""
    if run_dir is None:
        return f"stopped by {signal_name} before a run folder was made: nothing was kept"
    candidates = checkpoint_candidates(run_dir)
    if not candidates:
        return (f"stopped by {signal_name} before the first save: {run_dir} holds no checkpoint "
                f"(settings and log only); --resume {run_dir} starts it from step 0")
    try:
        step = saved_step(candidates[0])
    except SegMentorError:
        step = None
    return (f"stopped by {signal_name}: {run_dir} keeps {os.path.basename(candidates[0])}"
            f"{f' (step {step})' if step is not None else ''}; continue with --resume {run_dir}")
