"""Segmentation scores from confusion matrices: mIoU, accuracies, bootstrap error bars.

Pure numpy (no TensorFlow), so training's streaming train/val mIoU and
`fcn_test.py` score with the same maths.

    conf = confusion_matrix(labels, predictions, num_classes, IGNORE_LABEL)
    scores = segmentation_metrics(conf, class_names)    # scores["miou"], ...
    low, high = bootstrap_miou_ci(per_image_confusions)  # [N, C, C] -> 95% interval
    diff, low, high = paired_bootstrap_miou_difference(counts_a, counts_b)  # run B - run A

`ScoreAccumulator` does the three over a split, image by image.

Definitions (conf[t, p] counts pixels of true class t predicted as p; pixels
whose label is the ignore label are never counted):
  IoU_c          = conf[c, c] / (truth_c + predicted_c - conf[c, c])
  miou           = mean of IoU_c over the classes that occur, i.e. appear in the
                   truth or in the prediction. A class absent from both has an
                   undefined IoU (0 / 0): it is NaN in `per_class_iou` and left
                   out of the mean, so a split without, say, "cow" is not
                   rewarded or punished for it. A class that is only predicted
                   (false positives) has IoU 0 and does count.
  pixel_accuracy = correct pixels / counted pixels
  mean_accuracy  = mean over classes present in the truth of conf[c, c] / truth_c
  fw_iou         = sum_c (truth_c / counted pixels) * IoU_c (frequency-weighted IoU)
All values are fractions in [0, 1]; with no counted pixel at all they are NaN.
"""
import numpy as np

from utils.errors import SegMentorError

# Bootstrap defaults: 1000 resamples give a stable 2.5% / 97.5% quantile; a fixed
# seed gives the same interval for the same run and split.
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
CONFIDENCE_LEVEL = 0.95
# Resamples are processed in chunks so a 182-class dataset with thousands of
# images does not need a [n_resamples, images] weight matrix at once.
_BOOTSTRAP_CHUNK = 100


def confusion_matrix(labels, predictions, num_classes, ignore_label):
    """Pixel counts int64 [C, C], rows = true class, columns = predicted class.

    `labels` and `predictions` are integer arrays of the same shape (any rank);
    pixels labelled `ignore_label` are skipped. A label outside 0..C-1 that is
    not the ignore label means the dataset and the class list disagree.
    """
    labels = np.asarray(labels).ravel()
    predictions = np.asarray(predictions).ravel()
    if labels.shape != predictions.shape:
        raise ValueError(f"labels ({labels.size} px) and predictions ({predictions.size} px) differ in size")
    counted = labels != ignore_label
    labels = labels[counted].astype(np.int64)
    predictions = predictions[counted].astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise SegMentorError(
            f"label value {int(labels.max())} is outside 0..{num_classes - 1} and is not the "
            f"ignore label {ignore_label}: the records do not match the dataset's class list; "
            f"re-run its converter")
    if predictions.size and (predictions.min() < 0 or predictions.max() >= num_classes):
        raise ValueError(f"prediction outside 0..{num_classes - 1}")
    # One bincount over the flattened (truth, prediction) pair index is the
    # fastest exact way to histogram pairs in numpy.
    pair_index = labels * num_classes + predictions
    counts = np.bincount(pair_index, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def iou_counts(conf):
    """Per-class (intersection, truth, predicted) pixel counts, [..., 3, C].

    These three sums are all mIoU needs and, unlike a confusion matrix, they
    add up over images in O(C), which keeps per-image bootstrap data small.
    Accepts one confusion matrix [C, C] or a stack [N, C, C].
    """
    conf = np.asarray(conf, dtype=np.int64)
    intersection = np.diagonal(conf, axis1=-2, axis2=-1)
    truth = conf.sum(axis=-1)
    predicted = conf.sum(axis=-2)
    return np.stack([intersection, truth, predicted], axis=-2)


def _iou_from_counts(counts):
    """IoU per class [..., C] from iou_counts [..., 3, C]; NaN where 0 / 0."""
    counts = np.asarray(counts, dtype=np.float64)
    intersection, truth, predicted = counts[..., 0, :], counts[..., 1, :], counts[..., 2, :]
    union = truth + predicted - intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, intersection / union, np.nan)


def _nanmean_last(values):
    """Mean over the last axis ignoring NaN; NaN (without a warning) when all are NaN."""
    present = ~np.isnan(values)
    total = np.where(present, values, 0.0).sum(axis=-1)
    num_present = present.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(num_present > 0, total / num_present, np.nan)


def segmentation_metrics(conf, class_names):
    """Scores of one confusion matrix (see the module docstring for definitions).

    Returns dict(miou, per_class_iou={name: iou}, pixel_accuracy,
    mean_accuracy, fw_iou); floats, NaN where undefined.
    """
    conf = np.asarray(conf, dtype=np.int64)
    if conf.shape != (len(class_names), len(class_names)):
        raise ValueError(f"confusion matrix {conf.shape} does not match {len(class_names)} class names")
    counts = iou_counts(conf)
    intersection, truth = counts[0].astype(np.float64), counts[1].astype(np.float64)
    iou = _iou_from_counts(counts)
    num_counted = truth.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        class_accuracy = np.where(truth > 0, intersection / truth, np.nan)
        pixel_accuracy = intersection.sum() / num_counted if num_counted else np.nan
        frequency = truth / num_counted if num_counted else np.full_like(truth, np.nan)
    # Classes absent from the truth have frequency 0; their IoU (0 or NaN) must not leak in.
    fw_iou = float(np.sum(frequency[truth > 0] * iou[truth > 0])) if num_counted else np.nan
    return dict(
        miou=float(_nanmean_last(iou)),
        per_class_iou={name: float(value) for name, value in zip(class_names, iou)},
        pixel_accuracy=float(pixel_accuracy),
        mean_accuracy=float(_nanmean_last(class_accuracy)),
        fw_iou=float(fw_iou),
    )


def miou_from_counts(counts):
    """mIoU of iou_counts [..., 3, C] (vectorised over leading axes)."""
    return _nanmean_last(_iou_from_counts(counts))


def bootstrap_miou_ci(per_image_confusions, n_resamples=BOOTSTRAP_RESAMPLES, seed=BOOTSTRAP_SEED,
                      level=CONFIDENCE_LEVEL):
    """Percentile bootstrap interval (low, high) of mIoU, resampling whole images.

    `per_image_confusions`: [N, C, C], one confusion matrix per image. Each
    resample draws N images with replacement and scores their summed counts
    exactly as the whole split is scored, so the interval shows how much mIoU
    depends on which images happened to be in the split. Images, not pixels,
    are the independent unit: pixels of one image are strongly correlated.
    """
    per_image = np.asarray(per_image_confusions, dtype=np.int64)
    if per_image.ndim != 3 or per_image.shape[0] == 0:
        raise ValueError(f"need per-image confusions [N, C, C], got shape {per_image.shape}")
    return bootstrap_miou_ci_from_counts(iou_counts(per_image), n_resamples, seed, level)


def _resample_weights(num_images, n_resamples, seed):
    """Chunks of int64 [chunk, N]: how often each image is drawn in each resample
    (N draws with replacement), from one seeded generator."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_resamples, _BOOTSTRAP_CHUNK):
        chunk = min(_BOOTSTRAP_CHUNK, n_resamples - start)
        yield rng.multinomial(num_images, np.full(num_images, 1.0 / num_images), size=chunk)


def _resampled_mious(counts, draws):
    """mIoU [chunk] of the images drawn by `draws` [chunk, N], from counts [N, 3, C]."""
    flat_counts = counts.reshape(counts.shape[0], -1).astype(np.float64)  # exact below 2**53 px
    summed = (draws @ flat_counts).reshape((draws.shape[0],) + counts.shape[1:])
    return miou_from_counts(summed)


def _percentile_interval(values, level):
    values = values[~np.isnan(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return float(low), float(high)


def bootstrap_miou_ci_from_counts(per_image_counts, n_resamples=BOOTSTRAP_RESAMPLES,
                                  seed=BOOTSTRAP_SEED, level=CONFIDENCE_LEVEL):
    """bootstrap_miou_ci from per-image iou_counts [N, 3, C] (O(C) memory per image)."""
    counts = np.asarray(per_image_counts, dtype=np.int64)
    if counts.shape[0] == 0:
        raise ValueError("bootstrap needs at least one image")
    resampled = np.concatenate([_resampled_mious(counts, draws) for draws in
                                _resample_weights(counts.shape[0], n_resamples, seed)])
    return _percentile_interval(resampled, level)


def paired_bootstrap_miou_difference(counts_a, counts_b, n_resamples=BOOTSTRAP_RESAMPLES,
                                     seed=BOOTSTRAP_SEED, level=CONFIDENCE_LEVEL):
    """(mIoU_B - mIoU_A, low, high): the difference with a paired bootstrap interval.

    counts_a, counts_b: per-image iou_counts [N, 3, C] of the same N images in
    the same order. Each resample draws one set of images and scores both runs
    on it, so what the images share (an easy or a hard one drawn twice) cancels
    out of the difference: the interval is about the runs, not the split.
    """
    counts_a = np.asarray(counts_a, dtype=np.int64)
    counts_b = np.asarray(counts_b, dtype=np.int64)
    if counts_a.shape != counts_b.shape or counts_a.ndim != 3 or counts_a.shape[0] == 0:
        raise ValueError(f"need per-image counts [N, 3, C] of the same images, got "
                         f"{counts_a.shape} and {counts_b.shape}")
    difference = float(miou_from_counts(counts_b.sum(axis=0)) - miou_from_counts(counts_a.sum(axis=0)))
    resampled = np.concatenate([
        _resampled_mious(counts_b, draws) - _resampled_mious(counts_a, draws)
        for draws in _resample_weights(counts_a.shape[0], n_resamples, seed)])
    return (difference, *_percentile_interval(resampled, level))


def difference_verdict(low, high, name_a="A", name_b="B"):
    """'B better', 'A better' or 'no detectable difference' from an interval of B - A."""
    if low > 0:
        return f"{name_b} better"
    if high < 0:
        return f"{name_a} better"
    return "no detectable difference"


def per_image_scores(per_image_counts):
    """(pixel_accuracy [N], miou [N], iou [N, C]) of each image on its own.

    An image's mIoU is over the classes present in its truth or its
    prediction; NaN where an image has no counted pixel.
    """
    counts = np.asarray(per_image_counts, dtype=np.float64)
    intersection, truth = counts[:, 0], counts[:, 1]
    counted = truth.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        pixel_accuracy = np.where(counted > 0, intersection.sum(axis=-1) / counted, np.nan)
    return pixel_accuracy, miou_from_counts(counts), _iou_from_counts(counts)


class ScoreAccumulator:
    """Scores a split image by image: one summed confusion matrix plus the
    per-image counts the bootstrap and the per-image table need.

        scores = ScoreAccumulator(num_classes, ignore_label)
        for labels, predictions in ...: scores.add(labels, predictions, name)
        scores.confusion, scores.metrics(class_names), scores.miou_ci()
        scores.names, scores.per_image_counts   # [N], [N, 3, C]
    """

    def __init__(self, num_classes, ignore_label):
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.confusion = np.zeros((num_classes, num_classes), np.int64)
        self.names = []
        self._per_image_counts = []

    @property
    def num_images(self):
        return len(self._per_image_counts)

    @property
    def per_image_counts(self):
        """int64 [N, 3, C]: iou_counts of each image, in the order added."""
        return np.stack(self._per_image_counts) if self._per_image_counts else \
            np.zeros((0, 3, self.num_classes), np.int64)

    def add(self, labels, predictions, name=None):
        """Count one image; returns its confusion matrix."""
        conf = confusion_matrix(labels, predictions, self.num_classes, self.ignore_label)
        self.confusion += conf
        self.names.append(name if name is not None else str(len(self.names)))
        self._per_image_counts.append(iou_counts(conf))
        return conf

    def metrics(self, class_names):
        return segmentation_metrics(self.confusion, class_names)

    def miou_ci(self, n_resamples=BOOTSTRAP_RESAMPLES, seed=BOOTSTRAP_SEED, level=CONFIDENCE_LEVEL):
        return bootstrap_miou_ci_from_counts(self.per_image_counts, n_resamples, seed, level)
