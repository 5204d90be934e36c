"""utils/compare_runs.py: the table, the paired difference and the seed spread, on
hand-made scores (end to end on a trained run: tests/test_test_script.py)."""
import numpy as np
import pytest

from utils import compare_runs
from utils.compare_runs import RunScores
from utils.inference import confusion_matrix, iou_counts

CLASSES = ["bg", "thing"]


def _run(label, error_rate, seed=0, **runargs):
    """RunScores of 10 images of 2 classes with `error_rate` of each image's pixels wrong."""
    rng = np.random.default_rng(7)
    confusions = []
    for _ in range(10):
        truth = rng.integers(0, 2, size=500)
        wrong = np.arange(500) < int(error_rate * 500)
        confusions.append(confusion_matrix(truth, np.where(wrong, 1 - truth, truth), 2, 255))
    counts = iou_counts(np.stack(confusions))
    total = np.stack(confusions).sum(0)
    iou = np.diag(total) / (total.sum(0) + total.sum(1) - np.diag(total))
    metrics = dict(miou=float(iou.mean()), miou_ci95=[0.0, 1.0], step=100,
                   pixel_accuracy=float(np.trace(total) / total.sum()),
                   per_class_iou=dict(zip(CLASSES, map(float, iou))))
    runargs = dict(dict(basenet="mobilenet_v1", seed=seed), **runargs)
    return RunScores(label, f"tmp/run_{label}", runargs, metrics,
                     [f"img{i}.png" for i in range(10)], counts)


def test_two_runs_get_a_paired_difference_and_a_verdict(capsys):
    worse, better = _run("A", 0.3), _run("B", 0.1, seed=1)
    assert compare_runs.print_difference(worse, better) == "B better"
    line = capsys.readouterr().out.strip()
    assert line.startswith("B - A: mIoU +") and line.endswith(
        "(paired bootstrap, 95%, the same 10 images resampled for both): B better")
    assert compare_runs.print_difference(better, _run("B", 0.1)) == "no detectable difference"


def test_runs_differing_only_in_seed_and_bookkeeping_are_one_recipe():
    assert compare_runs.same_recipe([_run("A", 0.1, seed=0, runs_dir="a", gpu=0),
                                     _run("B", 0.2, seed=1, runs_dir="b", gpu=None)])
    assert not compare_runs.same_recipe([_run("A", 0.1), _run("B", 0.1, basenet="vgg_16")])


def test_seed_spread_is_mean_and_sample_standard_deviation(capsys):
    runs = [_run(label, rate, seed=seed) for label, rate, seed in
            (("A", 0.1, 0), ("B", 0.2, 1), ("C", 0.3, 2))]
    mious = [run.metrics["miou"] for run in runs]
    compare_runs.print_seed_spread(runs)
    out = capsys.readouterr().out
    assert (f"3 runs of one recipe (seeds 0, 1, 2): mIoU {100 * np.mean(mious):.1f} "
            f"± {100 * np.std(mious, ddof=1):.1f}") in out


def test_table_lists_each_run_and_class(capsys):
    compare_runs.print_table([_run("A", 0.1), _run("B", 0.2)])
    out = capsys.readouterr().out
    assert "A   run_A" in out and "B   run_B" in out
    assert [line.split()[0] for line in out.splitlines()[-2:]] == CLASSES


def test_runs_scored_on_different_images_are_refused():
    other = _run("B", 0.1)
    other.names = other.names[::-1]
    with pytest.raises(compare_runs.SegMentorError, match="scored on different images"):
        compare_runs.check_comparable([_run("A", 0.1), other])


def test_labels_go_past_z():
    labels = compare_runs.run_labels(28)
    assert labels[:2] == ["A", "B"] and labels[25:] == ["Z", "R27", "R28"]
