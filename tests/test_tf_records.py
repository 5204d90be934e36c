"""utils/tf_records.py: the record format round-trips pixels; writing is atomic; bad files fail clearly."""
import io
import os

import numpy as np
import pytest
from PIL import Image

from utils.errors import SegMentorError
from utils.tf_records import (IMAGE_KEY, RecordWriter, encode_label_png, parse_example,
                              read_records, records_errors)
from utils.tfcompat import tf
from encoded_images import encode_image


def _pair(height=7, width=5, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    label = rng.integers(0, 4, size=(height, width), dtype=np.uint8)
    label[0, 0] = 255
    return image, label


def _write(path, pairs, image_format="PNG"):
    with RecordWriter(path) as writer:
        for index, (image, label) in enumerate(pairs):
            writer.write(encode_image(image, image_format), image_format, encode_label_png(label),
                         image.shape[0], image.shape[1], f"/src/img_{index}.{image_format.lower()}")
    return writer


def _read_all(path):
    with tf.Graph().as_default():
        batch = tf.data.make_one_shot_iterator(read_records(path).map(parse_example)).get_next()
        examples = []
        with tf.Session() as sess:
            while True:
                try:
                    examples.append(sess.run(batch))
                except tf.errors.OutOfRangeError:
                    return examples


@pytest.mark.parametrize("image_format", ["PNG", "JPEG"])
def test_round_trip_returns_source_pixels(tmp_path, image_format):
    pairs = [_pair(7, 5, seed=0), _pair(4, 9, seed=1)]
    path = str(tmp_path / "split.tfrecords")
    assert _write(path, pairs, image_format).count == 2

    stored = [tf.train.Example.FromString(record) for record in tf.io.tf_record_iterator(path)]
    examples = _read_all(path)
    assert len(examples) == 2
    for index, ((image, label), example) in enumerate(zip(pairs, examples)):
        source_bytes = encode_image(image, image_format)
        assert stored[index].features.feature[IMAGE_KEY].bytes_list.value[0] == source_bytes
        # JPEG decoders differ by a few levels in their IDCT; PNG is exact.
        expected = np.asarray(Image.open(io.BytesIO(source_bytes)).convert("RGB"))
        np.testing.assert_allclose(example["image"], expected, atol=4 if image_format == "JPEG" else 0)
        np.testing.assert_array_equal(example["label"][..., 0], label)
        assert (example["height"], example["width"]) == image.shape[:2]
        assert example["filename"] == f"img_{index}.{image_format.lower()}".encode()


def test_grey_source_image_comes_out_rgb(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    path = str(tmp_path / "grey.tfrecords")
    with RecordWriter(path) as writer:
        writer.write(encode_image(grey, "PNG"), "png", encode_label_png(np.zeros((3, 4), np.uint8)), 3, 4, "g.png")
    (example,) = _read_all(path)
    np.testing.assert_array_equal(example["image"], np.repeat(grey[..., None], 3, axis=-1))


def test_writer_leaves_only_the_final_file(tmp_path):
    path = tmp_path / "split.tfrecords"
    _write(str(path), [_pair()])
    assert os.listdir(tmp_path) == ["split.tfrecords"]


def test_interrupted_writer_leaves_no_file(tmp_path):
    path = tmp_path / "split.tfrecords"
    with pytest.raises(RuntimeError):
        with RecordWriter(str(path)) as writer:
            image, label = _pair()
            writer.write(encode_image(image, "PNG"), "png", encode_label_png(label), 7, 5, "a.png")
            assert os.path.dirname(writer.partial_path) == str(tmp_path)
            assert os.listdir(tmp_path) == [os.path.basename(writer.partial_path)]
            raise RuntimeError("conversion interrupted")
    assert os.listdir(tmp_path) == []


def test_two_writers_of_one_path_never_share_a_file(tmp_path):
    path = str(tmp_path / "split.tfrecords")
    image, label = _pair()
    with RecordWriter(path) as first, RecordWriter(path) as second:
        assert first.partial_path != second.partial_path
        for writer, count in ((first, 1), (second, 2)):
            for index in range(count):
                writer.write(encode_image(image, "PNG"), "png", encode_label_png(label), 7, 5, f"{index}.png")
    # `first` exits last, so its complete file wins; nothing else is left behind.
    assert os.listdir(tmp_path) == ["split.tfrecords"]
    assert sum(1 for _ in tf.io.tf_record_iterator(path)) == 1


def test_label_must_be_2d_uint8():
    with pytest.raises(ValueError, match="2-D uint8"):
        encode_label_png(np.zeros((2, 2), np.int32))
    with pytest.raises(ValueError, match="2-D uint8"):
        encode_label_png(np.zeros((2, 2, 1), np.uint8))


def test_missing_records_name_the_file_and_the_fix(tmp_path):
    path = str(tmp_path / "training.tfrecords")
    with pytest.raises(SegMentorError, match="training.tfrecords not found.*camvid_to_records"):
        read_records(path, "python utils/camvid_to_records.py --src CAMVID_DIR")


def _run_through(path, how_to_make="rerun-me"):
    """Pull every batch of `path` inside records_errors, as a training loop would."""
    with tf.Graph().as_default():
        dataset = read_records(path).map(parse_example, num_parallel_calls=2)
        batch = tf.data.make_one_shot_iterator(dataset.map(lambda e: e["image"]).batch(2)).get_next()
        with tf.Session() as sess, records_errors(path, how_to_make=how_to_make):
            while True:
                try:
                    sess.run(batch)
                except tf.errors.OutOfRangeError:
                    return


def test_truncated_records_give_a_clear_error(tmp_path):
    path = str(tmp_path / "split.tfrecords")
    _write(path, [_pair(30, 30, seed) for seed in range(3)])
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:-5])  # inside the last record (a cut between records leaves a valid file)
    with pytest.raises(SegMentorError, match=r"corrupt records in .*split.tfrecords.*truncated.*rerun-me"):
        _run_through(path)


def test_flipped_byte_gives_a_clear_error(tmp_path):
    path = str(tmp_path / "split.tfrecords")
    _write(path, [_pair(30, 30, seed) for seed in range(3)])
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.raises(SegMentorError, match=r"corrupt records in .*split.tfrecords"):
        _run_through(path)


def test_undecodable_image_gives_a_clear_error(tmp_path):
    path = str(tmp_path / "split.tfrecords")
    with RecordWriter(path) as writer:
        writer.write(b"not an image", "png", encode_label_png(np.zeros((2, 2), np.uint8)), 2, 2, "a.png")
    with pytest.raises(SegMentorError, match="corrupt records.*image file format"):
        _run_through(path)


def test_graph_errors_are_not_mistaken_for_bad_data():
    with tf.Graph().as_default():
        values = tf.placeholder(tf.float32, [None])
        checked = tf.debugging.assert_positive(values)
        with tf.Session() as sess, pytest.raises(tf.errors.InvalidArgumentError):
            with records_errors("some.tfrecords"):
                sess.run(checked, {values: [-1.0]})
