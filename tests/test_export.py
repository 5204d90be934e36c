"""fcn_export.py and utils/export.py: every network exports, the exports equal their
checkpoint, load without this project, score through fcn_test --model, and bad
input fails in one line without leaving anything behind.

Runs are made here without training: runargs plus a checkpoint of the eval
network's random initial weights (with batch-norm statistics and skip scores
made non-trivial), which is all an export reads. Images are tiny (32-48 px).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fcn_export
import fcn_test
import fcn_arch
from fcn_arch import ARCHS, FCN_FAMILY, FEATURE_EXTRACTORS, arch_from_settings
from utils import evaluation, shapes
from utils.checkpoints import GLOBAL_STEP_NAME, LATEST_NAME
from utils.datasets import read_dataset_meta, write_dataset_meta
from utils.labels import IGNORE_LABEL
from utils.errors import EXIT_USER_ERROR, SegMentorError, run_main
from utils.export import METADATA_FILE, SAVEDMODEL_METADATA_DIR, TFLITE_FILE, load_exported
from utils.run_folder import write_runargs
from utils.run_settings import RunSettings
from utils.tf_records import RecordWriter, encode_label_png
from utils.tfcompat import tf
from utils.tta import pad_bottom_right
from encoded_images import encode_image

REPO_ROOT = Path(__file__).resolve().parents[1]
DATASET = "tiny_export"
PIXELS = 32
TRAIN_IMAGES = 4
VAL_SIZES = ((30, 41), (32, 32), (25, 19))  # (height, width): odd sizes on purpose
STEP = 7
SUBPROCESS_TIMEOUT_SECS = 300


@pytest.fixture(scope="module")
def datapath(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    files = {"train": "training.tfrecords", "val": "validation.tfrecords"}
    with RecordWriter(root / DATASET / files["train"]) as writer:
        for index in range(TRAIN_IMAGES):
            image, label = shapes.make_sample(np.random.default_rng([0, index]), PIXELS)
            writer.write(encode_image(image), "png", encode_label_png(label), PIXELS, PIXELS,
                         f"train_{index}.png")
    with RecordWriter(root / DATASET / files["val"]) as writer:
        for index, (height, width) in enumerate(VAL_SIZES):
            image, label = shapes.make_sample(np.random.default_rng([1, index]), 48)
            label = label[:height, :width].copy()
            label[0] = IGNORE_LABEL
            writer.write(encode_image(image[:height, :width]), "png", encode_label_png(label), height,
                         width, f"val_{index}.png")
    write_dataset_meta(root / DATASET, {
        "name": DATASET, "class_names": list(shapes.CLASS_NAMES),
        "colors": [list(color) for color in shapes.CLASS_COLORS],
        "splits": {"train": {"file": files["train"], "count": TRAIN_IMAGES},
                   "val": {"file": files["val"], "count": len(VAL_SIZES)}}})
    return root


def make_run(run_dir, datapath, basenet, **arch_settings):
    """A run folder holding runargs and a checkpoint of randomised eval-network weights."""
    runargs = dict(basenet=basenet, dataset=DATASET, datapath=str(datapath), pixels=PIXELS,
                   **arch_settings)
    os.makedirs(run_dir)
    write_runargs(run_dir, runargs)
    rng = np.random.default_rng(0)
    with tf.Graph().as_default():
        images = tf.placeholder(tf.float32, [1, PIXELS, PIXELS, 3])
        arch_from_settings(RunSettings.from_runargs(runargs), len(shapes.CLASS_NAMES),
                           is_training=False).build_net(images)
        tf.train.get_or_create_global_step()
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            sess.run(tf.assign(tf.train.get_global_step(), STEP))
            # Zero skip scores and unit batch-norm statistics would hide a lost skip or a
            # batch norm left in training mode; give them values training would.
            for var in tf.global_variables():
                name = var.op.name
                if "score_" in name or "moving_mean" in name:
                    var.load(rng.normal(0, 0.1, var.shape).astype(np.float32), sess)
                elif "moving_variance" in name:
                    var.load(rng.uniform(0.5, 2.0, var.shape).astype(np.float32), sess)
            tf.train.Saver().save(sess, os.path.join(run_dir, LATEST_NAME))
    return run_dir


@pytest.fixture(scope="module")
def run_dir(datapath, tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("runs") / "mobilenet_v1", datapath, "mobilenet_v1",
                    fcn16=True)


@pytest.fixture
def unrendered(monkeypatch):
    """The paths fcn_test draws its pictures to, left unrendered: matplotlib takes a good
    part of a second a picture here, and what they show is checked in test_visualization
    and test_test_script; these tests check which pictures an export's evaluation draws."""
    paths = []
    monkeypatch.setattr(evaluation, "save_figure", lambda figure, path: paths.append(Path(path)))
    return paths


def run_export(*argv):
    return run_main(fcn_export.main, fcn_export.build_parser(), [str(arg) for arg in argv])


def read_json(path):
    with open(path) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def savedmodel(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "savedmodel"
    assert run_export("--traindir", run_dir, "--format", "savedmodel", "--out", out) == 0
    return out


def test_savedmodel_equals_checkpoint_and_carries_classes(savedmodel, capsys):
    metadata = read_json(savedmodel / SAVEDMODEL_METADATA_DIR / METADATA_FILE)
    assert metadata["class_names"] == list(shapes.CLASS_NAMES)
    assert metadata["colors"] == [list(color) for color in shapes.CLASS_COLORS]
    assert metadata["step"] == STEP and metadata["pixels"] == PIXELS
    assert metadata["check"]["num_images"] == len(VAL_SIZES)
    assert metadata["check"]["max_abs_difference"] <= 1e-4
    assert not [name for name in os.listdir(savedmodel.parent) if name.startswith(".")]


@pytest.mark.parametrize("quantize", ["none", pytest.param("float16", marks=pytest.mark.slow),
                                      pytest.param("int8", marks=pytest.mark.slow)])
def test_tflite_exports_check_and_segment_at_source_size(run_dir, tmp_path, quantize, capsys,
                                                         unrendered):
    out = tmp_path / quantize
    assert run_export("--traindir", run_dir, "--format", "tflite", "--quantize", quantize,
                      "--out", out, "--pixels", 48) == 0
    printed = capsys.readouterr().out
    assert "mIoU" in printed and "max |probability difference|" in printed
    metadata = read_json(out / METADATA_FILE)
    assert metadata["quantize"] == quantize and metadata["pixels"] == 48
    if quantize == "none":
        assert metadata["check"]["max_abs_difference"] <= 1e-4
    with load_exported(out / TFLITE_FILE) as model:
        assert model.network.pixels == 48
        image = np.random.default_rng(3).integers(0, 256, (21, 57, 3), dtype=np.uint8)
        probabilities = model.probabilities(image)
        assert probabilities.shape == (21, 57, len(shapes.CLASS_NAMES))
        np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=0.02)
        assert model.segment(image).shape == (21, 57)
        # The predictor seam: each image padded to P x P with the net's colour, cropped back.
        assert model.pad_rgb == fcn_arch.pad_rgb(metadata["basenet"])
        batch = np.stack([image[:20, :40], image[1:, 17:]]).astype(np.float32)
        got = model.predict_probabilities(batch)
        assert got.shape == (2, 20, 40, len(shapes.CLASS_NAMES))
        np.testing.assert_array_equal(
            got[1], model.network(pad_bottom_right(batch[1], 48, 48, model.pad_rgb)[np.newaxis])[0, :20, :40])
    if quantize == "none":
        _fcn_test_scores_a_tflite_export_like_its_run(run_dir, out / TFLITE_FILE, tmp_path,
                                                      unrendered)


def _fcn_test_scores_a_tflite_export_like_its_run(run_dir, model, tmp_path, unrendered):
    from_run, from_model = tmp_path / "run", tmp_path / "model"
    assert run_main(fcn_test.main, fcn_test.build_parser(),
                    ["--traindir", str(run_dir), "--pixels", "48", "--flip", "--last2viz", "0",
                     "--save_predictions", "--outdir", str(from_run)]) == 0
    assert run_main(fcn_test.main, fcn_test.build_parser(),
                    ["--model", str(model), "--flip", "--batch_size", "2", "--last2viz", "0",
                     "--save_predictions", "--outdir", str(from_model)]) == 0
    metrics = read_json(from_model / "metrics.json")
    assert metrics["test_time"]["flip"] and metrics["pixels"] == 48
    assert metrics["num_images"] == len(VAL_SIZES)
    for name in os.listdir(from_run / "predictions"):
        expected = np.asarray(Image.open(from_run / "predictions" / name))
        got = np.asarray(Image.open(from_model / "predictions" / name))
        # Same function within float32 reordering: only near-ties may flip.
        assert got.shape == expected.shape and np.mean(got == expected) > 0.995
    # --last2viz 0: only the confusion heat map and the worst images are drawn.
    assert {path.relative_to(from_model).parts[0] for path in unrendered
            if from_model in path.parents} == {"confusion.png", "viz"}
    # --scales and --tile need a network of any input size.
    assert run_main(fcn_test.main, fcn_test.build_parser(),
                    ["--model", str(model), "--scales", "1", "1.5"]) == EXIT_USER_ERROR


STANDALONE_LOADER = """
import json, os, sys
import numpy as np
try:
    import utils.export
except ImportError:
    pass
else:
    sys.exit("the project is importable")
import tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
serve = model.signatures["serving_default"]
images = np.random.default_rng(0).integers(0, 256, (2, 27, 45, 3), dtype=np.uint8)
out = serve(images=tf.constant(images))
with open(os.path.join(sys.argv[1], "assets.extra", "segmentor.json")) as f:
    classes = json.load(f)["class_names"]
print(json.dumps(dict(classes_dtype=out["classes"].dtype.name,
                      classes_shape=out["classes"].shape.as_list(),
                      probabilities_dtype=out["probabilities"].dtype.name,
                      probabilities_shape=out["probabilities"].shape.as_list(),
                      argmax_agrees=bool(np.all(np.argmax(out["probabilities"].numpy(), -1)
                                                == out["classes"].numpy())),
                      class_names=classes)))
"""


@pytest.mark.slow  # a fresh interpreter loading TensorFlow
def test_savedmodel_runs_in_plain_tensorflow_without_the_project(savedmodel, tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-I", "-c", STANDALONE_LOADER, str(savedmodel)],
                            cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=SUBPROCESS_TIMEOUT_SECS)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == dict(classes_dtype="int32", classes_shape=[2, 27, 45],
                          probabilities_dtype="float32",
                          probabilities_shape=[2, 27, 45, len(shapes.CLASS_NAMES)],
                          argmax_agrees=True, class_names=list(shapes.CLASS_NAMES))


def test_fcn_test_scores_an_export_like_its_run(run_dir, savedmodel, tmp_path, capsys,
                                                unrendered):
    from_run, from_model = tmp_path / "run", tmp_path / "model"
    assert run_main(fcn_test.main, fcn_test.build_parser(),
                    ["--traindir", str(run_dir), "--outdir", str(from_run),
                     "--save_predictions"]) == 0
    assert run_main(fcn_test.main, fcn_test.build_parser(),
                    ["--model", str(savedmodel), "--outdir", str(from_model),
                     "--last2viz", "2", "--save_predictions"]) == 0
    expected, got = read_json(from_run / "metrics.json"), read_json(from_model / "metrics.json")
    assert got["num_images"] == len(VAL_SIZES) and got["step"] == STEP
    assert got["miou"] == pytest.approx(expected["miou"], abs=1e-6)
    assert got["per_class_iou"] == pytest.approx(expected["per_class_iou"], abs=1e-6, nan_ok=True)
    drawn = [path.relative_to(from_model / "viz").parts for path in unrendered
             if from_model / "viz" in path.parents]
    assert sorted({parts[0] for parts in drawn}) == ["val_0.png", "val_1.png", "worst"]
    assert len([parts for parts in drawn if parts[0] == "worst"]) == len(VAL_SIZES)
    assert from_model / "confusion.png" in unrendered
    for name in os.listdir(from_run / "predictions"):
        np.testing.assert_array_equal(np.asarray(Image.open(from_model / "predictions" / name)),
                                      np.asarray(Image.open(from_run / "predictions" / name)))
    assert (from_model / "confusion.csv").is_file()


def _bad_inputs(run_dir, datapath, tmp_path):
    empty_run = tmp_path / "empty_run"
    empty_run.mkdir()
    write_runargs(empty_run, dict(basenet="mobilenet_v1", dataset=DATASET, pixels=PIXELS,
                                  datapath=str(datapath)))
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    # The run's data as a machine without the training records has it: val only.
    no_train = tmp_path / "no_train"
    (no_train / DATASET).mkdir(parents=True)
    (no_train / DATASET / "validation.tfrecords").write_bytes(
        (datapath / DATASET / "validation.tfrecords").read_bytes())
    meta = read_dataset_meta(datapath / DATASET)
    del meta["splits"]["train"]
    write_dataset_meta(no_train / DATASET, meta)
    out = tmp_path / "out"
    return {
        "no checkpoint": (["--traindir", empty_run, "--format", "savedmodel", "--out", out],
                          "no checkpoint"),
        "non-empty output": (["--traindir", run_dir, "--format", "savedmodel", "--out", full],
                             "exists and is not empty"),
        "int8 without training records": (
            ["--traindir", run_dir, "--format", "tflite", "--quantize", "int8", "--out", out,
             "--datapath", no_train], "calibrates on the run's training images"),
        "tflite at native size": (["--traindir", run_dir, "--format", "tflite", "--pixels", 0,
                                   "--out", out], "fixed input size"),
    }


@pytest.mark.parametrize("case", ["no checkpoint", "non-empty output",
                                  "int8 without training records", "tflite at native size"])
def test_bad_input_is_one_error_line_and_writes_nothing(run_dir, datapath, tmp_path, capsys, case):
    argv, message = _bad_inputs(run_dir, datapath, tmp_path)[case]
    before = sorted(os.listdir(tmp_path))
    assert run_export(*argv) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip()
    assert err.startswith("fcn_export.py: error:") and message in err and "\n" not in err
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.parametrize("argv, message", [
    (["--format", "onnx"], "invalid choice: 'onnx'"),
    (["--format", "savedmodel", "--quantize", "int8"], "does not apply to --format savedmodel"),
])
def test_bad_flags_are_one_line(run_dir, tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        fcn_export.build_parser().parse_args(
            ["--traindir", str(run_dir), "--out", str(tmp_path / "out"), *argv])
    assert exit_info.value.code == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in err


def test_a_failed_float_check_is_an_error_and_leaves_nothing(run_dir, tmp_path, capsys,
                                                             monkeypatch):
    from utils import export
    monkeypatch.setattr(export, "FLOAT_TOLERANCE", -1.0)  # nothing can pass
    out = tmp_path / "out"
    assert run_export("--traindir", run_dir, "--format", "savedmodel", "--out", out) \
        == EXIT_USER_ERROR
    assert "differs from the checkpoint" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize("basenet", sorted(set(FEATURE_EXTRACTORS) - {"mobilenet_v1"}))
def test_every_feature_extractor_exports_with_fcn16(basenet, datapath, tmp_path):
    run = make_run(tmp_path / "run", datapath, basenet, fcn16=True)
    # SavedModel for the big nets (TFLite of vgg_16 is 0.5 GB), TFLite for the others.
    export_format = "savedmodel" if basenet in ("vgg_16", "resnet_v1_50") else "tflite"
    assert run_export("--traindir", run, "--format", export_format, "--out", tmp_path / "out",
                      "--check_images", 1) == 0


# Runargs of each decoder once beyond the FCN16 above (taken from the registry, so a new
# decoder is exported too): deeplabv3plus at an atrous output stride, FCN4 with trainable
# upsampling (transposed convolutions).
DECODER_EXTRAS = {"deeplabv3plus": dict(output_stride=16)}
DECODER_RUNARGS = {
    **{name: dict(extended_arch=name, **DECODER_EXTRAS.get(name, {}),
                  **(dict(fcn16=True, fcn8=True) if name in FCN_FAMILY else {}))
       for name in ARCHS if name != "fcn"},
    "fcn4 trainable upsampling": dict(fcn16=True, fcn8=True, fcn4=True,
                                      trainable_upsampling=True),
}


@pytest.mark.slow
@pytest.mark.parametrize("decoder", list(DECODER_RUNARGS))
def test_every_decoder_exports(decoder, datapath, tmp_path):
    run = make_run(tmp_path / "run", datapath, "mobilenet_v1", **DECODER_RUNARGS[decoder])
    assert run_export("--traindir", run, "--format", "tflite", "--out", tmp_path / "out",
                      "--check_images", 1) == 0


@pytest.mark.slow
def test_fcn_test_tta_and_tiles_with_a_savedmodel_of_any_size(run_dir, tmp_path):
    """A SavedModel exported with --pixels 0 runs at any size, so --scales and --tile
    apply to it as to its run (the scaled images rounded to the uint8 it takes)."""
    model = tmp_path / "native"
    assert run_export("--traindir", run_dir, "--format", "savedmodel", "--pixels", 0,
                      "--check_images", 1, "--out", model) == 0
    settings = ["--scales", "1", "1.5", "--flip", "--tile", "24", "24", "--last2viz", "0",
                "--save_predictions"]
    from_run, from_model = tmp_path / "run", tmp_path / "model"
    assert run_main(fcn_test.main, fcn_test.build_parser(),
                    ["--traindir", str(run_dir), "--pixels", "0", "--outdir", str(from_run)]
                    + settings) == 0
    assert run_main(fcn_test.main, fcn_test.build_parser(),
                    ["--model", str(model), "--outdir", str(from_model)] + settings) == 0
    metrics = read_json(from_model / "metrics.json")
    assert metrics["test_time"]["scales"] == [1.0, 1.5] and metrics["test_time"]["tile"] == [24, 24]
    agreement = [np.mean(np.asarray(Image.open(from_model / "predictions" / name))
                         == np.asarray(Image.open(from_run / "predictions" / name)))
                 for name in os.listdir(from_run / "predictions")]
    assert len(agreement) == len(VAL_SIZES) and min(agreement) > 0.98, agreement


def test_fcn_test_segments_photos_with_an_export(savedmodel, tmp_path):
    photo = np.random.default_rng(5).integers(0, 256, (23, 31, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    assert run_main(fcn_test.main, fcn_test.build_parser(),
                    ["--model", str(savedmodel), "--imagepath", str(tmp_path / "photo.png"),
                     "--outdir", str(tmp_path / "out"), "--save_predictions"]) == 0
    prediction = np.asarray(Image.open(tmp_path / "out" / "predictions" / "photo.png"))
    assert prediction.shape == (23, 31) and prediction.max() < len(shapes.CLASS_NAMES)
    assert (tmp_path / "out" / "photo_overlay.png").is_file()


@pytest.mark.parametrize("argv, message", [
    ([], "pass either --traindir (a training run) or --model (an export)"),
    (["--model", "exp", "--pixels", "0", "--best"], "--best, --pixels only apply to --traindir"),
    (["--traindir", "run", "--model", "exp"], "pass either --traindir"),
    (["--model", "exp", "--pixels", "0"], "--pixels only applies to --traindir"),
    (["--model", "exp", "--afteriter", "3"], "--afteriter only applies to --traindir"),
    (["--model", "exp", "--best"], "--best only applies to --traindir"),
])
def test_fcn_test_model_flag_combinations(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        fcn_test.build_parser().parse_args(argv)
    assert exit_info.value.code == EXIT_USER_ERROR
    assert message in capsys.readouterr().err


def test_fcn_test_model_that_is_no_export_is_one_line(tmp_path, capsys):
    assert run_main(fcn_test.main, fcn_test.build_parser(), ["--model", str(tmp_path)]) \
        == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip()
    assert "neither a SavedModel folder nor a .tflite file" in err and "\n" not in err


@pytest.mark.slow
def test_infer_bench_times_every_deployment(run_dir, capsys):
    from utils import infer_bench
    assert run_main(infer_bench.main, infer_bench.build_parser(),
                    ["--traindir", str(run_dir), "--images", "2", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.startswith("| ")][1:]
    assert [row.split(" | ")[0][2:] for row in rows] == [
        "graph (checkpoint)", "SavedModel", "TFLite float32", "TFLite float16", "TFLite int8"]
    assert all(float(cell) > 0 for row in rows for cell in row.strip("| ").split(" | ")[1:])
    assert "TFLite int8 / float graph, 1 thread(s):" in printed


def test_quantized_exports_warn_above_one_point_and_float_ones_fail(capsys):
    from utils.export import QUANTIZATIONS, CheckResult, _judge
    lossy = CheckResult(num_images=20, max_abs_difference=0.2, miou_checkpoint=0.60,
                        miou_export=0.585)
    _judge(lossy, QUANTIZATIONS["int8"], "tflite", "int8")
    captured = capsys.readouterr()
    assert "mIoU 60.0 (checkpoint) vs 58.5 (export), drop 1.50 points" in captured.out
    assert "warning: tflite int8 loses 1.5 mIoU points" in captured.err
    _judge(CheckResult(20, 0.01, 0.60, 0.595), QUANTIZATIONS["float16"], "tflite", "float16")
    assert capsys.readouterr().err == ""
    with pytest.raises(SegMentorError, match="differs from the checkpoint"):
        _judge(CheckResult(20, 2e-4, 0.60, 0.60), QUANTIZATIONS["none"], "tflite", "none")
