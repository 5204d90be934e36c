"""utils/feeder.py: one graph switches between train and val batches; eval batches keep what fcn_test needs."""
import os

import numpy as np
import pytest
from tensorflow.core.framework import dataset_options_pb2

import fcn_arch
from everyday import everyday_or_slow
from utils import augmentation
from utils.augmentation import NO_AUGMENT
from utils.datasets import load_dataset, record_path, write_dataset_meta
from utils.labels import IGNORE_LABEL
from utils.errors import SegMentorError
from utils.feeder import Feeder, make_split_dataset
from utils.tf_records import RecordWriter, encode_label_png
from utils.tfcompat import tf
from utils.tta import InferencePlan
from encoded_images import encode_image

NUM_CLASSES = 8
PAD_RGB = (12.0, 34.0, 56.0)  # any colour: the feeder pads with the one it is given
SIZES = {"train": [(20, 30)] * 6, "val": [(20, 30), (24, 18), (20, 30), (24, 18), (20, 30)]}


def _make_dataset(datapath, name="tiny", splits_written=("train", "val"), label_offset=0):
    """Image i of a split is flat grey 20*i + 10 and its label is all class i (+ label_offset)."""
    out = os.path.join(datapath, name)
    splits = {}
    for split, file_name in (("train", "training.tfrecords"), ("val", "validation.tfrecords")):
        if split not in splits_written:
            continue
        with RecordWriter(os.path.join(out, file_name)) as writer:
            for index, (height, width) in enumerate(SIZES[split]):
                image = np.full((height, width, 3), 20 * index + 10, np.uint8)
                image_format = "PNG" if index % 2 else "JPEG"
                writer.write(encode_image(image, image_format), image_format, encode_label_png(np.full((height, width), index + label_offset, np.uint8)),
                             height, width, f"{split}_{index}.png")
        splits[split] = {"file": file_name, "count": len(SIZES[split])}
    write_dataset_meta(out, {"name": name, "class_names": [f"c{i}" for i in range(NUM_CLASSES)],
                             "splits": splits, "source": "test"})
    return load_dataset(name, str(datapath))


def _val_pass(sess, feeder):
    sizes = []
    for _ in range(feeder.val_batches_per_pass):
        images, labels = sess.run([feeder.images, feeder.labels], {feeder.handle: feeder.val_handle(sess)})
        assert images.shape[1:] == (16, 16, 3) and labels.shape[1:] == (16, 16)
        sizes.append(images.shape[0])
    return sizes


def test_handle_switches_between_train_and_val_batches(tmp_path):
    spec = _make_dataset(tmp_path)
    with tf.Graph().as_default():
        feeder = Feeder(spec, str(tmp_path), batch_size=2, pixels=16, pad_rgb=PAD_RGB, val_fraction=0.5, seed=3)
        assert (feeder.num_train_images, feeder.num_val_images, feeder.val_batches_per_pass) == (6, 3, 2)
        with tf.Session() as sess:
            train = {feeder.handle: feeder.train_handle(sess)}
            images, labels = sess.run([feeder.images, feeder.labels], train)
            assert images.shape == (2, 16, 16, 3) and images.dtype == np.float32
            assert labels.shape == (2, 16, 16) and labels.dtype == np.int32
            assert _val_pass(sess, feeder) == [2, 1]         # ceil(5 * 0.5) images
            sess.run(feeder.images, train)                   # training continues after validation
            assert _val_pass(sess, feeder) == [2, 1]         # and the next pass is the same


def test_val_subset_spans_the_file_and_repeats_exactly(tmp_path):
    spec = _make_dataset(tmp_path)
    with tf.Graph().as_default():
        feeder = Feeder(spec, str(tmp_path), batch_size=4, pixels=16, pad_rgb=PAD_RGB, val_fraction=0.5)
        with tf.Session() as sess:
            first = _val_labels(sess, feeder)
            # Every second record, from the whole file rather than its first half.
            assert [set(np.unique(l)) - {IGNORE_LABEL} for l in first] == [{0}, {2}, {4}]
            np.testing.assert_array_equal(_val_labels(sess, feeder), first)


def _val_labels(sess, feeder):
    return np.concatenate([sess.run(feeder.labels, {feeder.handle: feeder.val_handle(sess)})
                           for _ in range(feeder.val_batches_per_pass)])


def test_debug_overfit_trains_on_the_first_images_only(tmp_path):
    spec = _make_dataset(tmp_path)
    with tf.Graph().as_default():
        feeder = Feeder(spec, str(tmp_path), batch_size=4, pixels=16, pad_rgb=PAD_RGB, augment=NO_AUGMENT, debug_overfit=2)
        assert feeder.num_train_images == 2
        with tf.Session() as sess:
            train = {feeder.handle: feeder.train_handle(sess)}
            seen = set()
            for _ in range(3):
                seen |= set(np.unique(sess.run(feeder.labels, train)))
    assert seen == {0, 1, IGNORE_LABEL}


def _train_batches(spec, datapath, num_batches, seed=0, start_step=0, batch_size=4):
    """(images, labels) of the first `num_batches` training batches."""
    with tf.Graph().as_default():
        feeder = Feeder(spec, datapath, batch_size=batch_size, pixels=16, pad_rgb=PAD_RGB, seed=seed,
                        start_step=start_step)
        with tf.Session() as sess:
            train = {feeder.handle: feeder.train_handle(sess)}
            return [sess.run([feeder.images, feeder.labels], train) for _ in range(num_batches)]


def test_same_seed_gives_the_same_batches_and_another_seed_others(tmp_path):
    spec = _make_dataset(tmp_path)
    def images(seed):
        return np.stack([images for images, _ in _train_batches(spec, str(tmp_path), 3, seed=seed)])

    first = images(5)
    np.testing.assert_array_equal(first, images(5))
    assert not np.array_equal(first, images(6))


def test_a_resumed_feeder_continues_the_uninterrupted_stream(tmp_path):
    """6 images, batch 4: step 1 straddles epochs 0 and 1, step 3 starts epoch 2."""
    spec = _make_dataset(tmp_path)
    uninterrupted = _train_batches(spec, str(tmp_path), 4, seed=7)
    orders = [tuple(labels[:, 0, 0]) for _, labels in uninterrupted]
    assert len(set(orders)) > 1  # epochs are shuffled differently
    for step in (1, 2, 3):
        (resumed,) = _train_batches(spec, str(tmp_path), 1, seed=7, start_step=step)
        np.testing.assert_array_equal(resumed[1], uninterrupted[step][1])
        np.testing.assert_array_equal(resumed[0], uninterrupted[step][0])  # same augmentation


def _record_ends(path):
    """Byte offsets where each record of a tfrecords file ends."""
    data, ends, position = open(path, "rb").read(), [], 0
    while position < len(data):
        position += 12 + int.from_bytes(data[position:position + 8], "little") + 4
        ends.append(position)
    return ends


def test_a_damaged_train_record_names_only_the_training_file_and_the_converter(tmp_path):
    spec = _make_dataset(tmp_path)
    path = record_path(spec, str(tmp_path), "train")
    data = bytearray(open(path, "rb").read())
    data[_record_ends(path)[1] + 40] ^= 0xFF  # inside record 3's payload: the headers still walk
    open(path, "wb").write(bytes(data))
    with tf.Graph().as_default():
        feeder = Feeder(spec, str(tmp_path), batch_size=2, pixels=16, pad_rgb=PAD_RGB)
        with tf.Session() as sess, pytest.raises(SegMentorError) as error:
            with feeder.records_errors("train"):
                for _ in range(4):
                    sess.run(feeder.images, {feeder.handle: feeder.train_handle(sess)})
    message = str(error.value)
    assert message.startswith(f"corrupt records in {path} (")
    assert "validation" not in message and "delete" not in message
    assert message.endswith(f"rebuild it with: python utils/folder_to_records.py --images "
                            f"IMAGE_DIR --labels LABEL_DIR --name tiny --num_classes N "
                            f"--out {tmp_path / 'tiny'}")


@pytest.mark.parametrize("split, cut_after_records", [("train", 4), ("val", 2)])
def test_a_split_cut_at_a_record_boundary_is_refused_with_both_counts(tmp_path, split,
                                                                     cut_after_records):
    spec = _make_dataset(tmp_path)
    path = record_path(spec, str(tmp_path), split)
    data, ends = open(path, "rb").read(), _record_ends(path)
    open(path, "wb").write(data[:ends[cut_after_records - 1]])
    with tf.Graph().as_default(), pytest.raises(SegMentorError) as error:
        Feeder(spec, str(tmp_path), batch_size=2, pixels=16, pad_rgb=PAD_RGB)
    assert str(error.value).startswith(f"{path} holds {cut_after_records} records but "
                                       f"dataset.json says {len(SIZES[split])}")
    assert "folder_to_records.py" in str(error.value)


def test_a_split_cut_inside_a_record_is_refused_before_training(tmp_path):
    spec = _make_dataset(tmp_path)
    path = record_path(spec, str(tmp_path), "train")
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) // 2])
    with tf.Graph().as_default(), pytest.raises(SegMentorError,
                                                match=rf"corrupt records in {path}: it ends inside "
                                                      rf"record \d+ \(cut short\); rebuild it with: "
                                                      rf"python utils/folder_to_records.py"):
        Feeder(spec, str(tmp_path), batch_size=2, pixels=16, pad_rgb=PAD_RGB)


def test_label_outside_the_classes_is_one_clear_error(tmp_path):
    spec = _make_dataset(tmp_path, label_offset=NUM_CLASSES - 2)  # image 2 on: no such class
    with tf.Graph().as_default():
        feeder = Feeder(spec, str(tmp_path), batch_size=6, pixels=16, pad_rgb=PAD_RGB)
        with tf.Session() as sess, pytest.raises(
                SegMentorError, match=r"training.tfrecords.* hold label value (8|9|10|11), which is not a "
                                      r"class of the dataset \(0..7, 255 = ignore\)"):
            with feeder.records_errors("train"):
                sess.run(feeder.labels, {feeder.handle: feeder.train_handle(sess)})


def test_a_dataset_without_val_split_says_how_to_get_one(tmp_path):
    spec = _make_dataset(tmp_path, splits_written=("train",))
    with tf.Graph().as_default(), pytest.raises(SegMentorError, match="no validation split.*--val_ratio"):
        Feeder(spec, str(tmp_path), batch_size=2, pixels=16, pad_rgb=PAD_RGB)


def test_missing_val_records_name_the_file(tmp_path):
    spec = _make_dataset(tmp_path)
    os.remove(record_path(spec, str(tmp_path), "val"))
    with tf.Graph().as_default(), pytest.raises(SegMentorError, match="validation.tfrecords not found"):
        Feeder(spec, str(tmp_path), batch_size=2, pixels=16, pad_rgb=PAD_RGB)


def test_training_needs_a_fixed_size(tmp_path):
    spec = _make_dataset(tmp_path)
    with tf.Graph().as_default(), pytest.raises(SegMentorError, match="--pixels"):
        Feeder(spec, str(tmp_path), batch_size=2, pixels=0, pad_rgb=PAD_RGB)


def test_split_dataset_gives_each_image_at_its_source_size(tmp_path):
    spec = _make_dataset(tmp_path)
    with tf.Graph().as_default():
        record = tf.data.make_one_shot_iterator(make_split_dataset(spec, str(tmp_path), "val")).get_next()
        with tf.Session() as sess:
            first, second = sess.run(record), sess.run(record)
    assert first["image"].shape == (20, 30, 3) and first["image"].dtype == np.uint8
    assert second["image"].shape == (24, 18, 3) and second["label"].shape == (24, 18)
    assert first["label"].dtype == np.uint8 and (second["label"] == 1).all()
    assert [first["filename"], second["filename"]] == [b"val_0.png", b"val_1.png"]


def _autotune_settings_of_pipelines(graph):
    """autotune.enabled of each tf.data pipeline's options in `graph` (its OptionsDataset ops)."""
    settings = []
    for op in graph.get_operations():
        if op.type == "OptionsDataset":
            options = dataset_options_pb2.Options.FromString(op.get_attr("serialized_options"))
            settings.append(options.autotune_options.enabled
                            if options.autotune_options.HasField("enabled") else None)
    return settings


def test_no_pipeline_runs_the_autotune_thread_that_delays_closing_a_session(tmp_path):
    """tf.data's autotune model thread is not woken when its iterator goes: closing the
    session waited for its sleep (0-60 s at the end of a training run)."""
    spec = _make_dataset(tmp_path)
    with tf.Graph().as_default() as graph:
        Feeder(spec, str(tmp_path), batch_size=2, pixels=16, pad_rgb=PAD_RGB)
        assert _autotune_settings_of_pipelines(graph) == [False, False]  # train, val
    split = make_split_dataset(spec, str(tmp_path), "val")
    assert split.options().autotune.enabled is False


# --- --crop runs (native-scale windows, native-size validation), --val_fraction ---------------

def test_crop_batches_are_windows_and_validation_covers_every_val_image_at_native_size(tmp_path):
    spec = _make_dataset(tmp_path)
    with tf.Graph().as_default():
        feeder = Feeder(spec, str(tmp_path), batch_size=2, pixels=0, pad_rgb=PAD_RGB, crop=(16, 24),
                        val_fraction=1, augment=NO_AUGMENT)
        assert (feeder.num_val_images, feeder.val_batches_per_pass) == (5, 3)
        with tf.Session() as sess:
            images, labels = sess.run([feeder.images, feeder.labels],
                                      {feeder.handle: feeder.train_handle(sess)})
            assert images.shape == (2, 16, 24, 3) and labels.shape == (2, 16, 24)
            assert (labels != IGNORE_LABEL).all()  # 20x30 images: cut, never padded
            val_feed = {feeder.handle: feeder.val_handle(sess)}
            seen = []
            for _ in range(feeder.val_batches_per_pass):
                images, labels = sess.run([feeder.images, feeder.labels], val_feed)
                seen += [int(np.median(label[label != IGNORE_LABEL])) for label in labels]
                # A batch of 20x30 and 24x18 images: padded to 24x30, the image with PAD_RGB.
                assert images.shape[1:3] == labels.shape[1:3] == (
                    (24, 30) if len(labels) == 2 else (20, 30))
                padding = labels == IGNORE_LABEL
                np.testing.assert_allclose(images[padding], np.broadcast_to(
                    PAD_RGB, images[padding].shape), atol=1e-4)
    assert seen == [0, 1, 2, 3, 4]  # every val record, once, in file order


CROP_TOO_LARGE_END = ("--no-crop_pad forbids padding: give a --crop that fits the smallest "
                      "image, or allow padding")


def test_a_crop_larger_than_the_first_image_without_padding_fails_before_any_graph(tmp_path):
    spec = _make_dataset(tmp_path)
    with tf.Graph().as_default(), pytest.raises(SegMentorError) as error:
        Feeder(spec, str(tmp_path), batch_size=2, pixels=0, pad_rgb=PAD_RGB, crop=(24, 24), crop_pad=False)
    assert str(error.value) == (f"--crop 24 24 is larger than a 20x30 training image of "
                                f"{record_path(spec, str(tmp_path), 'train')}, and "
                                + CROP_TOO_LARGE_END)


def test_a_crop_larger_than_a_later_image_without_padding_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(SIZES, "train", [(30, 30)] * 2 + [(20, 30)] * 4)
    spec = _make_dataset(tmp_path)
    with tf.Graph().as_default():
        feeder = Feeder(spec, str(tmp_path), batch_size=6, pixels=0, pad_rgb=PAD_RGB, crop=(24, 24),
                        crop_pad=False)
        with tf.Session() as sess, pytest.raises(SegMentorError) as error:
            with feeder.records_errors("train"):
                sess.run(feeder.images, {feeder.handle: feeder.train_handle(sess)})
    message = str(error.value)
    assert "\n" not in message and message.endswith(CROP_TOO_LARGE_END)
    assert message.startswith("--crop 24 24 is larger than a 20x30 training image of ")


def test_crop_runs_validate_at_native_size_only(tmp_path):
    spec = _make_dataset(tmp_path)
    with tf.Graph().as_default(), pytest.raises(SegMentorError, match="--pixels must be 0"):
        Feeder(spec, str(tmp_path), batch_size=2, pixels=16, pad_rgb=PAD_RGB, crop=(16, 16))


# --- padding is exactly zero after the network's preprocessing --------------------------------

def _preprocessed_padding(sess, preprocess, images, padding):
    """The values `padding` (bool [..., H, W]) covers in preprocess(images), as numpy."""
    inputs = sess.run(preprocess(tf.constant(images, tf.float32)))
    return inputs[padding]


@pytest.mark.parametrize("net", everyday_or_slow(fcn_arch.FEATURE_EXTRACTORS))
def test_padding_is_exactly_zero_after_each_networks_preprocessing(tmp_path, net):
    """Every padder follows the net: the feeder (--crop windows and native-size val
    batches; --pixels squares through the same sizing ops), test-time sizing, and
    fcn_arch's pad to a multiple of 32."""
    spec = _make_dataset(tmp_path)
    preprocess = fcn_arch.FEATURE_EXTRACTORS[net].preprocess
    colour = fcn_arch.pad_rgb(net)
    padded_values = []
    with tf.Graph().as_default(), tf.Session() as sess:
        feeder = Feeder(spec, str(tmp_path), batch_size=3, pixels=0, crop=(26, 34),
                        pad_rgb=colour, val_fraction=1)
        for handle in (feeder.train_handle, feeder.val_handle):
            images, labels = sess.run([feeder.images, feeder.labels],
                                      {feeder.handle: handle(sess)})
            padding = labels == IGNORE_LABEL  # the records' labels are classes 0..5 only
            assert padding.any()
            padded_values.append(_preprocessed_padding(sess, preprocess, images, padding))
        image = tf.constant(np.full((20, 30, 3), 200, np.uint8))
        label = tf.zeros((20, 30, 1), tf.uint8)
        for sized in (augmentation.train_sizing(image, label, 40, NO_AUGMENT,
                                                tf.constant([0, 0], tf.int64), colour),
                      augmentation.eval_sizing(image, label, 40, colour)[:2]):
            images, labels = sess.run(sized)
            padded_values.append(_preprocessed_padding(sess, preprocess, images,
                                                       labels == IGNORE_LABEL))

        sized, (valid_h, valid_w) = InferencePlan(pixels=40, pad_rgb=colour).network_input(
            np.full((20, 30, 3), 200, np.uint8))
        padding = np.ones(sized.shape[:2], bool)
        padding[:valid_h, :valid_w] = False
        padded_values.append(_preprocessed_padding(sess, preprocess, sized, padding))

        padded, _, _ = fcn_arch._pad_to_multiple(tf.constant(sized[np.newaxis, :30, :33]), 32,
                                                 colour)
        padded = sess.run(padded)
        padding = np.ones(padded.shape[:3], bool)
        padding[:, :valid_h, :valid_w] = False
        padding[:, 30:] = padding[:, :, 33:] = True
        padded_values.append(_preprocessed_padding(sess, preprocess, padded, padding))
    for values in padded_values:
        assert values.size and (values == 0.0).all(), np.abs(values).max()
