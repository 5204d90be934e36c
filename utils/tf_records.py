"""The one tfrecords format of seg-mentor: feature keys, atomic writer, parser.

Every dataset, real or synthetic, is stored the same way, one example per
image/label pair:

    image/encoded   PNG or JPEG bytes exactly as in the source (no re-encoding,
                    so JPEG sources do not lose quality twice and files stay small)
    image/format    b'png' or b'jpeg'
    label/encoded   single-channel PNG, one class index per pixel
    image/height, image/width   int64, the size of both image and label
    image/filename  source base name (lets fcn_test name its outputs)

Usage:
    with RecordWriter(path) as writer:
        writer.write(image_bytes, 'png', encode_label_png(label), h, w, 'a.png')
    dataset = read_records(path).map(parse_example)
"""
import contextlib
import io
import os
import re
import struct

import numpy as np
from PIL import Image

from utils.errors import SegMentorError
from utils.files import atomic_path
from utils.tfcompat import tf

IMAGE_KEY = "image/encoded"
IMAGE_FORMAT_KEY = "image/format"
LABEL_KEY = "label/encoded"
HEIGHT_KEY = "image/height"
WIDTH_KEY = "image/width"
FILENAME_KEY = "image/filename"

# Accepted spellings of the image format -> the name stored in the record.
IMAGE_FORMATS = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg"}

_FEATURES = {
    IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
    IMAGE_FORMAT_KEY: tf.io.FixedLenFeature([], tf.string),
    LABEL_KEY: tf.io.FixedLenFeature([], tf.string),
    HEIGHT_KEY: tf.io.FixedLenFeature([], tf.int64),
    WIDTH_KEY: tf.io.FixedLenFeature([], tf.int64),
    FILENAME_KEY: tf.io.FixedLenFeature([], tf.string),
}


def _bytes_feature(value):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int64_feature(value):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def encode_label_png(label):
    """PNG bytes of a 2-D uint8 label map [h, w] (class indices, 255 = ignore)."""
    label = np.asarray(label)
    if label.ndim != 2 or label.dtype != np.uint8:
        raise ValueError(f"a label map must be 2-D uint8, got {label.dtype} {label.shape}")
    buffer = io.BytesIO()
    Image.fromarray(label, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def encode_example(image_bytes, image_format, label_png_bytes, height, width, filename):
    """The serialized tf.train.Example of one image/label pair."""
    stored_format = IMAGE_FORMATS.get(str(image_format).lower())
    if stored_format is None:
        raise ValueError(f"image format must be one of {sorted(IMAGE_FORMATS)}, got {image_format!r}")
    example = tf.train.Example(features=tf.train.Features(feature={
        IMAGE_KEY: _bytes_feature(bytes(image_bytes)),
        IMAGE_FORMAT_KEY: _bytes_feature(stored_format.encode()),
        LABEL_KEY: _bytes_feature(bytes(label_png_bytes)),
        HEIGHT_KEY: _int64_feature(height),
        WIDTH_KEY: _int64_feature(width),
        FILENAME_KEY: _bytes_feature(os.path.basename(filename).encode()),
    }))
    return example.SerializeToString()


class RecordWriter:
    """Writes one tfrecords file atomically (utils.files.atomic_path).

    Records go to a unique temporary file next to `path`; a clean exit
    renames it to `path`, an exception deletes it. An interrupted conversion
    therefore never leaves a half file under the name the feeder reads, and
    two writers of the same path never write into one file.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        self.partial_path = None  # set while writing
        self.count = 0
        self._writer = None
        self._atomic = None

    def __enter__(self):
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._atomic = atomic_path(self.path)
        self.partial_path = self._atomic.__enter__()
        try:
            self._writer = tf.io.TFRecordWriter(self.partial_path)
        except BaseException as err:
            self._atomic.__exit__(type(err), err, err.__traceback__)
            raise
        return self

    def write(self, image_bytes, image_format, label_png_bytes, height, width, filename):
        self._writer.write(encode_example(image_bytes, image_format, label_png_bytes,
                                          height, width, filename))
        self.count += 1

    def __exit__(self, exc_type, exc, traceback):
        try:
            self._writer.close()
        except BaseException as err:
            if exc_type is None:
                exc_type, exc, traceback = type(err), err, err.__traceback__
            self._atomic.__exit__(exc_type, exc, traceback)  # removes the temporary file
            raise
        # atomic_path renames on success and removes the temporary file on error.
        self._atomic.__exit__(exc_type, exc, traceback)
        return False


def parse_example(serialized):
    """Decode one serialized record.

    Returns dict(image uint8 [h, w, 3], label uint8 [h, w, 1], height int32,
    width int32, filename string). Grey or RGBA sources come out as RGB.
    """
    features = tf.io.parse_single_example(serialized, _FEATURES)
    # decode_image reads PNG and JPEG alike; without expand_animations it
    # returns a 3-D tensor whose static rank the augmentation relies on.
    image = tf.io.decode_image(features[IMAGE_KEY], channels=3, expand_animations=False)
    label = tf.io.decode_png(features[LABEL_KEY], channels=1)
    image.set_shape([None, None, 3])
    label.set_shape([None, None, 1])
    return dict(image=image, label=label,
                height=tf.cast(features[HEIGHT_KEY], tf.int32),
                width=tf.cast(features[WIDTH_KEY], tf.int32),
                filename=features[FILENAME_KEY])


def read_records(path, how_to_make=None):
    """A TFRecordDataset of the serialized examples in `path`.

    A missing file raises SegMentorError naming it and, when given,
    `how_to_make` (the converter command that writes it).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        fix = how_to_make or "run the dataset's converter (python utils/<dataset>_to_records.py --help)"
        raise SegMentorError(f"records file {path} not found; make it with: {fix}")
    return tf.data.TFRecordDataset(path)


# A tfrecords entry: uint64 length, uint32 CRC of the length, the payload, uint32 CRC of it.
_LENGTH_HEADER = struct.Struct("<QI")
_PAYLOAD_CRC_BYTES = 4


def count_records(path, how_to_make=None):
    """Records in the tfrecords file `path`, walking the length headers only.

    No payload is read or decoded, so even a large file counts in a blink.
    A file that ends inside a record (cut mid-write) is a SegMentorError naming
    it and the converter; one cut exactly between records counts short, which
    the caller compares with dataset.json.
    """
    size = os.path.getsize(path)
    count = position = 0
    with open(path, "rb") as f:
        while position < size:
            header = f.read(_LENGTH_HEADER.size)
            if len(header) < _LENGTH_HEADER.size:
                break
            length, _ = _LENGTH_HEADER.unpack(header)
            position += _LENGTH_HEADER.size + length + _PAYLOAD_CRC_BYTES
            if position > size:
                break
            count += 1
            f.seek(position)
    if position != size:
        raise SegMentorError(f"corrupt records in {path}: it ends inside record {count + 1} "
                             f"(cut short); rebuild it with: "
                             f"{how_to_make or 'the dataset converter'}")
    return count


# The message of checked_label's assertion; records_errors recognises it.
_LABEL_RANGE_PHRASE = "label value outside the class range"
_LABEL_RANGE_PATTERN = re.compile(re.escape(_LABEL_RANGE_PHRASE) + r"\] \[(\d+)\] \[(\d+)\] \[(\d+)\]")


def checked_label(label, num_classes, ignore_label):
    """`label` (integer [h, w, ...]) after asserting every value is a class or `ignore_label`.

    A record with another value (a dataset converted with a different class
    list) would otherwise fail deep in the loss on a CPU, or train on NaNs on a
    GPU; inside `records_errors` it fails as one line naming the file.
    """
    real = tf.where(tf.equal(label, ignore_label), tf.zeros_like(label), label)
    largest = tf.cast(tf.reduce_max(real), tf.int64)
    check = tf.debugging.Assert(largest < num_classes,
                                [_LABEL_RANGE_PHRASE, largest, num_classes, ignore_label])
    with tf.control_dependencies([check]):
        return tf.identity(label)


# Phrases of TF errors that only bad record bytes cause: a truncated or
# checksum-failing file (DataLossError), or an entry whose bytes do not parse
# or decode (InvalidArgumentError from the map function).
_CORRUPT_DATA_PHRASES = ("truncated record", "corrupted record", "Could not parse example",
                         "Unknown image file format", "Invalid PNG", "Invalid JPEG")


@contextlib.contextmanager
def records_errors(*paths, how_to_make=None):
    """Turn a corrupt-record error raised inside `sess.run` into a SegMentorError.

    tf.data reads records lazily, so a damaged file only fails when a batch
    is pulled, as a DataLossError (or an InvalidArgumentError from decoding)
    out of `sess.run`, far from any file name. Wrap the session loop:

        with records_errors(train_path, val_path, how_to_make=...):
            sess.run(train_op, ...)
    """
    try:
        yield
    except tf.errors.InvalidArgumentError as err:
        match = _LABEL_RANGE_PATTERN.search(err.message)
        if match is None:
            _raise_if_corrupt(err, paths, how_to_make)
            raise  # a graph bug, not the data: keep its traceback
        value, num_classes, ignore_label = map(int, match.groups())
        raise SegMentorError(
            f"records in {_names(paths)} hold label value {value}, which is not a class of the "
            f"dataset (0..{num_classes - 1}, {ignore_label} = ignore): the records and the "
            f"dataset's class list disagree; rerun: {how_to_make or 'the dataset converter'}") from err
    except tf.errors.DataLossError as err:
        _raise_if_corrupt(err, paths, how_to_make)


def _names(paths):
    return ", ".join(os.fspath(p) for p in paths) or "the records"


def _raise_if_corrupt(err, paths, how_to_make):
    """SegMentorError for a DataLossError or a decoding error; return for anything else."""
    reason = _corrupt_data_reason(err.message)
    if reason is None and not isinstance(err, tf.errors.DataLossError):
        return
    fix = how_to_make or "the dataset's converter"
    raise SegMentorError(f"corrupt records in {_names(paths)} ({reason or 'data loss'}); "
                         f"rebuild it with: {fix}") from err


def _corrupt_data_reason(message):
    """The phrase-bearing part of a TF error message, or None."""
    for line in message.splitlines():
        for phrase in _CORRUPT_DATA_PHRASES:
            if phrase in line:
                return line[line.index(phrase):].strip()
    return None
