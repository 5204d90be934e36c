"""Tests for utils.inference: confusion matrix, mIoU and friends, bootstrap error bars."""
import math

import numpy as np
import pytest

from utils.errors import SegMentorError
from utils.inference import (ScoreAccumulator, bootstrap_miou_ci, confusion_matrix,
                             difference_verdict, iou_counts, paired_bootstrap_miou_difference,
                             per_image_scores, segmentation_metrics)

IGNORE = 255


def test_confusion_matrix_counts_pairs_and_skips_ignored_pixels():
    labels = np.array([[0, 1, 1], [IGNORE, 2, 0]], np.uint8)
    predictions = np.array([[0, 2, 1], [1, 2, 1]], np.uint8)
    conf = confusion_matrix(labels, predictions, num_classes=3, ignore_label=IGNORE)
    expected = np.array([[1, 1, 0],   # truth 0: one right, one called 1
                         [0, 1, 1],   # truth 1: one right, one called 2
                         [0, 0, 1]])  # the ignored pixel (predicted 1) is not counted
    np.testing.assert_array_equal(conf, expected)
    assert conf.dtype == np.int64


def test_confusion_matrix_matches_a_pixel_loop():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 6, size=(3, 17, 23)).astype(np.uint8)
    labels[rng.random(labels.shape) < 0.1] = IGNORE
    predictions = rng.integers(0, 6, size=labels.shape)
    expected = np.zeros((6, 6), np.int64)
    for truth, predicted in zip(labels.ravel(), predictions.ravel()):
        if truth != IGNORE:
            expected[truth, predicted] += 1
    np.testing.assert_array_equal(confusion_matrix(labels, predictions, 6, IGNORE), expected)


def test_label_outside_the_class_list_is_a_user_error():
    with pytest.raises(SegMentorError, match="label value 7 is outside 0..2"):
        confusion_matrix(np.array([0, 7]), np.array([0, 1]), 3, IGNORE)


def test_metrics_of_a_hand_made_confusion_matrix():
    # truth a: 4 px (3 right), truth b: 6 px (4 right), class c absent everywhere.
    conf = np.array([[3, 1, 0],
                     [2, 4, 0],
                     [0, 0, 0]])
    scores = segmentation_metrics(conf, ["a", "b", "c"])
    iou_a = 3 / (4 + 5 - 3)   # intersection / (truth + predicted - intersection) = 0.5
    iou_b = 4 / (6 + 5 - 4)   # = 4/7
    assert scores["per_class_iou"]["a"] == pytest.approx(iou_a)
    assert scores["per_class_iou"]["b"] == pytest.approx(iou_b)
    assert math.isnan(scores["per_class_iou"]["c"])          # 0/0: undefined ...
    assert scores["miou"] == pytest.approx((iou_a + iou_b) / 2)  # ... and left out of the mean
    assert scores["pixel_accuracy"] == pytest.approx(7 / 10)
    assert scores["mean_accuracy"] == pytest.approx((3 / 4 + 4 / 6) / 2)
    assert scores["fw_iou"] == pytest.approx(0.4 * iou_a + 0.6 * iou_b)


def test_a_class_that_is_only_predicted_counts_as_zero_iou():
    conf = np.array([[2, 1],
                     [0, 0]])  # class 1 never in the truth, predicted once
    scores = segmentation_metrics(conf, ["a", "b"])
    assert scores["per_class_iou"]["b"] == 0.0
    assert scores["miou"] == pytest.approx((2 / 3 + 0.0) / 2)
    assert scores["mean_accuracy"] == pytest.approx(2 / 3)  # accuracy needs truth pixels
    assert scores["fw_iou"] == pytest.approx(2 / 3)


def test_perfect_and_empty_predictions():
    perfect = segmentation_metrics(np.diag([5, 0, 7]), ["a", "b", "c"])
    assert perfect["miou"] == perfect["pixel_accuracy"] == perfect["fw_iou"] == 1.0
    empty = segmentation_metrics(np.zeros((2, 2), np.int64), ["a", "b"])
    assert all(math.isnan(empty[key]) for key in ("miou", "pixel_accuracy", "mean_accuracy", "fw_iou"))


def test_iou_counts_of_a_stack():
    confs = np.array([[[3, 1], [2, 4]], [[1, 0], [0, 0]]])
    counts = iou_counts(confs)
    assert counts.shape == (2, 3, 2)
    np.testing.assert_array_equal(counts[0], [[3, 4], [4, 6], [5, 5]])  # intersection, truth, predicted


def _noisy_images(num_images, seed, num_classes=4, pixels=400):
    """Per-image confusions of a classifier whose accuracy varies from image to image."""
    rng = np.random.default_rng(seed)
    confs = []
    for _ in range(num_images):
        labels = rng.integers(0, num_classes, pixels)
        accuracy = rng.uniform(0.4, 0.95)
        wrong = rng.random(pixels) > accuracy
        predictions = np.where(wrong, rng.integers(0, num_classes, pixels), labels)
        confs.append(confusion_matrix(labels, predictions, num_classes, IGNORE))
    return np.stack(confs)


def test_bootstrap_interval_contains_the_estimate_and_narrows_with_more_images():
    names = list("abcd")
    widths = []
    for num_images in (8, 200):
        confs = _noisy_images(num_images, seed=num_images)
        miou = segmentation_metrics(confs.sum(axis=0), names)["miou"]
        low, high = bootstrap_miou_ci(confs, n_resamples=500, seed=0)
        assert low <= miou <= high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2  # ~sqrt(25) = 5x narrower in theory


def test_bootstrap_is_reproducible_and_degenerate_for_identical_images():
    confs = _noisy_images(20, seed=3)
    assert bootstrap_miou_ci(confs, seed=7) == bootstrap_miou_ci(confs, seed=7)
    same = np.repeat(confs[:1], 10, axis=0)
    low, high = bootstrap_miou_ci(same, n_resamples=50)
    assert low == pytest.approx(high)


def test_score_accumulator_equals_scoring_everything_at_once():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, size=(6, 9, 11))
    labels[:, 0] = IGNORE
    predictions = rng.integers(0, 3, size=labels.shape)
    scores = ScoreAccumulator(3, IGNORE)
    for image_labels, image_predictions in zip(labels, predictions):
        scores.add(image_labels, image_predictions)
    assert scores.num_images == 6
    np.testing.assert_array_equal(scores.confusion, confusion_matrix(labels, predictions, 3, IGNORE))
    per_image = np.stack([confusion_matrix(l, p, 3, IGNORE) for l, p in zip(labels, predictions)])
    assert scores.miou_ci(n_resamples=200) == bootstrap_miou_ci(per_image, n_resamples=200)


def _confusions_of_images(num_images, num_classes, error_rate, seed):
    """Per-image confusion matrices [N, C, C] of random labels with `error_rate` of pixels wrong."""
    rng = np.random.default_rng(seed)
    confusions = []
    for _ in range(num_images):
        labels = rng.integers(0, num_classes, size=400)
        wrong = rng.random(400) < error_rate
        predictions = np.where(wrong, (labels + 1) % num_classes, labels)
        confusions.append(confusion_matrix(labels, predictions, num_classes, IGNORE))
    return np.stack(confusions)


def test_paired_difference_of_identical_runs_is_exactly_zero():
    counts = iou_counts(_confusions_of_images(12, 3, 0.3, seed=0))
    difference, low, high = paired_bootstrap_miou_difference(counts, counts)
    assert (difference, low, high) == (0.0, 0.0, 0.0)
    assert difference_verdict(low, high) == "no detectable difference"


def test_paired_difference_sees_a_run_better_on_every_image():
    worse = _confusions_of_images(12, 3, 0.3, seed=0)
    better = _confusions_of_images(12, 3, 0.1, seed=0)  # same labels, fewer errors
    difference, low, high = paired_bootstrap_miou_difference(iou_counts(worse), iou_counts(better))
    expected = (segmentation_metrics(better.sum(0), ["a", "b", "c"])["miou"]
                - segmentation_metrics(worse.sum(0), ["a", "b", "c"])["miou"])
    assert difference == pytest.approx(expected) and expected > 0.2
    assert 0 < low <= difference <= high
    assert difference_verdict(low, high, "A", "B") == "B better"
    _, low, high = paired_bootstrap_miou_difference(iou_counts(better), iou_counts(worse))
    assert difference_verdict(low, high) == "A better"


def test_pairing_narrows_the_interval_when_images_differ_in_difficulty():
    """Images range from easy to hard; B fixes a few more pixels of each. The paired
    interval sees that; two separate intervals overlap widely."""
    rates = np.linspace(0.05, 0.6, 20)
    easy_to_hard = [_confusions_of_images(1, 3, rate, seed=index)[0]
                    for index, rate in enumerate(rates)]
    a = iou_counts(np.stack(easy_to_hard))
    b = iou_counts(np.stack([_confusions_of_images(1, 3, rate - 0.03, seed=index)[0]
                             for index, rate in enumerate(rates)]))
    _, low, high = paired_bootstrap_miou_difference(a, b)
    a_low, a_high = bootstrap_miou_ci(easy_to_hard)
    assert low > 0 and high - low < (a_high - a_low) / 2


def test_paired_difference_needs_the_same_images():
    counts = iou_counts(_confusions_of_images(4, 3, 0.2, seed=0))
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap_miou_difference(counts, counts[:3])


def test_per_image_scores_of_hand_made_images():
    confusions = np.array([[[2, 0], [0, 2]],    # perfect
                           [[1, 1], [0, 0]],    # truth all class 0, half called 1
                           [[0, 0], [0, 0]]])   # every pixel ignored
    pixel_accuracy, miou, iou = per_image_scores(iou_counts(confusions))
    np.testing.assert_allclose(pixel_accuracy[:2], [1.0, 0.5])
    np.testing.assert_allclose(iou[:2], [[1.0, 1.0], [0.5, 0.0]])  # 1 / (2 + 1 - 1); 0 / 1
    np.testing.assert_allclose(miou[:2], [1.0, 0.25])
    assert np.isnan(pixel_accuracy[2]) and np.isnan(miou[2]) and np.isnan(iou[2]).all()


def test_score_accumulator_keeps_names_and_per_image_counts():
    scores = ScoreAccumulator(2, IGNORE)
    scores.add(np.array([0, 1]), np.array([0, 1]), "a.png")
    scores.add(np.array([0, IGNORE]), np.array([1, 1]), "b.png")
    assert scores.names == ["a.png", "b.png"]
    np.testing.assert_array_equal(scores.per_image_counts[1], [[0, 0], [1, 0], [0, 1]])
