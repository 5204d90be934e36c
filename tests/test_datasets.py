"""utils/datasets.py and utils/shapes.py: registry, dataset.json, shapes generation, clear errors."""
import json
import os
import threading

import numpy as np
import pytest

from utils import datasets, shapes
from utils.datasets import (DATASETS, load_dataset, num_records, read_dataset_meta,
                            record_path, write_dataset_meta)
from utils.labels import IGNORE_LABEL
from utils.errors import SegMentorError
from utils.tf_records import RecordWriter, encode_label_png

SMALL_SHAPES_SPLITS = {"train": 6, "val": 3}
# Built-in datasets whose class list only its converter knows (read from the data).
CLASSES_FROM_CONVERTER = {"coco_stuff"}


@pytest.fixture
def small_shapes(monkeypatch):
    monkeypatch.setattr(shapes, "SPLIT_SIZES", SMALL_SHAPES_SPLITS)


def test_registry_entries_are_complete():
    for name, spec in DATASETS.items():
        assert spec.name == name
        if name in CLASSES_FROM_CONVERTER:
            assert spec.class_names == () and spec.colors == ()
            assert "_to_records.py" in spec.converter
            continue
        assert spec.num_classes > 1 and len(set(spec.class_names)) == spec.num_classes
        assert len(spec.colors) == spec.num_classes
        assert spec.class_frequencies is None or len(spec.class_frequencies) == spec.num_classes
        assert spec.default_pixels > 0
    assert DATASETS["camvid"].num_classes == 11 and DATASETS["camvid"].class_names[3] == "Road"
    assert abs(sum(DATASETS["camvid"].class_frequencies) - 1) < 1e-6
    voc = DATASETS["pascal_voc"]
    assert voc.num_classes == 21
    assert voc.colors[:4] == ((0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0))  # the VOC palette
    assert DATASETS["shapes"].default_pixels == shapes.IMAGE_SIZE_PX


def test_generated_palettes_are_distinct():
    colors = datasets.distinct_colors(200)
    assert len(set(colors)) == 200


def test_shapes_samples_are_deterministic_and_exact():
    first = shapes.make_sample(shapes._sample_rng("train", 4))
    again = shapes.make_sample(shapes._sample_rng("train", 4))
    other = shapes.make_sample(shapes._sample_rng("val", 4))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[1], other[1])
    image, label = first
    size = shapes.IMAGE_SIZE_PX
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    assert label.shape == (size, size) and label.max() < len(shapes.CLASS_NAMES)


def test_shapes_cover_every_class():
    labels = [shapes.make_sample(shapes._sample_rng("train", i))[1] for i in range(30)]
    assert set(np.unique(labels)) == set(range(len(shapes.CLASS_NAMES)))


def test_shapes_generated_on_first_use(tmp_path, small_shapes):
    spec = load_dataset("shapes", str(tmp_path))
    assert sorted(os.listdir(tmp_path / "shapes")) == [datasets.LOCK_FILE, "dataset.json",
                                                        "training.tfrecords", "validation.tfrecords"]
    assert num_records(spec, str(tmp_path), "train") == 6
    assert num_records(spec, str(tmp_path), "val") == 3
    assert len(spec.class_frequencies) == spec.num_classes and abs(sum(spec.class_frequencies) - 1) < 1e-6

    before = os.path.getmtime(record_path(spec, str(tmp_path), "train"))
    load_dataset("shapes", str(tmp_path))
    assert os.path.getmtime(record_path(spec, str(tmp_path), "train")) == before  # not regenerated


def test_shapes_records_of_other_parameters_are_regenerated(tmp_path, small_shapes):
    load_dataset("shapes", str(tmp_path))
    meta = read_dataset_meta(str(tmp_path / "shapes"))
    write_dataset_meta(str(tmp_path / "shapes"), dict(meta, source="older parameters",
                                                       splits={"train": {"file": "training.tfrecords", "count": 1}}))
    spec = load_dataset("shapes", str(tmp_path))
    assert spec.source == shapes.SOURCE and spec.split_counts["train"] == 6


def test_two_first_runs_generate_shapes_once(tmp_path, small_shapes, monkeypatch):
    """Two threads (as two fresh processes would) find no records at the same time."""
    made = []
    make_sample = shapes.make_sample
    monkeypatch.setattr(shapes, "make_sample", lambda *a, **k: made.append(1) or make_sample(*a, **k))
    barrier = threading.Barrier(2)
    results, errors = [], []

    def first_run():
        barrier.wait()
        try:
            results.append(load_dataset("shapes", str(tmp_path)))
        except Exception as err:  # reported below, on the test's thread
            errors.append(err)

    threads = [threading.Thread(target=first_run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(results) == 2
    assert len(made) == sum(SMALL_SHAPES_SPLITS.values())  # generated once, not twice
    assert results[0] == results[1] and results[0].split_counts["train"] == 6
    assert sorted(os.listdir(tmp_path / "shapes")) == [datasets.LOCK_FILE, "dataset.json",
                                                        "training.tfrecords", "validation.tfrecords"]


def test_dataset_meta_round_trip(tmp_path):
    meta = {"name": "x", "class_names": ["a", "b"], "colors": [[1, 2, 3], [4, 5, 6]],
            "splits": {"train": {"file": "training.tfrecords", "count": 3}}}
    write_dataset_meta(str(tmp_path), meta)
    assert read_dataset_meta(str(tmp_path)) == dict(meta, ignore_label=IGNORE_LABEL)
    assert os.listdir(tmp_path) == ["dataset.json"]
    assert read_dataset_meta(str(tmp_path / "elsewhere")) is None


def _user_dataset(datapath, name="mine", count=2, meta_count=True):
    out = os.path.join(datapath, name)
    with RecordWriter(os.path.join(out, "training.tfrecords")) as writer:
        for index in range(count):
            writer.write(b"unused", "png", encode_label_png(np.zeros((2, 2), np.uint8)), 2, 2, f"{index}.png")
    split = {"file": "training.tfrecords"}
    if meta_count:
        split["count"] = count
    write_dataset_meta(out, {"name": name, "class_names": ["sea", "land", "boat"], "splits": {"train": split}})


def test_user_dataset_exists_through_its_dataset_json(tmp_path):
    _user_dataset(str(tmp_path), meta_count=False)
    spec = load_dataset("mine", str(tmp_path))
    assert spec.class_names == ("sea", "land", "boat")
    assert len(set(spec.colors)) == 3
    assert num_records(spec, str(tmp_path), "train") == 2  # counted in the file
    assert "folder_to_records" in spec.converter


def test_registry_entry_is_overridden_by_dataset_json(tmp_path):
    out = str(tmp_path / "coco_stuff")
    with RecordWriter(os.path.join(out, "validation.tfrecords")):
        pass
    write_dataset_meta(out, {"name": "coco_stuff", "class_names": ["person", "grass"],
                             "class_frequencies": [0.25, 0.75],
                             "splits": {"val": {"file": "validation.tfrecords", "count": 0}}})
    spec = load_dataset("coco_stuff", str(tmp_path))
    assert spec.class_names == ("person", "grass") and spec.num_classes == 2
    assert spec.class_frequencies == (0.25, 0.75) and len(spec.colors) == 2
    assert "coco_stuff_to_records" in spec.converter


def test_unknown_dataset_lists_known_and_found(tmp_path):
    _user_dataset(str(tmp_path), name="mine")
    with pytest.raises(SegMentorError, match=r"unknown dataset 'nope'.*camvid.*shapes.*mine"):
        load_dataset("nope", str(tmp_path))


def test_missing_records_name_the_converter(tmp_path):
    expected = f"camvid_to_records.py --src CAMVID_DIR --out {tmp_path / 'camvid'}"
    with pytest.raises(SegMentorError, match="no records of dataset 'camvid'") as error:
        load_dataset("camvid", str(tmp_path))
    assert expected in str(error.value)


def test_deleted_records_file_is_reported(tmp_path):
    _user_dataset(str(tmp_path))
    os.remove(tmp_path / "mine" / "training.tfrecords")
    with pytest.raises(SegMentorError, match="no records of dataset 'mine'.*folder_to_records"):
        load_dataset("mine", str(tmp_path))


def test_counting_a_corrupt_file_is_one_clear_error(tmp_path):
    _user_dataset(str(tmp_path), meta_count=False)
    spec = load_dataset("mine", str(tmp_path))
    path = tmp_path / "mine" / "training.tfrecords"
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(SegMentorError, match="corrupt records in .*training.tfrecords.*folder_to_records"):
        num_records(spec, str(tmp_path), "train")


def test_records_without_their_dataset_json_name_the_missing_file_and_converter(tmp_path):
    _user_dataset(str(tmp_path))
    os.remove(tmp_path / "mine" / "dataset.json")
    with pytest.raises(SegMentorError) as error:
        load_dataset("mine", str(tmp_path))
    assert str(error.value) == (
        f"{tmp_path / 'mine' / 'dataset.json'} is missing beside the records in "
        f"{tmp_path / 'mine'}: the converter writes it with them; rerun: python "
        f"utils/folder_to_records.py --images IMAGE_DIR --labels LABEL_DIR --name mine "
        f"--num_classes N --out {tmp_path / 'mine'}")


def test_counts_come_from_the_record_headers_and_must_match_dataset_json(tmp_path):
    _user_dataset(str(tmp_path), count=3)
    spec = load_dataset("mine", str(tmp_path))
    assert num_records(spec, str(tmp_path), "train") == 3
    path = tmp_path / "mine" / "training.tfrecords"
    path.write_bytes(path.read_bytes() * 2)  # six whole records: every header is fine
    with pytest.raises(SegMentorError, match=rf"^{path} holds 6 records but dataset.json says 3: "
                                             rf".*rebuild it with: python utils/folder_to_records"):
        num_records(spec, str(tmp_path), "train")


def test_unknown_split_is_reported(tmp_path):
    _user_dataset(str(tmp_path))
    spec = load_dataset("mine", str(tmp_path))
    with pytest.raises(SegMentorError, match="unknown split 'dev'"):
        record_path(spec, str(tmp_path), "dev")


def test_foreign_ignore_label_is_rejected(tmp_path):
    _user_dataset(str(tmp_path))
    path = tmp_path / "mine" / "dataset.json"
    meta = json.loads(path.read_text())
    path.write_text(json.dumps(dict(meta, ignore_label=0)))
    with pytest.raises(SegMentorError, match="ignore label 0"):
        load_dataset("mine", str(tmp_path))
