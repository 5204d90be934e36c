"""fcn_test.py end to end on a tiny run trained by fcn_train.py, plus the
play-with-me notebook and TensorBoard over that run.

The run (mobilenet_v1 FCN16 from scratch, 4 steps at 64 px) is trained once
per module on shapes-like data whose validation images have odd sizes, so
every test here also checks that predictions come back at source size.
"""
import csv
import errno
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import matplotlib
import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient
from PIL import Image

import fcn_test
from utils import compare_runs, evaluation, shapes
from utils.datasets import write_dataset_meta
from utils.labels import IGNORE_LABEL
from utils.errors import EXIT_USER_ERROR, run_main
from utils.prediction import SplitPredictor, TrainedRun
from utils.tf_records import RecordWriter, encode_label_png
from utils.visualization import IGNORE_COLOR, normalized_confusion, overlay, read_rgb
from encoded_images import encode_image

REPO_ROOT = Path(__file__).resolve().parents[1]
DATASET = "tiny_odd"
TRAIN_PIXELS = 64
NUM_TRAIN_IMAGES = 6
# Odd, non-square validation sizes (height, width): native-size inference must
# handle sizes that are not multiples of the network stride.
VAL_SIZES = ((45, 61), (50, 37), (33, 70), (64, 64), (41, 41))
SNAPSHOT_STEPS = (2, 4)  # 2 epochs x 2 steps of batch 3, a snapshot every 2 steps
VIDEO_FRAMES, VIDEO_SIZE = 7, (70, 90)  # (height, width)
SUBPROCESS_TIMEOUT_SECS = 300


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(datapath, {val file name: label}) of a shapes-like dataset known through its dataset.json."""
    root = tmp_path_factory.mktemp("data")
    files = {"train": "training.tfrecords", "val": "validation.tfrecords"}
    val_labels = {}
    with RecordWriter(root / DATASET / files["train"]) as writer:
        for index in range(NUM_TRAIN_IMAGES):
            image, label = shapes.make_sample(np.random.default_rng([0, index]), TRAIN_PIXELS)
            writer.write(encode_image(image), "png", encode_label_png(label), TRAIN_PIXELS,
                         TRAIN_PIXELS, f"train_{index}.png")
    with RecordWriter(root / DATASET / files["val"]) as writer:
        for index, (height, width) in enumerate(VAL_SIZES):
            image, label = shapes.make_sample(np.random.default_rng([1, index]), 96)
            image, label = image[:height, :width], label[:height, :width].copy()
            label[0, :] = IGNORE_LABEL  # a void row, as real datasets have
            name = f"val_{index:02d}.png"
            writer.write(encode_image(image), "png", encode_label_png(label), height, width, name)
            val_labels[name] = label
    write_dataset_meta(root / DATASET, {
        "name": DATASET, "class_names": list(shapes.CLASS_NAMES),
        "colors": [list(color) for color in shapes.CLASS_COLORS],
        "splits": {"train": {"file": files["train"], "count": NUM_TRAIN_IMAGES},
                   "val": {"file": files["val"], "count": len(VAL_SIZES)}}})
    return root, val_labels


@pytest.fixture(scope="module")
def run_dir(data, tmp_path_factory):
    """A run folder trained by the real fcn_train.py (4 steps, validation and snapshots
    at 2 and 4)."""
    datapath, _ = data
    runs_dir = tmp_path_factory.mktemp("runs")
    result = subprocess.run(
        [sys.executable, "fcn_train.py", "--scratch", "--fcn16", "--dataset", DATASET,
         "--datapath", str(datapath), "--runs_dir", str(runs_dir), "--pixels", str(TRAIN_PIXELS),
         "--batch_size", "3", "--epochs", "2", "--log_every", "1", "--val_every", "2",
         "--snapshot_every", "2"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_SECS)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = [path for path in runs_dir.iterdir() if path.is_dir()]
    return run


@pytest.fixture(scope="module")
def default_eval(run_dir):
    """The real script, default flags plus predictions and two pictures: (stdout, outdir)."""
    result = subprocess.run(
        [sys.executable, "fcn_test.py", "--traindir", str(run_dir), "--save_predictions",
         "--first2viz", "1", "--last2viz", "3"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_SECS)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout, run_dir / f"test_val_{SNAPSHOT_STEPS[-1]}"


def run_fcn_test(*argv):
    return run_main(fcn_test.main, fcn_test.build_parser(), [str(arg) for arg in argv])


def read_metrics(outdir):
    with open(Path(outdir) / "metrics.json") as f:
        return json.load(f)


@pytest.mark.slow  # uses the trained run
def test_metrics_json_fields_and_ranges(default_eval):
    _, outdir = default_eval
    metrics = read_metrics(outdir)
    assert {"miou", "miou_ci95", "per_class_iou", "pixel_accuracy", "mean_accuracy", "fw_iou",
            "num_images", "step", "split"} <= set(metrics)
    assert metrics["num_images"] == len(VAL_SIZES)
    assert metrics["step"] == SNAPSHOT_STEPS[-1] and metrics["split"] == "val"
    assert list(metrics["per_class_iou"]) == list(shapes.CLASS_NAMES)
    for key in ("miou", "pixel_accuracy", "mean_accuracy", "fw_iou"):
        assert 0.0 <= metrics[key] <= 1.0, key
    for iou in metrics["per_class_iou"].values():
        assert iou is None or 0.0 <= iou <= 1.0  # None: class absent from truth and prediction
    low, high = metrics["miou_ci95"]
    assert 0.0 <= low <= metrics["miou"] <= high <= 1.0


@pytest.mark.slow  # uses the trained run
def test_console_shows_miou_with_interval_and_class_table(default_eval):
    stdout, _ = default_eval
    assert re.search(r"^mIoU \d+\.\d \[\d+\.\d, \d+\.\d\]", stdout, re.MULTILINE), stdout
    for name in shapes.CLASS_NAMES:
        assert re.search(rf"^{name}\s+(\d+\.\d|n/a)$", stdout, re.MULTILINE), name


def _numpy_miou(labels, predictions, num_classes):
    """mIoU straight from label maps: classes with an empty union are left out."""
    intersection, union = np.zeros(num_classes), np.zeros(num_classes)
    for label, prediction in zip(labels, predictions):
        valid = label != IGNORE_LABEL
        for class_id in range(num_classes):
            truth, predicted = (label == class_id) & valid, (prediction == class_id) & valid
            intersection[class_id] += np.sum(truth & predicted)
            union[class_id] += np.sum(truth | predicted)
    return np.mean(intersection[union > 0] / union[union > 0])


@pytest.mark.slow  # uses the trained run
def test_saved_predictions_reproduce_the_reported_miou(default_eval, data):
    _, outdir = default_eval
    _, val_labels = data
    names = sorted(os.listdir(outdir / "predictions"))
    assert names == sorted(val_labels)  # named after the source images
    labels = [val_labels[name] for name in names]
    predictions = [np.array(Image.open(outdir / "predictions" / name)) for name in names]
    for label, prediction in zip(labels, predictions):
        assert prediction.shape == label.shape and prediction.dtype == np.uint8
    metrics = read_metrics(outdir)
    expected = _numpy_miou(labels, predictions, len(shapes.CLASS_NAMES))
    assert metrics["miou"] == pytest.approx(expected, abs=1e-9)

    with open(outdir / "confusion.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0][1:] == list(shapes.CLASS_NAMES)
    assert [row[0] for row in rows[1:]] == list(shapes.CLASS_NAMES)
    conf = np.array([[int(value) for value in row[1:]] for row in rows[1:]])
    assert conf.sum() == sum(np.sum(label != IGNORE_LABEL) for label in labels)


@pytest.mark.slow  # uses the trained run
def test_per_image_csv_scores_each_saved_prediction(default_eval, data):
    _, outdir = default_eval
    _, val_labels = data
    with open(outdir / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["image"] for row in rows] == sorted(val_labels)  # file order
    assert list(rows[0]) == ["image", "pixel_accuracy", "miou", *shapes.CLASS_NAMES]
    for row in rows:
        label = val_labels[row["image"]]
        prediction = np.array(Image.open(outdir / "predictions" / row["image"]))
        valid = label != IGNORE_LABEL
        assert float(row["pixel_accuracy"]) == pytest.approx(
            np.mean(prediction[valid] == label[valid]), abs=1e-4)
        assert float(row["miou"]) == pytest.approx(
            _numpy_miou([label], [prediction], len(shapes.CLASS_NAMES)), abs=1e-4)
        for class_id, name in enumerate(shapes.CLASS_NAMES):
            present = np.any(valid & ((label == class_id) | (prediction == class_id)))
            assert (row[name] != "") == present, (row["image"], name)


@pytest.mark.slow  # uses the trained run
def test_the_worst_images_are_drawn_worst_first(default_eval, data):
    _, outdir = default_eval
    _, val_labels = data
    with open(outdir / "per_image.csv") as f:
        mious = {row["image"]: float(row["miou"]) for row in csv.DictReader(f)}
    ranked = sorted(mious, key=lambda name: (mious[name], name))
    drawn = sorted(os.listdir(outdir / "viz" / "worst"))
    assert drawn == [f"{rank:02d}_{name}" for rank, name in enumerate(ranked, start=1)]  # 5 < 8
    # The worst picture is that image's: its prediction's and truth's classes, no other.
    worst = ranked[0]
    _assert_shows_the_classes_of(np.array(Image.open(outdir / "viz" / "worst" / drawn[0])
                                          .convert("RGB")),
                                 np.array(Image.open(outdir / "predictions" / worst)),
                                 val_labels[worst])


@pytest.mark.slow  # uses the trained run
def test_console_shows_images_per_second(default_eval):
    stdout, outdir = default_eval
    assert re.search(r"^5 images at \d+\.\d images/s", stdout, re.MULTILINE), stdout
    assert read_metrics(outdir)["images_per_sec"] > 0


@pytest.mark.slow  # uses the trained run
def test_test_time_augmentation_and_tiles_are_recorded(run_dir, data, tmp_path):
    _, val_labels = data
    assert run_fcn_test("--traindir", run_dir, "--pixels", 0, "--scales", 1, 0.5, "--flip",
                        "--tile", 32, 40, "--overlap", 0.25, "--save_predictions",
                        "--last2viz", 0) == 0
    outdir = run_dir / f"test_val_{SNAPSHOT_STEPS[-1]}_s1-0.5_flip_tile32x40o0.25"
    metrics = read_metrics(outdir)
    assert metrics["test_time"] == {"pixels": 0, "scales": [1.0, 0.5], "flip": True,
                                    "tile": [32, 40], "overlap": 0.25}
    assert metrics["num_images"] == len(VAL_SIZES) and 0 <= metrics["miou"] <= 1
    for name, label in val_labels.items():
        assert np.array(Image.open(outdir / "predictions" / name)).shape == label.shape


def _pixels_of(picture, color, tolerance=0):
    return int(np.sum(np.all(np.abs(picture[..., :3].astype(int) - color) <= tolerance, axis=-1)))


def _assert_shows_the_classes_of(picture, prediction, label):
    """`picture` (image | prediction | truth with a legend) shows exactly the classes of
    `prediction` and `label` in the dataset's colours, and the void colour."""
    shown = {int(c) for c in np.unique(prediction)} | {int(c) for c in np.unique(label)}
    # background is black, like the text: count the other classes, and the void row
    for class_id, color in enumerate(shapes.CLASS_COLORS[1:], start=1):
        drawn = _pixels_of(picture, color) >= 30  # a legend swatch alone is more
        assert drawn == (class_id in shown), shapes.CLASS_NAMES[class_id]
    assert _pixels_of(picture, IGNORE_COLOR) >= 30


@pytest.mark.slow  # uses the trained run
def test_pictures_of_the_chosen_images_and_the_confusion_heat_map(default_eval, data):
    """Each picture shows the classes of its prediction and truth in the dataset's colours
    (panels and legend), and no other class; the heat map shows the confusion.csv values."""
    _, outdir = default_eval
    _, val_labels = data
    assert sorted(os.listdir(outdir / "viz")) == ["val_01.png", "val_02.png", "worst"]  # --first2viz 1 --last2viz 3
    for name in ("val_01.png", "val_02.png"):
        _assert_shows_the_classes_of(np.array(Image.open(outdir / "viz" / name).convert("RGB")),
                                     np.array(Image.open(outdir / "predictions" / name)),
                                     val_labels[name])

    with open(outdir / "confusion.csv") as f:
        conf = np.array([[int(value) for value in row[1:]] for row in list(csv.reader(f))[1:]])
    heat_map = np.array(Image.open(outdir / "confusion.png").convert("RGB"))
    darkest = matplotlib.colormaps["Blues"](normalized_confusion(conf).max())[:3]
    assert _pixels_of(heat_map, np.rint(np.array(darkest) * 255), tolerance=2) >= 100


@pytest.mark.slow  # uses the trained run
@pytest.mark.parametrize("pixels, afteriter", [(0, SNAPSHOT_STEPS[0]), (48, None)])
def test_native_and_fixed_size_inference_return_source_sizes(run_dir, data, tmp_path, pixels,
                                                             afteriter):
    _, val_labels = data
    argv = ["--traindir", run_dir, "--pixels", pixels, "--batch_size", 2, "--save_predictions",
            "--last2viz", 0, "--outdir", tmp_path]
    argv += ["--afteriter", afteriter] if afteriter else []
    assert run_fcn_test(*argv) == 0
    metrics = read_metrics(tmp_path)
    assert metrics["step"] == (afteriter or SNAPSHOT_STEPS[-1])
    assert metrics["num_images"] == len(VAL_SIZES) and 0 <= metrics["miou"] <= 1
    assert os.listdir(tmp_path / "viz") == ["worst"]
    for name, label in val_labels.items():
        assert np.array(Image.open(tmp_path / "predictions" / name)).shape == label.shape


def _write_video(path, num_frames, height, width):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (width, height))
    rng = np.random.default_rng(0)
    for _ in range(num_frames):
        writer.write(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))
    writer.release()


def _count_frames(path):
    capture = cv2.VideoCapture(str(path))
    count, size = 0, None
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        count, size = count + 1, frame.shape[:2]
    capture.release()
    return count, size


@pytest.mark.slow  # uses the trained run
def test_images_and_video_are_segmented_at_their_own_size(run_dir, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 256, size=(47, 83, 3), dtype=np.uint8)).save(photos / "a.png")
    Image.fromarray(rng.integers(0, 256, size=(60, 31), dtype=np.uint8)).save(photos / "b.jpg")  # grey
    video = tmp_path / "clip.mp4"
    _write_video(video, VIDEO_FRAMES, *VIDEO_SIZE)
    outdir = tmp_path / "out"
    assert run_fcn_test("--traindir", run_dir, "--imagepath", photos, "--moviepath", video,
                        "--outdir", outdir, "--scales", 1, 0.75, "--flip") == 0
    class_colours = np.array(shapes.CLASS_COLORS)
    for stem, source in (("a", photos / "a.png"), ("b", photos / "b.jpg")):
        image = read_rgb(str(source))
        prediction = np.array(Image.open(outdir / f"{stem}_prediction.png"))
        # At the photo's own size, every pixel a class colour, and the overlay is the
        # photo blended with exactly that prediction.
        assert prediction.shape == image.shape
        assert np.all((prediction[:, :, None, :] == class_colours).all(-1).any(-1))
        np.testing.assert_array_equal(np.array(Image.open(outdir / f"{stem}_overlay.png")),
                                      overlay(image, prediction))
    assert _count_frames(outdir / "clip_overlay.mp4") == (VIDEO_FRAMES, VIDEO_SIZE)
    assert re.search(r"segmented 7 frames .* \d+\.\d fps", capsys.readouterr().out)


def _bad_inputs(run_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    no_checkpoint = tmp_path / "no_checkpoint"
    no_checkpoint.mkdir()
    shutil.copy(run_dir / "runargs", no_checkpoint / "runargs")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    runargs = json.loads((run_dir / "runargs").read_text())
    del runargs["basenet"]
    (incomplete / "runargs").write_text(json.dumps(runargs))
    (tmp_path / "a_file").write_text("")
    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved)
    (moved / "runargs").write_text(json.dumps(dict(runargs, basenet="mobilenet_v1",
                                                   datapath=str(tmp_path / "gone"))))
    return {
        "missing traindir": (["--traindir", tmp_path / "nope"], "run folder .* not found"),
        "no runargs": (["--traindir", empty], "runargs not found"),
        "no checkpoint": (["--traindir", no_checkpoint], "no checkpoint .* in .*no_checkpoint: its "
                          "training failed or was interrupted before the first save.*--resume"),
        "no such snapshot": (["--traindir", run_dir, "--afteriter", 3],
                             "no snapshot fcn.ckpt_3 .* available --afteriter values: 2, 4"),
        "unreadable image": (["--traindir", run_dir, "--imagepath", tmp_path / "junk.png"],
                             "cannot read image .*junk.png"),
        "unreadable video": (["--traindir", run_dir, "--moviepath", tmp_path / "junk.mp4"],
                             "cannot read video .*junk.mp4"),
        "missing split": (["--traindir", run_dir, "--split", "test"],
                          "no 'test' split; choose --split from: train, val"),
        "incomplete runargs": (["--traindir", incomplete], "runargs lacks basenet"),
        "unwritable outdir": (["--traindir", run_dir, "--outdir", tmp_path / "a_file"],
                              "cannot write to .*a_file, --outdir .*; pass another --outdir"),
        "moved data": (["--traindir", moved], "unknown dataset 'tiny_odd'.* pass --datapath"),
        "no best checkpoint": (["--traindir", run_dir, "--best"],
                               "no fcn.ckpt_best in .*: only runs trained with --keep_best"),
    }


BAD_INPUTS = ("missing traindir", "no runargs", "no checkpoint", "no such snapshot",
              "unreadable image", "unreadable video", "missing split", "incomplete runargs",
              "unwritable outdir", "moved data", "no best checkpoint")


@pytest.mark.slow  # uses the trained run
@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_error_line(run_dir, tmp_path, capsys, case):
    argv, message = _bad_inputs(run_dir, tmp_path)[case]
    assert run_fcn_test(*argv) == EXIT_USER_ERROR
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fcn_test.py: error: "), lines
    assert re.search(message, lines[0]), lines[0]


@pytest.mark.parametrize("argv, message", [
    (["--first2viz", "3", "--last2viz", "1"], "--first2viz 3 is after --last2viz 1"),
    (["--imagepath", "x.png", "--batch_size", "2", "--last2viz", "9"],
     "--batch_size, --last2viz only apply when scoring a split"),
    (["--moviepath", "x.mp4", "--save_predictions"], "--save_predictions .* not of a --moviepath"),
    (["--best", "--afteriter", "4"], "--best and --afteriter each pick the checkpoint: give one"),
    (["--overlap", "0.2"], "--overlap only applies to sliding windows: add --tile H W"),
    (["--scales", "1", "0"], "--scales: must be > 0, got 0"),
])
def test_flag_combinations_that_cannot_work_are_rejected(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        fcn_test.build_parser().parse_args(["--traindir", "run", *argv])
    assert exit_info.value.code == EXIT_USER_ERROR
    assert re.search(message, capsys.readouterr().err.strip().splitlines()[-1])


@pytest.mark.slow  # uses the trained run
def test_moved_data_is_found_with_datapath(run_dir, data, tmp_path):
    datapath, _ = data
    moved = tmp_path / "moved_run"
    shutil.copytree(run_dir, moved)
    runargs = json.loads((moved / "runargs").read_text())
    (moved / "runargs").write_text(json.dumps(dict(runargs, datapath=str(tmp_path / "gone"))))
    assert run_fcn_test("--traindir", moved, "--datapath", datapath, "--last2viz", 0,
                        "--outdir", tmp_path / "out") == 0
    assert read_metrics(tmp_path / "out")["num_images"] == len(VAL_SIZES)


@pytest.mark.slow  # uses the trained run
def test_a_damaged_newest_checkpoint_falls_back_to_an_older_one(run_dir, tmp_path, capsys):
    damaged = tmp_path / "damaged_run"
    shutil.copytree(run_dir, damaged)  # copies: the snapshots stop sharing the latest's files
    (data_file,) = damaged.glob("fcn.ckpt.data-*")
    data_file.write_bytes(data_file.read_bytes()[:-100])
    assert run_fcn_test("--traindir", damaged, "--last2viz", 0, "--outdir", tmp_path / "out") == 0
    assert re.search(r"warning: checkpoint .*fcn\.ckpt is damaged", capsys.readouterr().err)
    assert read_metrics(tmp_path / "out")["checkpoint"] != "fcn.ckpt"


@pytest.mark.slow  # uses the trained run
def test_a_full_disk_under_the_outputs_is_one_line(run_dir, tmp_path, capsys, monkeypatch):
    def disk_full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(evaluation, "write_json", disk_full)
    assert run_fcn_test("--traindir", run_dir, "--last2viz", 0, "--outdir", tmp_path / "out") \
        == EXIT_USER_ERROR
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.fullmatch(rf"fcn_test.py: error: no space left on {tmp_path / 'out'}: [\d.]+ MB "
                        rf"free \(writing the test outputs\); free some space or use another "
                        rf"folder", last), last


@pytest.mark.slow  # uses the trained run
def test_a_damaged_record_names_its_file_and_the_converter(run_dir, data, tmp_path, capsys):
    datapath, _ = data
    damaged = tmp_path / "data"
    shutil.copytree(datapath, damaged)
    val_file = damaged / DATASET / "validation.tfrecords"
    records = bytearray(val_file.read_bytes())
    records[len(records) // 2] ^= 0xFF  # inside a payload: the length headers still walk
    val_file.write_bytes(bytes(records))
    assert run_fcn_test("--traindir", run_dir, "--datapath", damaged, "--last2viz", 0,
                        "--outdir", tmp_path / "out") == EXIT_USER_ERROR
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"fcn_test.py: error: corrupt records in {val_file} (")
    assert last.endswith(f"rebuild it with: python utils/folder_to_records.py --images "
                         f"IMAGE_DIR --labels LABEL_DIR --name {DATASET} --num_classes N "
                         f"--out {damaged / DATASET}")


@pytest.mark.slow  # uses the trained run
def test_split_items_carry_the_source_image_label_and_prediction(run_dir, data):
    _, val_labels = data
    run = TrainedRun(str(run_dir))
    plan = run.inference_plan(pixels=0)
    with run.predictor(run.checkpoint()) as predictor, SplitPredictor(
            predictor, run.dataset(), run.datapath, "val", plan, batch_size=2) as split:
        items = list(split)
    assert [item.filename for item in items] == sorted(val_labels)
    for item in items:
        np.testing.assert_array_equal(item.label, val_labels[item.filename])
        assert item.image.shape == item.label.shape + (3,) and item.image.dtype == np.uint8
        assert item.prediction.shape == item.label.shape and item.prediction.dtype == np.uint8


@pytest.mark.slow  # uses the trained run
def test_compare_runs_reuses_fcn_test_outputs_and_scores_the_rest(run_dir, default_eval,
                                                                   tmp_path, capsys):
    step = SNAPSHOT_STEPS[-1]
    twin = tmp_path / "twin"  # the same weights, called another seed of the recipe
    shutil.copytree(run_dir, twin)
    runargs = json.loads((twin / "runargs").read_text())
    (twin / "runargs").write_text(json.dumps(dict(runargs, seed=runargs["seed"] + 1)))
    shutil.rmtree(twin / f"test_val_{step}")
    capsys.readouterr()
    assert run_main(compare_runs.main, compare_runs.build_parser(),
                    [str(run_dir), str(twin)]) == 0
    out = capsys.readouterr().out
    assert f"A: reusing {run_dir / f'test_val_{step}'}" in out
    assert f"B: scoring {twin} (step {step}) into {twin / f'test_val_{step}'}" in out
    assert (twin / f"test_val_{step}" / "per_image_counts.npz").is_file()
    assert re.search(r"^B - A: mIoU \+0\.0 \[\+0\.0, \+0\.0\] .*: no detectable difference$",
                     out, re.MULTILINE), out
    seeds = f"{runargs['seed']}, {runargs['seed'] + 1}"
    assert f"2 runs of one recipe (seeds {seeds}): mIoU " in out and "± 0.0" in out


@pytest.mark.slow  # uses the trained run
def test_the_script_exits_2_with_one_line_and_no_traceback(run_dir, tmp_path):
    result = subprocess.run(
        [sys.executable, "fcn_test.py", "--traindir", str(run_dir), "--afteriter", "3"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_SECS)
    assert result.returncode == EXIT_USER_ERROR
    assert result.stderr.strip().splitlines() == [
        f"fcn_test.py: error: no snapshot fcn.ckpt_3 in {run_dir}; available --afteriter values: 2, 4"]


@pytest.mark.slow  # uses the trained run
def test_notebook_runs_top_to_bottom(run_dir, monkeypatch):
    monkeypatch.setenv("SEGMENTOR_RUN", str(run_dir))
    notebook = nbformat.read(REPO_ROOT / "notebooks" / "play-with-me.ipynb", as_version=4)
    client = NotebookClient(notebook, timeout=SUBPROCESS_TIMEOUT_SECS, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO_ROOT / "notebooks")}})
    client.execute()  # raises CellExecutionError on the first failing cell
    outputs = [output for cell in notebook.cells if cell.cell_type == "code"
               for output in cell.outputs]
    assert sum("image/png" in output.get("data", {}) for output in outputs) >= 4
    printed = "".join(output.get("text", "") for output in outputs)
    assert str(run_dir) in printed and "mIoU" in printed


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get_json(url):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


@pytest.mark.slow  # uses the trained run
def test_tensorboard_serves_the_runs_loss_and_val_miou(run_dir, tmp_path):
    links = tmp_path / "tboards"
    links.mkdir()
    subprocess.run([sys.executable, "tboards/createlinks", "--runs_dir", str(run_dir.parent),
                    "--links_dir", str(links)], cwd=REPO_ROOT, check=True, capture_output=True)
    assert (links / run_dir.name).is_symlink()
    port = _free_port()
    with open(tmp_path / "tensorboard.log", "w") as log:
        server = subprocess.Popen(
            ["tensorboard", "--logdir", str(links), "--host", "127.0.0.1", "--port", str(port),
             "--load_fast", "false"], stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}/data/plugin/scalars"
        tags, deadline = {}, time.monotonic() + 120
        while run_dir.name not in tags and time.monotonic() < deadline:
            time.sleep(1)
            try:
                tags = _get_json(f"{base}/tags")
            except (urllib.error.URLError, ConnectionError):
                assert server.poll() is None, (tmp_path / "tensorboard.log").read_text()[-2000:]
        assert {"train/loss", "val/miou"} <= set(tags.get(run_dir.name, {})), tags
        values = _get_json(f"{base}/scalars?run={run_dir.name}&tag=val/miou")
        assert [step for _, step, _ in values] == [2, 4]
        assert all(0 <= value <= 1 for _, _, value in values)
    finally:
        server.terminate()
        server.wait(timeout=30)
