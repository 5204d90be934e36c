"""python -m utils.check_dataset on tiny self-made records, one defect at a time."""
import os
import re

import numpy as np
import pytest
from PIL import Image

from utils import check_dataset
from utils.datasets import how_to_make, load_dataset, write_dataset_meta
from utils.labels import IGNORE_LABEL
from utils.errors import run_main
from utils.tf_records import RecordWriter, encode_label_png
from utils.visualization import IGNORE_COLOR
from encoded_images import encode_image

NAME = "tiny11"
NUM_CLASSES = 11  # CamVid's count: label 200 is far outside it
SPLIT_FILES = {"train": "training.tfrecords", "val": "validation.tfrecords"}


def _pair(index, height=16, width=20):
    """Image and label of record `index`: each class in a vertical band, a void top row."""
    rng = np.random.default_rng(index)
    image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    label = np.tile((np.arange(width) + index) % NUM_CLASSES, (height, 1)).astype(np.uint8)
    label[0] = IGNORE_LABEL
    return image, label


def _write(datapath, counts=None, edit=None, **meta):
    """Write 4 train and 3 val pairs; `edit(split, index, image, label)` may return
    (image, label, stored_height, stored_width) to plant a defect."""
    written = {"train": 4, "val": 3}
    for split, count in written.items():
        with RecordWriter(datapath / NAME / SPLIT_FILES[split]) as writer:
            for index in range(count):
                image, label = _pair(index)
                height, width = label.shape
                if edit:
                    image, label, height, width = edit(split, index, image, label) or (
                        image, label, height, width)
                writer.write(encode_image(image), "png", encode_label_png(label), height, width,
                             f"{split}_{index}.png")
    counts = counts or written
    write_dataset_meta(datapath / NAME, {
        "name": NAME, "class_names": [f"c{i}" for i in range(NUM_CLASSES)],
        "splits": {split: {"file": SPLIT_FILES[split], "count": counts[split]}
                   for split in written}, **meta})
    return load_dataset(NAME, str(datapath))


@pytest.fixture
def undrawn(monkeypatch):
    """The check without rendering its picture (85% of a check's time): for the tests that
    read the lines only; test_clean_records_pass_with_a_summary_and_a_picture draws it."""
    drawn = []
    monkeypatch.setattr(check_dataset, "save_figure", lambda figure, path: drawn.append(path))
    return drawn


def _check(datapath, capsys, *extra):
    status = run_main(check_dataset.main, check_dataset.build_parser(),
                      ["--dataset", NAME, "--datapath", str(datapath), "--outdir",
                       str(datapath / "out"), *extra])
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    warnings = [line for line in lines if line.startswith("warning: ")]
    return status, captured.out, errors, warnings


def _fix(spec, datapath):
    return f"rerun the converter: {how_to_make(spec, str(datapath))}"


def test_clean_records_pass_with_a_summary_and_a_picture(tmp_path, capsys):
    _write(tmp_path)
    status, out, errors, warnings = _check(tmp_path, capsys)
    assert status == 0 and errors == warnings == [] and out.rstrip().endswith("no problems found")
    assert ("train: 4 records (dataset.json: 4), image sizes 16x20 (4), label values 0..10, 255, "
            "ignored pixels 6.2%") in out
    assert re.search(r"^c0\s+-\s+7\.5\s+6\.7$", out, re.MULTILINE), out  # train: 6 of 80 columns
    # The picture's legend shows every class the labels hold, and 'ignored', in the dataset's
    # colours: solid swatches of exactly those colours (c0 is black, like the text: skipped).
    picture = np.array(Image.open(tmp_path / "out" / f"check_{NAME}.png").convert("RGB"))
    spec = load_dataset(NAME, str(tmp_path))
    assert spec.colors[0] == (0, 0, 0)
    for color in (*spec.colors[1:], IGNORE_COLOR):
        assert np.all(picture == color, axis=-1).sum() >= 30, color


def test_label_200_in_an_11_class_set_names_the_value_and_records(tmp_path, capsys, undrawn):
    def plant(split, index, image, label):
        if split == "val" and index in (1, 2):
            label[5, 5] = 200
            return image, label, *label.shape

    spec = _write(tmp_path, edit=plant)
    status, _, errors, _ = _check(tmp_path, capsys)
    assert status == check_dataset.EXIT_PROBLEMS
    assert errors == [f"error: val: label values 200 are outside 0..10 and not the ignore label "
                      f"255, first in records #1 val_1.png, #2 val_2.png; labels must hold "
                      f"class indices: {_fix(spec, tmp_path)}"]


def test_a_label_of_another_size_is_one_line(tmp_path, capsys, undrawn):
    def plant(split, index, image, label):
        if split == "train" and index == 3:
            return image, label[:, :18].copy(), 16, 20

    spec = _write(tmp_path, edit=plant)
    status, _, errors, _ = _check(tmp_path, capsys, "--split", "train")
    assert status == check_dataset.EXIT_PROBLEMS
    assert errors == [f"error: train: 1 record(s) whose label size differs from the image's: "
                      f"#3 train_3.png (label 16x18, image 16x20); {_fix(spec, tmp_path)}"]


def test_a_count_that_is_not_dataset_json_s(tmp_path, capsys, undrawn):
    spec = _write(tmp_path, counts={"train": 4, "val": 5})
    status, _, errors, _ = _check(tmp_path, capsys)
    assert status == check_dataset.EXIT_PROBLEMS
    path = os.path.join(str(tmp_path), NAME, SPLIT_FILES["val"])
    assert errors == [f"error: val: 3 records in {path}, dataset.json says 5; {_fix(spec, tmp_path)}"]


def test_a_truncated_records_file(tmp_path, capsys, undrawn):
    spec = _write(tmp_path)
    path = tmp_path / NAME / SPLIT_FILES["train"]
    path.write_bytes(path.read_bytes()[:-30])
    status, _, errors, _ = _check(tmp_path, capsys)
    assert status == check_dataset.EXIT_PROBLEMS
    assert len(errors) == 1, errors
    prefix = f"error: train: {path} is cut short or corrupt after record 3 ("
    suffix = f"); {_fix(spec, tmp_path)}"
    assert errors[0].startswith(prefix) and errors[0].endswith(suffix), errors[0]
    assert "truncated" in errors[0]


def test_mostly_ignored_labels_are_a_warning_not_an_error(tmp_path, capsys, undrawn):
    def mask(split, index, image, label):
        label[:12] = IGNORE_LABEL
        return image, label, *label.shape

    _write(tmp_path, edit=mask)
    status, _, errors, warnings = _check(tmp_path, capsys, "--split", "train")
    assert status == 0 and errors == []
    assert undrawn == [os.path.join(str(tmp_path / "out"), f"check_{NAME}.png")]
    assert warnings == ["warning: train: 75% of the pixels carry the ignore label 255: "
                        "are labels stored as 0/255 masks?"]


def test_frequencies_unlike_dataset_json_s_are_a_warning(tmp_path, capsys, undrawn):
    _write(tmp_path, class_frequencies=[1 / NUM_CLASSES] * NUM_CLASSES)
    status, _, errors, warnings = _check(tmp_path, capsys, "--split", "train")
    assert status == 0 and errors == []
    assert warnings == ["warning: train: class pixel frequencies differ from dataset.json by up "
                        "to 1.6 points (c0: 9.1% listed, 7.5% found); class weighting uses the "
                        "listed ones"]


def test_unknown_dataset_is_a_user_error(tmp_path, capsys):
    assert run_main(check_dataset.main, check_dataset.build_parser(),
                    ["--dataset", "nope", "--datapath", str(tmp_path)]) == 2
    assert "unknown dataset 'nope'" in capsys.readouterr().err


def test_label_values_are_listed_as_runs():
    counts = np.zeros(256, np.int64)
    counts[[0, 1, 2, 5, 7, 8, 255]] = 1
    assert check_dataset.value_ranges(counts) == "0..2, 5, 7..8, 255"


@pytest.mark.parametrize("size", [3, 30])
def test_the_picture_sample_is_seeded_and_bounded(size):
    sample, again = check_dataset.PairSample(16), check_dataset.PairSample(16)
    for index in range(size):
        sample.offer("train", index, "x", None, None)
        again.offer("train", index, "x", None, None)
    assert [pair[1] for pair in sample.pairs] == [pair[1] for pair in again.pairs]
    assert len(sample.pairs) == min(size, 16)
