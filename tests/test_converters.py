"""Dataset converters on tiny fake source trees: splits, label remapping, round trip, bad input."""
import errno
import io
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import scipy.io
from PIL import Image

from utils import camvid_to_records, coco_stuff_to_records, folder_to_records, tf_records
from utils import pascal_voc_augmented_to_records as pascal
from utils.converters import BadPairError
from utils.datasets import DATASETS, load_dataset, read_dataset_meta
from utils.labels import IGNORE_LABEL
from utils.errors import SegMentorError
from utils.tf_records import parse_example, read_records
from utils.tfcompat import tf

HEIGHT, WIDTH = 16, 24
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ fake sources


def _image(path, seed, image_format="PNG", size=(HEIGHT, WIDTH)):
    pixels = np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(pixels).save(path, format=image_format)
    return pixels


def _label(path, seed, num_values, extra=(), mode="L", size=(HEIGHT, WIDTH)):
    """Random class indices 0..num_values-1 plus each `extra` value in one corner pixel."""
    values = np.random.default_rng(seed).integers(0, num_values, size=size, dtype=np.uint8)
    for index, value in enumerate(extra):
        values[0, index] = value
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = Image.fromarray(values, mode="L")
    if mode == "P":  # VOC style: the palette index is the class, the colour is only for display
        image = image.convert("P")
        image.putpalette([channel for index in range(256) for channel in (index, 255 - index, 7)])
        image.putdata(values.ravel())
    image.save(path, format="PNG")
    return values


def _records(path):
    """{filename: dict(image, label, format, height, width)} decoded with PIL, no graph needed."""
    records = {}
    for serialized in tf.io.tf_record_iterator(str(path)):
        feature = tf.train.Example.FromString(serialized).features.feature
        name = feature["image/filename"].bytes_list.value[0].decode()
        image_bytes = feature["image/encoded"].bytes_list.value[0]
        records[name] = dict(
            image_bytes=image_bytes,
            image=np.asarray(Image.open(io.BytesIO(image_bytes)).convert("RGB")),
            label=np.asarray(Image.open(io.BytesIO(feature["label/encoded"].bytes_list.value[0]))),
            format=feature["image/format"].bytes_list.value[0].decode(),
            height=feature["image/height"].int64_list.value[0],
            width=feature["image/width"].int64_list.value[0])
    return records


def _camvid_tree(root, splits=(("train", 3), ("val", 2)), with_lists=True):
    """SegNet-layout CamVid; returns {split: {name: (image, label)}}."""
    tree = {}
    for split_index, (split, count) in enumerate(splits):
        tree[split] = {}
        lines = []
        for index in range(count):
            name = f"{split}_{index:03d}.png"
            seed = 100 * split_index + index
            image = _image(str(root / split / name), seed)
            label = _label(str(root / f"{split}annot" / name), seed, 11,
                           extra=(camvid_to_records.VOID_LABEL,))
            tree[split][name] = (image, label)
            lines.append(f"/SegNet/CamVid/{split}/{name} /SegNet/CamVid/{split}annot/{name}\n")
        if with_lists:
            (root / f"{split}.txt").write_text("".join(lines))
    return tree


def _folder_tree(root, count=5, num_classes=3):
    for index in range(count):
        _image(str(root / "images" / f"p{index}.jpg"), index, image_format="JPEG")
        _label(str(root / "labels" / f"p{index}.png"), index, num_classes)
    return str(root / "images"), str(root / "labels")


def _folder_convert(root, out, **kwargs):
    kwargs.setdefault("class_names", ("a", "b", "c"))
    return folder_to_records.convert(str(root / "images"), str(root / "labels"), "mine", str(out),
                                     **kwargs)


def _out_files(out):
    return sorted(os.listdir(out)) if os.path.isdir(out) else []


# ------------------------------------------------------------------------ CamVid


def test_camvid_splits_void_becomes_ignore_and_pixels_round_trip(tmp_path):
    tree = _camvid_tree(tmp_path / "CamVid")
    summary = camvid_to_records.convert(str(tmp_path / "CamVid"), str(tmp_path / "out"), workers=2)

    assert summary.counts == {"train": 3, "val": 2}
    assert _out_files(tmp_path / "out") == ["dataset.json", "training.tfrecords", "validation.tfrecords"]
    for split, file_name in (("train", "training.tfrecords"), ("val", "validation.tfrecords")):
        records = _records(tmp_path / "out" / file_name)
        assert sorted(records) == sorted(tree[split])
        for name, (image, label) in tree[split].items():
            record = records[name]
            assert record["format"] == "png" and (record["height"], record["width"]) == (HEIGHT, WIDTH)
            assert record["image_bytes"] == (tmp_path / "CamVid" / split / name).read_bytes()
            expected = np.where(label == camvid_to_records.VOID_LABEL, IGNORE_LABEL, label)
            np.testing.assert_array_equal(record["label"], expected)
            assert record["label"][0, 0] == IGNORE_LABEL


def test_camvid_dataset_json_has_classes_counts_and_train_frequencies(tmp_path):
    tree = _camvid_tree(tmp_path / "CamVid")
    camvid_to_records.convert(str(tmp_path / "CamVid"), str(tmp_path / "out"))

    meta = read_dataset_meta(str(tmp_path / "out"))
    assert meta["name"] == "camvid" and meta["ignore_label"] == IGNORE_LABEL
    assert meta["class_names"] == list(DATASETS["camvid"].class_names)
    assert meta["colors"] == [list(c) for c in DATASETS["camvid"].colors]
    assert meta["splits"] == {"train": {"file": "training.tfrecords", "count": 3},
                              "val": {"file": "validation.tfrecords", "count": 2}}
    assert meta["source"] == str(tmp_path / "CamVid")
    train_labels = np.stack([label for _, label in tree["train"].values()])
    pixels = np.bincount(train_labels[train_labels != camvid_to_records.VOID_LABEL], minlength=11)
    np.testing.assert_allclose(meta["class_frequencies"], pixels / pixels.sum())


def test_camvid_test_split_written_only_when_present(tmp_path):
    # No test.txt here: the test pairs come from the same-named files of test/ and testannot/.
    _camvid_tree(tmp_path / "CamVid", splits=(("train", 2), ("val", 1)))
    for index in range(2):
        _image(str(tmp_path / "CamVid" / "test" / f"t{index}.png"), 50 + index)
        _label(str(tmp_path / "CamVid" / "testannot" / f"t{index}.png"), 50 + index, 12)

    summary = camvid_to_records.convert(str(tmp_path / "CamVid"), str(tmp_path / "out"))

    assert summary.counts == {"train": 2, "val": 1, "test": 2}
    assert sorted(_records(tmp_path / "out" / "test.tfrecords")) == ["t0.png", "t1.png"]
    assert read_dataset_meta(str(tmp_path / "out"))["splits"]["test"]["count"] == 2

    shutil.rmtree(tmp_path / "CamVid" / "test")  # a source without test: no stale test records
    assert camvid_to_records.convert(str(tmp_path / "CamVid"), str(tmp_path / "out")).counts == {
        "train": 2, "val": 1}
    assert _out_files(tmp_path / "out") == ["dataset.json", "training.tfrecords", "validation.tfrecords"]


def test_records_read_by_the_feeder_parser_equal_the_source_pixels(tmp_path):
    tree = _camvid_tree(tmp_path / "CamVid", splits=(("train", 2), ("val", 1)))
    datapath = tmp_path / "data"
    camvid_to_records.convert(str(tmp_path / "CamVid"), str(datapath / "camvid"))

    spec = load_dataset("camvid", str(datapath))
    assert spec.split_counts == {"train": 2, "val": 1}
    with tf.Graph().as_default():
        path = str(datapath / "camvid" / "training.tfrecords")
        example = tf.data.make_one_shot_iterator(read_records(path).map(parse_example)).get_next()
        with tf.Session() as sess:
            for _ in range(2):
                parsed = sess.run(example)
                image, label = tree["train"][parsed["filename"].decode()]
                np.testing.assert_array_equal(parsed["image"], image)
                np.testing.assert_array_equal(
                    parsed["label"][..., 0], np.where(label == 11, IGNORE_LABEL, label))


# ------------------------------------------------------------------ VOC + SBD


def _sbd_mat(path, values):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    scipy.io.savemat(path, {"GTcls": {"Segmentation": values, "Boundaries": np.zeros(1),
                                      "CategoriesPresent": np.unique(values)}})


def _voc_sbd_tree(root):
    """VOC train {a, b}, val {c, d}; SBD train {b, c, e}, val {f}. Returns the labels by source."""
    voc, sbd = root / "VOCdevkit" / "VOC2012", root / "benchmark_RELEASE" / "dataset"
    voc_labels, sbd_labels = {}, {}
    for index, image_id in enumerate("abcd"):
        _image(str(voc / "JPEGImages" / f"{image_id}.jpg"), index, image_format="JPEG")
        voc_labels[image_id] = _label(str(voc / "SegmentationClass" / f"{image_id}.png"), index, 21,
                                      extra=(IGNORE_LABEL, 20), mode="P")
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("a\nb\n")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("c\nd\n")
    for index, image_id in enumerate("bcef"):
        _image(str(sbd / "img" / f"{image_id}.jpg"), 10 + index, image_format="JPEG")
        values = np.random.default_rng(10 + index).integers(0, 21, (HEIGHT, WIDTH), dtype=np.uint8)
        _sbd_mat(str(sbd / "cls" / f"{image_id}.mat"), values)
        sbd_labels[image_id] = values
    (sbd / "train.txt").write_text("b\nc\ne\n")
    (sbd / "val.txt").write_text("f\n")
    return voc_labels, sbd_labels


def test_voc_sbd_train_excludes_every_val_image_and_keeps_palette_indices(tmp_path):
    voc_labels, sbd_labels = _voc_sbd_tree(tmp_path / "src")
    voc_dir, sbd_dir = pascal.find_sources(str(tmp_path / "src"), None, None)
    summary = pascal.convert(voc_dir, sbd_dir, str(tmp_path / "out"))

    assert summary.counts == {"train": 4, "val": 2}
    train = _records(tmp_path / "out" / "training.tfrecords")
    val = _records(tmp_path / "out" / "validation.tfrecords")
    assert sorted(train) == ["a.jpg", "b.jpg", "e.jpg", "f.jpg"]
    assert sorted(val) == ["c.jpg", "d.jpg"]  # c is in SBD train too: it goes only to val
    np.testing.assert_array_equal(train["a.jpg"]["label"], voc_labels["a"])  # index, not colour
    assert train["a.jpg"]["label"][0, 0] == IGNORE_LABEL
    np.testing.assert_array_equal(train["b.jpg"]["label"], voc_labels["b"])  # VOC's label wins
    np.testing.assert_array_equal(train["e.jpg"]["label"], sbd_labels["e"])
    np.testing.assert_array_equal(val["c.jpg"]["label"], voc_labels["c"])
    assert train["e.jpg"]["format"] == "jpeg"
    meta = read_dataset_meta(str(tmp_path / "out"))
    assert meta["class_names"] == list(DATASETS["pascal_voc"].class_names)


def test_voc_sbd_explicit_folders_and_missing_sbd(tmp_path):
    _voc_sbd_tree(tmp_path / "src")
    voc = str(tmp_path / "src" / "VOCdevkit" / "VOC2012")
    sbd = str(tmp_path / "src" / "benchmark_RELEASE" / "dataset")
    only_voc = str(tmp_path / "src" / "VOCdevkit")  # holds VOC2012/ but no SBD
    with pytest.raises(SegMentorError, match="benchmark_RELEASE/dataset.*pass the folder with --sbd"):
        pascal.find_sources(only_voc, None, None)
    assert pascal.find_sources(None, voc, sbd) == (voc, sbd)



def test_voc_sbd_found_in_the_seeds_layout(tmp_path):
    """The seed's /data/VOCdevkit + /data/SBD/benchmark_RELEASE: --src /data finds both, and
    --voc/--sbd may name the archives' top folders."""
    root = tmp_path / "data"
    _voc_sbd_tree(root)
    (root / "SBD").mkdir()
    (root / "benchmark_RELEASE").rename(root / "SBD" / "benchmark_RELEASE")
    voc = str(root / "VOCdevkit" / "VOC2012")
    sbd = str(root / "SBD" / "benchmark_RELEASE" / "dataset")
    assert pascal.find_sources(str(root), None, None) == (voc, sbd)
    assert pascal.find_sources(None, str(root / "VOCdevkit"),
                               str(root / "SBD" / "benchmark_RELEASE")) == (voc, sbd)


# -------------------------------------------------------------------- COCO-Stuff


COCO_LABELS_TXT = "0: unlabeled\n1: person\n2: bicycle\n12: street sign\n92: banner\n"


def _coco_tree(root):
    """Label maps hold id - 1: person 0, bicycle 1, banner 91; 255 unlabeled."""
    labels = {}
    for split, folder in coco_stuff_to_records.SPLIT_FOLDERS.items():
        for index in range(2 if split == "train" else 1):
            name = f"{split}{index:012d}"
            _image(str(root / folder / f"{name}.jpg"), index, image_format="JPEG")
            values = np.random.default_rng(index).choice(np.array([0, 1, 91, 255], np.uint8),
                                                         size=(HEIGHT, WIDTH))
            path = root / coco_stuff_to_records.LABEL_MAPS_FOLDER / folder / f"{name}.png"
            os.makedirs(path.parent, exist_ok=True)
            Image.fromarray(values, mode="L").save(path)
            labels[f"{name}.jpg"] = values
    (root / "labels.txt").write_text(COCO_LABELS_TXT)
    return labels


def test_coco_stuff_ids_renumbered_contiguously_unlabeled_ignored(tmp_path):
    labels = _coco_tree(tmp_path / "coco")
    summary = coco_stuff_to_records.convert(str(tmp_path / "coco"), str(tmp_path / "out"))

    assert summary.counts == {"train": 2, "val": 1}
    meta = read_dataset_meta(str(tmp_path / "out"))
    assert meta["class_names"] == ["person", "bicycle", "banner"]  # unused id 12 dropped
    records = {**_records(tmp_path / "out" / "training.tfrecords"),
               **_records(tmp_path / "out" / "validation.tfrecords")}
    renumbered = np.array([0, 1] + [0] * 89 + [2] + [0] * 163 + [IGNORE_LABEL], np.uint8)
    for name, values in labels.items():
        np.testing.assert_array_equal(records[name]["label"], renumbered[values])


def test_coco_stuff_value_of_an_unused_id_is_an_error(tmp_path):
    _coco_tree(tmp_path / "coco")
    label_path = next((tmp_path / "coco" / "stuffthingmaps_trainval2017" / "val2017").iterdir())
    values = np.zeros((HEIGHT, WIDTH), np.uint8)
    values[3, 3] = 11  # id 12, street sign: never used by COCO
    Image.fromarray(values, mode="L").save(label_path)
    with pytest.raises(BadPairError, match=f"{label_path}.*value 11"):
        coco_stuff_to_records.convert(str(tmp_path / "coco"), str(tmp_path / "out"))


# ---------------------------------------------------------------- folder dataset


def test_folder_dataset_without_val_split_is_flagged_for_training(tmp_path, capsys):
    images, labels = _folder_tree(tmp_path, count=3)
    args = folder_to_records.build_parser().parse_args(
        ["--images", images, "--labels", labels, "--name", "mine", "--num_classes", "3",
         "--val_ratio", "0", "--datapath", str(tmp_path / "data")])
    folder_to_records.main(args)
    assert "no validation split (--val_ratio 0.0)" in capsys.readouterr().out
    assert load_dataset("mine", str(tmp_path / "data")).split_counts == {"train": 3}


def test_folder_dataset_seeded_split_and_usable_by_name(tmp_path):
    _folder_tree(tmp_path)
    datapath = tmp_path / "data"
    summary = _folder_convert(tmp_path, datapath / "mine", val_ratio=0.4, seed=3)

    assert summary.counts == {"train": 3, "val": 2}
    val_names = sorted(_records(datapath / "mine" / "validation.tfrecords"))
    _folder_convert(tmp_path, tmp_path / "again", val_ratio=0.4, seed=3)
    assert sorted(_records(tmp_path / "again" / "validation.tfrecords")) == val_names
    spec = load_dataset("mine", str(datapath))
    assert spec.class_names == ("a", "b", "c") and spec.split_counts == {"train": 3, "val": 2}
    for name, record in _records(datapath / "mine" / "training.tfrecords").items():
        assert record["format"] == "jpeg"  # JPEG bytes stored as they are
        assert record["image_bytes"] == (tmp_path / "images" / name).read_bytes()


@pytest.mark.slow  # a fresh interpreter (TensorFlow import)
def test_folder_cli_writes_into_datapath_by_name(tmp_path):
    """Run as a script (sys.path snippet) end to end."""
    images, labels = _folder_tree(tmp_path, count=3)
    result = subprocess.run(
        [sys.executable, "utils/folder_to_records.py", "--images", images, "--labels", labels,
         "--name", "mine", "--num_classes", "3", "--datapath", str(tmp_path / "data")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "training.tfrecords: 2 records" in result.stdout
    assert "validation.tfrecords: 1 records" in result.stdout
    assert read_dataset_meta(str(tmp_path / "data" / "mine"))["class_names"] == [
        "class_0", "class_1", "class_2"]


@pytest.mark.parametrize("num_classes, class_names, message", [
    (None, None, "--num_classes N or --class_names"),
    (2, ["a", "b", "c"], "--num_classes 2 but --class_names has 3"),
    (256, None, "must be 1..255"),
])
def test_folder_class_arguments_checked(num_classes, class_names, message):
    with pytest.raises(SegMentorError, match=message):
        folder_to_records.resolve_classes(num_classes, class_names)


# ------------------------------------------------------------------- bad input


def _break_missing_label(root):
    os.remove(root / "labels" / "p1.png")


def _break_size(root):
    _label(str(root / "labels" / "p1.png"), 1, 3, size=(HEIGHT, WIDTH + 1))


def _break_value(root):
    _label(str(root / "labels" / "p1.png"), 1, 3, extra=(7,))


def _truncate_image(root, stem="p1"):
    data = (root / "images" / f"{stem}.jpg").read_bytes()
    (root / "images" / f"{stem}.jpg").write_bytes(data[:len(data) // 2])


def _break_colour_label(root):
    Image.new("RGB", (WIDTH, HEIGHT)).save(root / "labels" / "p1.png")


BAD_PAIRS = {
    "image without label": (_break_missing_label, r"p1\.jpg has no label p1\.\*"),
    "size mismatch": (_break_size, r"p1\.jpg is 24x16 px but its label .*p1\.png is 25x16 px"),
    "label value out of range": (_break_value, r"p1\.png has value 7 .*valid values: 0-2, 255"),
    "truncated image": (_truncate_image, r"cannot read image .*p1\.jpg"),
    "colour label": (_break_colour_label, r"p1\.png has colour mode RGB"),
}


@pytest.mark.parametrize("case", sorted(BAD_PAIRS))
def test_bad_pair_stops_naming_the_file_and_leaves_no_output(tmp_path, case):
    _folder_tree(tmp_path)
    breaker, message = BAD_PAIRS[case]
    breaker(tmp_path)
    with pytest.raises(BadPairError, match=message) as error:
        _folder_convert(tmp_path, tmp_path / "out", val_ratio=0)
    assert "--skip_bad" in str(error.value) and "\n" not in str(error.value)
    assert _out_files(tmp_path / "out") == []  # no records, no partial file, no staging folder


def test_a_full_disk_while_converting_is_one_line_and_leaves_no_output(tmp_path, monkeypatch):
    _folder_tree(tmp_path)
    written = []

    def disk_full_after_two(self, *args):
        if len(written) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written.append(args)
    monkeypatch.setattr(tf_records.RecordWriter, "write", disk_full_after_two)
    with pytest.raises(SegMentorError, match=rf"^no space left on {tmp_path / 'out'}: [\d.]+ MB "
                                             rf"free \(writing the records of mine\)"):
        _folder_convert(tmp_path, tmp_path / "out", val_ratio=0)
    assert _out_files(tmp_path / "out") == []  # no records, no partial file, no staging folder


def test_skip_bad_leaves_out_the_pair_with_a_warning(tmp_path, capsys):
    _folder_tree(tmp_path)
    _break_value(tmp_path)
    _truncate_image(tmp_path, "p3")
    summary = _folder_convert(tmp_path, tmp_path / "out", val_ratio=0, skip_bad=True)

    assert summary.counts == {"train": 3} and summary.skipped == {"train": 2}
    assert sorted(_records(tmp_path / "out" / "training.tfrecords")) == ["p0.jpg", "p2.jpg", "p4.jpg"]
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert len(warnings) == 2 and "p1.jpg" in warnings[0] and "value 7" in warnings[0]


def test_failure_in_a_later_split_keeps_the_previous_conversion(tmp_path):
    tree_root = tmp_path / "CamVid"
    _camvid_tree(tree_root)
    out = tmp_path / "out"
    camvid_to_records.convert(str(tree_root), str(out))
    before = {name: (out / name).read_bytes() for name in _out_files(out)}
    _label(str(tree_root / "valannot" / "val_001.png"), 0, 11, extra=(12,))  # 12: no CamVid class
    _image(str(tree_root / "train" / "train_000.png"), 99)  # the new train split differs

    with pytest.raises(BadPairError, match=r"valannot/val_001\.png has value 12"):
        camvid_to_records.convert(str(tree_root), str(out))
    assert {name: (out / name).read_bytes() for name in _out_files(out)} == before


def test_a_kill_while_moving_splits_in_leaves_no_dataset_rather_than_a_mix(tmp_path, monkeypatch):
    tree_root = tmp_path / "CamVid"
    _camvid_tree(tree_root)
    out = tmp_path / "data" / "camvid"
    camvid_to_records.convert(str(tree_root), str(out))
    real_replace, moved = os.replace, []

    def killed_after_the_first_move(source, target):
        if os.path.dirname(target) == str(out):  # not the staging folder's own renames
            if moved:
                raise KeyboardInterrupt
            moved.append(target)
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", killed_after_the_first_move)
    with pytest.raises(KeyboardInterrupt):
        camvid_to_records.convert(str(tree_root), str(out))
    monkeypatch.setattr(os, "replace", real_replace)
    assert moved == [str(out / "training.tfrecords")]  # new train beside the old val...
    assert not (out / "dataset.json").exists()           # ...but no dataset to mistake for one
    with pytest.raises(SegMentorError, match="dataset.json is missing beside the records in "
                                             ".*camvid_to_records"):
        load_dataset("camvid", str(tmp_path / "data"))


def test_missing_source_folder(tmp_path):
    with pytest.raises(SegMentorError, match=r"CamVid folder .*nowhere not found; pass --src"):
        camvid_to_records.convert(str(tmp_path / "nowhere"), str(tmp_path / "out"))
    (tmp_path / "CamVid" / "train").mkdir(parents=True)
    with pytest.raises(SegMentorError, match=r"CamVid train label folder .*trainannot not found"):
        camvid_to_records.convert(str(tmp_path / "CamVid"), str(tmp_path / "out"))
    (tmp_path / "CamVid" / "trainannot").mkdir()
    with pytest.raises(SegMentorError, match=r"CamVid val image folder .*val not found"):
        camvid_to_records.convert(str(tmp_path / "CamVid"), str(tmp_path / "out"))
    with pytest.raises(SegMentorError, match=r"label folder .*nolabels not found"):
        folder_to_records.convert(str(tmp_path / "CamVid" / "train"), str(tmp_path / "nolabels"),
                                  "mine", str(tmp_path / "out"), ("a",))


@pytest.mark.slow  # a fresh interpreter (TensorFlow import)
def test_cli_bad_pair_exits_2_with_one_line_and_no_traceback(tmp_path):
    _camvid_tree(tmp_path / "CamVid", splits=(("train", 1), ("val", 1)))
    (tmp_path / "CamVid" / "train" / "train_000.png").write_bytes(b"not an image")
    result = subprocess.run(
        [sys.executable, "-m", "utils.camvid_to_records", "--src", str(tmp_path / "CamVid"),
         "--out", str(tmp_path / "out")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    error_line = result.stderr.strip().splitlines()[-1]
    assert error_line.startswith("camvid_to_records.py: error: cannot read image")
    assert "train_000.png" in error_line and "--skip_bad" in error_line
    assert _out_files(tmp_path / "out") == []
