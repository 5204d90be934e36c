"""Scoring a split into an output folder, and reading such a folder back.

What `fcn_test.py` writes for a split, and what `utils.compare_runs` reuses:

    metrics.json            miou, miou_ci95, per_class_iou, accuracies, num_images,
                            step, split, checkpoint, test_time (pixels, scales, flip,
                            tile, overlap), images_per_sec
    confusion.csv / .png    summed confusion matrix (rows = truth) and its heat map
    per_image.csv           image, pixel_accuracy, miou (over the classes present in
                            the image's truth or prediction), IoU per class
    per_image_counts.npz    names [N] and iou_counts [N, 3, C]: what a paired
                            bootstrap between two runs needs
    viz/<name>.png          the images asked for; viz/worst/ the WORST_IMAGES lowest
                            per-image mIoU, named <rank>_<name>.png
    predictions/<name>.png  class ids at source size (with save_predictions)

    metrics = evaluate_split(predictor, spec, datapath, 'val', plan, outdir,
                             extra=dict(step=..., checkpoint=...))
    print_metrics(metrics)
"""
import csv
import dataclasses
import heapq
import io
import json
import math
import os
import time

import numpy as np

from utils.labels import IGNORE_LABEL
from utils.files import atomic_path, write_text_atomic
from utils.inference import CONFIDENCE_LEVEL, iou_counts, miou_from_counts, per_image_scores
from utils.prediction import score_split
from utils.visualization import (confusion_heatmap_figure, save_figure, save_png,
                                 side_by_side_figure)

METRICS_FILE = "metrics.json"
PER_IMAGE_FILE = "per_image.csv"
PER_IMAGE_COUNTS_FILE = "per_image_counts.npz"
WORST_DIR = os.path.join("viz", "worst")
WORST_IMAGES = 8  # enough to see a pattern in the failures, few enough to look at each


@dataclasses.dataclass(frozen=True)
class Drawing:
    """Which pictures an evaluation draws besides the worst images."""
    viz_indices: range = range(0)   # images drawn into viz/
    save_predictions: bool = False  # class-id PNGs into predictions/
    num_worst: int = WORST_IMAGES


class _WorstImages:
    """The `size` images of lowest per-image mIoU seen so far (images without a score
    are left out)."""

    def __init__(self, size):
        self._size = size
        self._heap = []  # (-miou, index, item): the root is the best of the kept ones

    def offer(self, index, item, miou):
        if self._size == 0 or math.isnan(miou):
            return
        entry = (-miou, index, item)
        if len(self._heap) < self._size:
            heapq.heappush(self._heap, entry)
        elif -miou > self._heap[0][0]:  # lower mIoU than the best kept one
            heapq.heapreplace(self._heap, entry)

    def worst_first(self):
        """[(miou, item)] from the lowest mIoU up (ties: file order)."""
        ranked = sorted(self._heap, key=lambda entry: (-entry[0], entry[1]))
        return [(-negative, item) for negative, _, item in ranked]


def evaluate_split(predictor, spec, datapath, split, plan, outdir, batch_size=1,
                   drawing=Drawing(), extra=None):
    """Predict and score every image of the split, write the outputs; returns the metrics.

    `extra` (e.g. step, checkpoint) is merged into metrics.json.
    """
    os.makedirs(outdir, exist_ok=True)
    worst = _WorstImages(drawing.num_worst)

    def on_image(index, item, confusion):
        name = os.path.splitext(item.filename)[0] + ".png"
        if drawing.save_predictions:
            save_png(item.prediction, os.path.join(outdir, "predictions", name))
        if index in drawing.viz_indices:
            save_figure(_figure(item, spec), os.path.join(outdir, "viz", name))
        worst.offer(index, item, float(miou_from_counts(iou_counts(confusion))))

    start = time.perf_counter()
    scores = score_split(predictor, spec, datapath, split, plan, batch_size, on_image)
    seconds = time.perf_counter() - start
    metrics = scores.metrics(spec.class_names)
    metrics.update(miou_ci95=list(scores.miou_ci()), num_images=scores.num_images, split=split,
                   test_time=plan.settings(),
                   images_per_sec=round(scores.num_images / max(seconds, 1e-9), 2),
                   **(extra or {}))
    write_json(metrics, os.path.join(outdir, METRICS_FILE))
    write_confusion_csv(scores.confusion, spec.class_names, os.path.join(outdir, "confusion.csv"))
    save_figure(confusion_heatmap_figure(scores.confusion, spec.class_names),
                os.path.join(outdir, "confusion.png"))
    counts = scores.per_image_counts
    write_per_image_csv(scores.names, counts, spec.class_names, os.path.join(outdir, PER_IMAGE_FILE))
    write_per_image_counts(scores.names, counts, os.path.join(outdir, PER_IMAGE_COUNTS_FILE))
    for rank, (miou, item) in enumerate(worst.worst_first(), start=1):
        name = f"{rank:02d}_{os.path.splitext(item.filename)[0]}.png"
        title = f"{item.filename}: mIoU {percent(miou)} (worst #{rank})"
        save_figure(_figure(item, spec, title), os.path.join(outdir, WORST_DIR, name))
    return metrics


def default_outdir(traindir, source, step, plan):
    """<traindir>/test_<source>_<step>, plus the test-time settings when not plain
    (test_val_900_s0.75-1-1.25_flip), so a TTA evaluation never overwrites the plain one."""
    name = f"test_{source}_{'latest' if step is None else step}"
    return os.path.join(traindir, "_".join(filter(None, (name, plan.tag()))))


def _figure(item, spec, title=None):
    return side_by_side_figure(item.image, item.prediction, item.label, spec.colors,
                               spec.class_names, IGNORE_LABEL, title=title or item.filename)


def percent(fraction):
    """'61.3' for 0.613; 'n/a' for an undefined score (NaN or None)."""
    return "n/a" if fraction is None or math.isnan(fraction) else f"{100 * fraction:.1f}"


def print_metrics(metrics):
    low, high = metrics["miou_ci95"]
    print(f"mIoU {percent(metrics['miou'])} [{percent(low)}, {percent(high)}]  "
          f"({CONFIDENCE_LEVEL:.0%} bootstrap interval over {metrics['num_images']} images, "
          f"{metrics['split']} split, step {metrics['step']})")
    print(f"pixel accuracy {percent(metrics['pixel_accuracy'])}  "
          f"mean accuracy {percent(metrics['mean_accuracy'])}  fw IoU {percent(metrics['fw_iou'])}")
    width = max(len("class"), *map(len, metrics["per_class_iou"]))
    print(f"{'class':<{width}}  IoU %")
    for name, iou in metrics["per_class_iou"].items():
        print(f"{name:<{width}}  {percent(iou):>5}")


def _json_safe(value):
    """NaN (an undefined score) as null: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def write_json(data, path):
    write_text_atomic(path, json.dumps(_json_safe(data), indent=1) + "\n")


def write_confusion_csv(conf, class_names, path):
    """Rows: true class, columns: predicted class, pixel counts."""
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["truth \\ predicted", *class_names])
    for name, row in zip(class_names, conf):
        writer.writerow([name, *row.tolist()])
    write_text_atomic(path, text.getvalue())


def _csv_fraction(value):
    return "" if math.isnan(value) else f"{value:.4f}"


def write_per_image_csv(names, per_image_counts, class_names, path):
    """One row per image: image, pixel_accuracy, miou, IoU per class (empty: undefined)."""
    pixel_accuracy, miou, iou = per_image_scores(per_image_counts)
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["image", "pixel_accuracy", "miou", *class_names])
    for index, name in enumerate(names):
        writer.writerow([name, _csv_fraction(pixel_accuracy[index]), _csv_fraction(miou[index]),
                         *map(_csv_fraction, iou[index])])
    write_text_atomic(path, text.getvalue())


def write_per_image_counts(names, per_image_counts, path):
    with atomic_path(path) as tmp_path:
        with open(tmp_path, "wb") as f:
            np.savez_compressed(f, names=np.asarray(names, dtype=str),
                                counts=np.asarray(per_image_counts, np.int64))


def read_results(outdir):
    """(metrics dict, names [N], counts [N, 3, C]) of an evaluation folder, or None
    when it lacks any of the three files."""
    metrics_path = os.path.join(outdir, METRICS_FILE)
    counts_path = os.path.join(outdir, PER_IMAGE_COUNTS_FILE)
    if not (os.path.isfile(metrics_path) and os.path.isfile(counts_path)):
        return None
    try:
        with open(metrics_path) as f:
            metrics = json.load(f)
        with np.load(counts_path) as stored:
            return metrics, [str(name) for name in stored["names"]], stored["counts"].astype(np.int64)
    except (OSError, ValueError, KeyError):
        return None  # damaged: recompute
