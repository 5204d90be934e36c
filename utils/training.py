"""What a training step is made of: loss, class weights, lr schedule, optimizer.

    weights = class_weights('median-frequency', spec)         # numpy [C] or None
    loss = segmentation_loss(logits, labels, IGNORE_LABEL, weights)
    lr = learning_rate(3e-4, global_step, 'step', total_steps,
                       lr_drop_steps('thirds', total_steps, steps_per_epoch), warmup_steps=0)
    train_op = make_train_op(loss, global_step, lr, 'adam', 0.9, 1e-8,
                             *trainable_pretrained_and_new(arch))

Everything that changes over training is a function of `global_step` inside
the graph, so a resumed run picks up exactly where the checkpoint left off.
Run-folder files live in `utils/run_folder.py`, checkpoints in
`utils/checkpoints.py`, the graph and loop built from these pieces in
`utils/training_loop.py`.
"""
import contextlib
import signal

import numpy as np

from utils.tfcompat import tf  # first: it quiets TensorFlow's import-time logging
from fcn_arch import get_feature_extractor  # noqa: E402
from utils.distribute import sum_over_replicas  # noqa: E402
from utils.errors import SegMentorError  # noqa: E402


# --- Loss -----------------------------------------------------------------------

def pixel_cross_entropy(logits, labels, ignore_label, class_weights=None):
    """(weighted cross-entropy summed over valid pixels, number of valid pixels).

    logits float32 [B, H, W, C], labels int [B, H, W]. Pixels labelled
    `ignore_label` add nothing to either sum. Returning the two sums (not
    their ratio) lets validation average exactly over many batches.
    """
    valid = tf.not_equal(labels, ignore_label)
    # Any class id works under an ignored pixel: its weight is zero anyway.
    safe_labels = tf.where(valid, labels, tf.zeros_like(labels))
    cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe_labels,
                                                                   logits=logits)
    valid = tf.cast(valid, tf.float32)
    weights = valid
    if class_weights is not None:
        weights *= tf.gather(tf.constant(class_weights, tf.float32), safe_labels)
    return tf.reduce_sum(cross_entropy * weights), tf.reduce_sum(valid)


def segmentation_loss(logits, labels, ignore_label, class_weights=None):
    """Mean weighted cross-entropy per valid pixel (0 for a batch with none).

    Dividing by the pixel count rather than the weight sum keeps class
    weighting a real re-weighting: a batch of rare classes does pull harder.
    Built per replica under tf.distribute, it divides by the valid pixels of
    every replica's part of the batch, so the replicas' losses (and gradients)
    sum to those of the whole batch on one device.
    """
    total, num_valid = pixel_cross_entropy(logits, labels, ignore_label, class_weights)
    return total / tf.maximum(sum_over_replicas(num_valid), 1.0)


def batch_confusion(logits, labels, num_classes, ignore_label):
    """int64 [C, C] pixel counts of one batch (rows = truth), ignored pixels left out.

    Counted in the graph so a step fetches C*C numbers instead of two
    [B, H, W] maps; the scores are computed from it by
    `utils.inference.segmentation_metrics`, the one home of the mIoU maths.
    One bincount over the pair index truth * C + prediction, with ignored
    pixels sent to an extra last bin, avoids boolean_mask's gather of a
    dynamic-size copy at every step. Labels must lie in 0..C-1 or be
    `ignore_label` (the feeder checks each record's).
    """
    predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
    labels = tf.cast(labels, tf.int32)
    num_pairs = num_classes * num_classes
    pair_index = tf.where(tf.not_equal(labels, ignore_label),
                          labels * num_classes + predictions,
                          tf.fill(tf.shape(labels), num_pairs))
    counts = tf.math.bincount(tf.reshape(pair_index, [-1]), minlength=num_pairs + 1,
                              maxlength=num_pairs + 1, dtype=tf.int64)
    return tf.reshape(counts[:num_pairs], [num_classes, num_classes])


# --- Class weights (from the dataset's train pixel frequencies) ------------------

def _inverse_frequency(frequencies):
    """w_c = 1 / (C * f_c): rare classes count more, the average pixel weighs 1."""
    present = frequencies > 0
    weights = np.zeros_like(frequencies)
    weights[present] = 1.0 / (present.sum() * frequencies[present])
    return weights


def _median_frequency(frequencies):
    """w_c = median(f) / f_c (Eigen & Fergus 2015; SegNet's CamVid weights)."""
    present = frequencies > 0
    weights = np.zeros_like(frequencies)
    weights[present] = np.median(frequencies[present]) / frequencies[present]
    return weights


# ENet's constant (Paszke et al. 2016): with it the weights span about 1:13 on CamVid,
# against 1:110 for median frequency, which made Building lose half its pixels to the
# rare classes it touches (see the README's CamVid table).
ENET_WEIGHTING_C = 1.02


def _enet(frequencies):
    """w_c = 1 / ln(c + f_c) (ENet's log-damped inverse frequency), scaled so that the
    average training pixel weighs 1 as with inverse frequency."""
    present = frequencies > 0
    share = frequencies / frequencies.sum()
    weights = np.zeros_like(frequencies)
    weights[present] = 1.0 / np.log(ENET_WEIGHTING_C + share[present])
    return weights / np.dot(weights, share)


# A class absent from the training pixels gets weight 0 under every scheme:
# it never appears in a training label, and 1/0 would poison the constant.
CLASS_WEIGHTINGS = {
    "none": None,
    "inverse-frequency": _inverse_frequency,
    "median-frequency": _median_frequency,
    "enet": _enet,
}


def class_weights(method, spec):
    """float64 [num_classes] loss weights of `spec`'s classes, or None for 'none'."""
    weigh = CLASS_WEIGHTINGS[method]
    if weigh is None:
        return None
    if not spec.class_frequencies:
        raise SegMentorError(
            f"dataset {spec.name} has no class frequencies, which --class_weighting {method} "
            f"needs; rerun its converter (it stores them in dataset.json) or use "
            f"--class_weighting none")
    frequencies = np.asarray(spec.class_frequencies, np.float64)
    if frequencies.shape != (spec.num_classes,) or (frequencies < 0).any():
        raise SegMentorError(f"dataset {spec.name} lists {frequencies.size} class frequencies "
                             f"for {spec.num_classes} classes; rerun its converter")
    return weigh(frequencies)


# --- Learning-rate schedule ----------------------------------------------------------

# Each drop divides the learning rate by this factor.
LR_DROP_FACTOR = 10.0

# The default schedule runs this last fraction of training at the lower rate. At a
# constant rate the weights, and the batch-norm moving statistics the eval tower uses,
# keep jumping until the last step: two constant-rate runs of the README recipe on
# `shapes` ended at val mIoU 0.74 and 0.84; with the drop, runs end at their best
# (full-val mIoU 0.83 in three runs).
ANNEAL_FRACTION = 1 / 5


def _no_drops(total_steps, steps_per_epoch, drop_epochs):
    return []


def _drop_for_the_last_part(total_steps, steps_per_epoch, drop_epochs):
    return [round(total_steps * (1 - ANNEAL_FRACTION))]


def _drops_at_thirds(total_steps, steps_per_epoch, drop_epochs):
    return [round(total_steps / 3), round(2 * total_steps / 3)]


def _drops_at_epochs(total_steps, steps_per_epoch, drop_epochs):
    return sorted(round(epoch * steps_per_epoch) for epoch in drop_epochs)


LR_SCHEDULES = {
    "anneal": _drop_for_the_last_part,  # the default
    "constant": _no_drops,        # --constantlr
    "thirds": _drops_at_thirds,   # --decaylr
    "epochs": _drops_at_epochs,   # --lr_schedule EPOCH ...
}


def lr_drop_steps(schedule, total_steps, steps_per_epoch, drop_epochs=()):
    """Global steps from which the learning rate is LR_DROP_FACTOR times lower, ascending."""
    return LR_SCHEDULES[schedule](total_steps, steps_per_epoch, drop_epochs)


# Exponent of the poly policy: DeepLab's and the PSPNet/mmseg recipes' 0.9.
POLY_POWER = 0.9


def _stepwise(base_lr, progress, drop_steps, step):
    """base_lr / LR_DROP_FACTOR**(number of drop steps <= step): one of LR_SCHEDULES' plans."""
    if not drop_steps:
        return tf.constant(base_lr, tf.float32)
    num_drops = tf.add_n([tf.cast(step >= drop, tf.float32) for drop in drop_steps])
    return base_lr * tf.pow(1.0 / LR_DROP_FACTOR, num_drops)


def _poly(base_lr, progress, drop_steps, step):
    """base_lr * (1 - progress)**POLY_POWER: falls ever faster towards 0 at the end."""
    return base_lr * tf.pow(1.0 - progress, POLY_POWER)


def _cosine(base_lr, progress, drop_steps, step):
    """base_lr * (1 + cos(pi * progress)) / 2: half a cosine from base_lr down to 0."""
    return base_lr * 0.5 * (1.0 + tf.cos(np.pi * progress))


# --lr_policy: name -> rate(base_lr, progress, drop_steps, step), every argument but
# base_lr and drop_steps a float32 tensor; progress runs from 0 at the end of warmup
# to 1 at the planned last step.
LR_POLICIES = {
    "step": _stepwise,   # the default: drops at LR_SCHEDULES' steps (--decaylr, ...)
    "poly": _poly,
    "cosine": _cosine,
}


def learning_rate(base_lr, global_step, policy, total_steps, drop_steps=(), warmup_steps=0):
    """float32 scalar: the rate of the step that starts at `global_step`.

    LR_POLICIES[policy], times a linear warmup: step s < warmup_steps runs at
    (s + 1) / warmup_steps of the policy's rate, so the first step already
    moves and step warmup_steps - 1 reaches the full rate. Poly and cosine
    decay over the steps after warmup: the rate at `warmup_steps` is
    `base_lr`, the last step (total_steps - 1) runs just above 0. With the step
    policy a step runs with the rate of the global step it starts from, so the
    first step at a lower rate is exactly `drop_steps[i]`.
    """
    step = tf.cast(global_step, tf.float32)
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = tf.clip_by_value((step - warmup_steps) / decay_steps, 0.0, 1.0)
    rate = LR_POLICIES[policy](base_lr, progress, list(drop_steps), step)
    if warmup_steps:
        rate *= tf.minimum(1.0, (step + 1.0) / warmup_steps)
    return tf.identity(rate, name="learning_rate")


def check_warmup(warmup_steps, total_steps):
    """SegMentorError unless warmup ends before training does."""
    if warmup_steps >= total_steps:
        raise SegMentorError(f"--warmup_steps {warmup_steps} is not shorter than the "
                             f"{total_steps} training steps: lower --warmup_steps or raise "
                             f"--epochs")


# --- Optimizers ----------------------------------------------------------------------

DEFAULT_OPTIMIZER = "adam"
DEFAULT_MOMENTUM = 0.9   # Adam's beta1 (TF's default); SGD's momentum
DEFAULT_EPSILON = 1e-8   # Adam's epsilon (TF's default)

OPTIMIZERS = {
    "adam": lambda lr, momentum, epsilon: tf.train.AdamOptimizer(
        lr, beta1=momentum, epsilon=epsilon),
    # Plain SGD with momentum, as in the FCN paper; epsilon is Adam's alone.
    "momentum": lambda lr, momentum, epsilon: tf.train.MomentumOptimizer(lr, momentum),
    # SGD with Nesterov momentum (the gradient taken at the look-ahead point), the usual
    # choice of from-scratch segmentation recipes with poly or cosine decay.
    "nesterov": lambda lr, momentum, epsilon: tf.train.MomentumOptimizer(lr, momentum,
                                                                         use_nesterov=True),
}

# Batch-norm moving averages keep decay**t of their start value after t steps, and the
# moving variance starts at 1. At slim's 0.997-0.9997 the eval tower normalises with
# (nearly) that start value for thousands of steps: from scratch, depthwise layers have
# variances near 0.02, so validation scores garbage until then; fine-tuning on a new domain
# runs too few steps to forget ImageNet's statistics. 0.9 (PyTorch's default momentum 0.1)
# forgets within ~50 steps and still averages over ~10 batches.
DEFAULT_BATCH_NORM_DECAY = 0.9


def batch_norm_decay_for(net, requested=None):
    """The batch-norm decay a run of `net` trains with: `requested`, else
    DEFAULT_BATCH_NORM_DECAY, and None for a net without batch norm (vgg_16)."""
    if requested is not None:
        return requested  # for a net without batch norm, fcn_arch refuses it in one line
    return DEFAULT_BATCH_NORM_DECAY if get_feature_extractor(net).has_batch_norm else None


# --difflr: how much faster the new decoder layers learn than the pretrained encoder.
DIFFLR_FACTOR = 10.0


def trainable_pretrained_and_new(arch):
    """([trainable encoder variables], [trainable decoder variables]) of a built arch.

    Batch-norm moving averages sit in the encoder mapping but are not trained.
    """
    pretrained, new = arch.get_pretrained_and_new_vars()
    trainable = {variable.op.name for variable in tf.trainable_variables()}
    return ([v for v in pretrained.values() if v.op.name in trainable],
            [v for v in new if v.op.name in trainable])


def make_train_op(loss, global_step, lr, optimizer, momentum, epsilon,
                  pretrained_vars, new_vars, difflr=False):
    """One training step: minimise `loss`, update batch-norm averages, count the step.

    With `difflr` the new variables get a second optimizer whose learning
    rate is DIFFLR_FACTOR times higher. Multiplying their gradients instead
    (DeepLab's gradient multipliers) would do nothing under Adam, which
    divides each gradient by its own running RMS.
    """
    make_optimizer = OPTIMIZERS[optimizer]
    if difflr:
        groups = [(make_optimizer(lr, momentum, epsilon), pretrained_vars),
                  (make_optimizer(lr * DIFFLR_FACTOR, momentum, epsilon), new_vars)]
    else:
        groups = [(make_optimizer(lr, momentum, epsilon), pretrained_vars + new_vars)]
    # Our batch norm leaves its moving-average updates in UPDATE_OPS; running
    # them with every step is what makes the eval tower's statistics right.
    with tf.control_dependencies(tf.get_collection(tf.GraphKeys.UPDATE_OPS)):
        variables = [v for _, group in groups for v in group]
        gradients = dict(zip([v.op.name for v in variables], tf.gradients(loss, variables)))
        apply_ops = []
        for optimizer_object, group in groups:
            pairs = [(gradients[v.op.name], v) for v in group if gradients[v.op.name] is not None]
            if pairs:
                apply_ops.append(optimizer_object.apply_gradients(pairs))
    with tf.control_dependencies(apply_ops):
        return tf.assign_add(global_step, 1, name="train_step")


def all_finite(variables):
    """bool scalar: no NaN or Inf in any of the (floating-point) `variables`.

    Checked before each save, so no checkpoint ever holds a diverged state.
    """
    checks = [tf.reduce_all(tf.is_finite(v)) for v in variables if v.dtype.base_dtype.is_floating]
    return tf.reduce_all(tf.stack(checks)) if checks else tf.constant(True)


# --- Stopping on request -----------------------------------------------------------------

class Interrupted(KeyboardInterrupt):
    """A stop signal (`signal_name`: 'SIGINT', 'SIGTERM') that ended the program where it was."""

    def __init__(self, signal_name):
        super().__init__(signal_name)
        self.signal_name = signal_name


@contextlib.contextmanager
def signals_as_interrupts(signals=(signal.SIGINT, signal.SIGTERM)):
    """Inside the block, SIGINT and SIGTERM raise Interrupted wherever the program is.

    SIGTERM's default is to die at once without a word; as an exception it
    unwinds like Ctrl-C (temporary files removed), and the caller says what
    was kept. The training loop's StopRequests takes over while it runs.
    """
    def interrupt(signum, frame):
        raise Interrupted(signal.Signals(signum).name)

    previous = {signum: signal.signal(signum, interrupt) for signum in signals}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class StopRequests:
    """Turns SIGINT / SIGTERM into a flag the loop checks between steps.

    A signal arriving mid-step would otherwise kill the run before it can
    save; with the flag the loop finishes the step, saves and exits. A second
    signal raises KeyboardInterrupt at once, for a user who will not wait.

        with StopRequests() as stop:
            while ...:
                ...
                if stop.signal_name: save(); break
    """
    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signal_name = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.signal_name:
            raise Interrupted(signal.Signals(signum).name)
        self.signal_name = signal.Signals(signum).name

    def __enter__(self):
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        return False
