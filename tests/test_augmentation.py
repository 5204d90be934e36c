"""utils/augmentation.py: image and label stay aligned through every transform; padding is ignored."""
import numpy as np
import pytest

from utils.augmentation import (CROP_TOO_LARGE_PHRASE, NO_AUGMENT,
                                AugmentParams, eval_sizing, photometric, train_crop,
                                train_sizing)
from utils.labels import IGNORE_LABEL
from utils.tfcompat import tf

PAD_RGB = (12.0, 34.0, 56.0)  # any colour: sizing pads with the one it is given
HEIGHT, WIDTH = 48, 64
CELL_PX = 8          # the label is a grid of CELL_PX x CELL_PX cells
CODE_STEP = 4        # image red = CODE_STEP * x, green = CODE_STEP * y (fits in uint8)


def _coordinate_pair():
    """Image whose red/green encode each pixel's source x/y; label = the grid cell there."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    image = np.stack([CODE_STEP * x, CODE_STEP * y, np.zeros_like(x)], axis=-1).astype(np.uint8)
    label = (x // CELL_PX + (WIDTH // CELL_PX) * (y // CELL_PX)).astype(np.uint8)
    return image, label[..., None]


def _misaligned_fraction(image, label):
    """Fraction of checkable valid pixels whose label is not the cell the image says they came from.

    Bilinear image vs nearest label may disagree by up to a source pixel, so
    pixels that near a cell border are not checked.
    """
    x_src = image[..., 0] / CODE_STEP
    y_src = image[..., 1] / CODE_STEP
    valid = label != IGNORE_LABEL

    def far_from_border(coordinate):
        offset = (coordinate + 0.5) % CELL_PX  # borders sit half-way between pixel centres
        return (offset > 1.0) & (offset < CELL_PX - 1.0)

    checked = valid & far_from_border(x_src) & far_from_border(y_src)
    expected = (np.rint(x_src) // CELL_PX + (WIDTH // CELL_PX) * (np.rint(y_src) // CELL_PX))
    assert checked.sum() > 0.2 * valid.sum()
    return np.mean(label[checked] != expected[checked])


def _run(fn):
    with tf.Graph().as_default():
        image, label = _coordinate_pair()
        outputs = fn(tf.constant(image), tf.constant(label))
        with tf.Session() as sess:
            return sess.run(outputs)


STRONG = AugmentParams(flip=True, scale_range=(0.5, 1.8), stretch_range=(0.6, 1.6))


def test_training_transforms_keep_image_and_label_aligned():
    pixels = 40
    with tf.Graph().as_default():
        image, label = _coordinate_pair()
        seed = tf.placeholder(tf.int64, [2])
        outputs = train_sizing(tf.constant(image), tf.constant(label), pixels, STRONG, seed,
                               PAD_RGB)
        with tf.Session() as sess:
            results = [sess.run(outputs, {seed: [7, i]}) for i in range(24)]
    flipped = cropped = padded = 0
    for image, label in results:
        assert image.shape == (pixels, pixels, 3) and image.dtype == np.float32
        assert label.shape == (pixels, pixels) and label.dtype == np.int32
        assert _misaligned_fraction(image, label) == 0
        valid = label != IGNORE_LABEL
        rows = np.flatnonzero(valid.any(axis=1))
        row = image[rows[len(rows) // 2], :, 0][valid[rows[len(rows) // 2]]]
        flipped += row[0] > row[-1]   # red (source x) decreasing left to right
        padded += not valid.all()
        cropped += image[valid][:, 0].max() < CODE_STEP * (WIDTH - 2) or image[valid][:, 0].min() > CODE_STEP
    assert flipped and flipped < len(results)  # both outcomes of the coin were exercised
    assert padded and cropped


def test_padding_is_the_given_colour_in_the_image_and_ignore_in_the_label():
    image, label = _run(lambda i, l: train_sizing(i, l, 80, NO_AUGMENT, tf.constant([0, 0], tf.int64),
                                                  PAD_RGB))
    valid = label != IGNORE_LABEL
    # 48x64 scaled to fit 80: 60x80, so 20 rows of padding.
    assert valid.sum() == 60 * 80
    np.testing.assert_allclose(image[~valid], np.broadcast_to(PAD_RGB, image[~valid].shape),
                               rtol=0, atol=1e-4)


def test_labels_are_never_interpolated():
    _, source_label = _coordinate_pair()
    with tf.Graph().as_default():
        image, label = _coordinate_pair()
        outputs = train_sizing(tf.constant(image), tf.constant(label), 37, STRONG,
                               tf.constant([3, 1], tf.int64), PAD_RGB)
        with tf.Session() as sess:
            _, label = sess.run(outputs)
    assert set(np.unique(label)) <= set(np.unique(source_label)) | {IGNORE_LABEL}


def test_same_seed_same_augmentation_other_seed_other():
    def sized(seed):
        return lambda i, l: train_sizing(i, l, 40, STRONG, tf.constant(seed, tf.int64), PAD_RGB)
    first, again, other = _run(sized([1, 2])), _run(sized([1, 2])), _run(sized([1, 3]))
    np.testing.assert_array_equal(first[1], again[1])
    np.testing.assert_array_equal(first[0], again[0])
    assert not np.array_equal(first[1], other[1])


def test_eval_sizing_scales_larger_side_and_pads_bottom_right():
    image, label, valid_height, valid_width = _run(lambda i, l: eval_sizing(i, l, 32, PAD_RGB))
    assert (valid_height, valid_width) == (24, 32)
    assert image.shape == (32, 32, 3) and label.shape == (32, 32)
    assert (label[24:] == IGNORE_LABEL).all() and (label[:24] != IGNORE_LABEL).all()
    np.testing.assert_allclose(image[24:], np.broadcast_to(PAD_RGB, image[24:].shape), atol=1e-4)
    assert _misaligned_fraction(image[:24], label[:24]) == 0


def test_eval_sizing_with_zero_pixels_keeps_native_size():
    image, label, valid_height, valid_width = _run(lambda i, l: eval_sizing(i, l, 0, PAD_RGB))
    source_image, source_label = _coordinate_pair()
    assert (valid_height, valid_width) == (HEIGHT, WIDTH)
    np.testing.assert_array_equal(image, source_image.astype(np.float32))
    np.testing.assert_array_equal(label, source_label[..., 0])


def test_bad_ranges_are_rejected():
    with pytest.raises(ValueError, match="scale_range"):
        AugmentParams(scale_range=(1.2, 0.8))
    with pytest.raises(ValueError, match="stretch_range"):
        AugmentParams(stretch_range=(0.0, 1.0))


# --- crops at the image's own scale (--crop), photometric augmentation -----------------------

def _crop(crop_size, params=NO_AUGMENT, seed=(0, 0), pad=True):
    return _run(lambda i, l: train_crop(i, l, crop_size, params, tf.constant(seed, tf.int64),
                                        PAD_RGB, pad=pad))


def test_a_crop_smaller_than_the_image_is_a_window_of_it_without_padding():
    image, label = _crop((32, 40))  # HEIGHT x WIDTH = 48 x 64: cut, no resize, no padding
    assert image.shape == (32, 40, 3) and label.shape == (32, 40)
    assert (label != IGNORE_LABEL).all()
    # A window at native scale: neighbouring pixels come from neighbouring source pixels.
    np.testing.assert_array_equal(np.diff(image[..., 0], axis=1), CODE_STEP)
    np.testing.assert_array_equal(np.diff(image[..., 1], axis=0), CODE_STEP)
    assert _misaligned_fraction(image, label) == 0


def test_a_crop_larger_than_the_image_pads_only_the_missing_part():
    image, label = _crop((56, 40))  # 8 rows more than the image has, 24 columns fewer
    assert image.shape == (56, 40, 3) and label.shape == (56, 40)
    padded_rows = (label == IGNORE_LABEL).all(axis=1)
    assert padded_rows.sum() == 56 - HEIGHT and (label[~padded_rows] != IGNORE_LABEL).all()
    np.testing.assert_allclose(image[padded_rows], np.broadcast_to(
        PAD_RGB, image[padded_rows].shape), atol=1e-4)


def test_crops_of_scale_augmented_images_stay_aligned():
    with tf.Graph().as_default():
        image, label = _coordinate_pair()
        seed = tf.placeholder(tf.int64, [2])
        outputs = train_crop(tf.constant(image), tf.constant(label), (24, 36), STRONG, seed,
                             PAD_RGB)
        with tf.Session() as sess:
            for i in range(8):
                image_out, label_out = sess.run(outputs, {seed: [5, i]})
                assert image_out.shape == (24, 36, 3) and label_out.shape == (24, 36)
                assert _misaligned_fraction(image_out, label_out) == 0


def test_without_padding_the_scale_is_raised_to_cover_the_crop():
    shrink = AugmentParams(flip=False, scale_range=(0.5, 0.5), stretch_range=(1.0, 1.0))
    _, label = _crop((40, 60), shrink, pad=False)  # 0.5 x 48x64 = 24x32 would not cover it
    assert label.shape == (40, 60) and (label != IGNORE_LABEL).all()
    _, padded = _crop((40, 60), shrink, pad=True)
    assert (padded == IGNORE_LABEL).sum() == 40 * 60 - 24 * 32


def test_without_padding_a_crop_larger_than_the_image_fails_naming_its_size():
    with pytest.raises(tf.errors.InvalidArgumentError, match=CROP_TOO_LARGE_PHRASE) as error:
        _crop((56, 40), pad=False)
    assert f"{HEIGHT}" in error.value.message and f"{WIDTH}" in error.value.message


def test_photometric_changes_colours_in_range_and_leaves_the_label_alone():
    seed = (4, 2)
    colour = AugmentParams(flip=False, scale_range=(1.0, 1.0), stretch_range=(1.0, 1.0),
                           photometric=True)
    plain_image, plain_label = _crop((32, 40), NO_AUGMENT, seed)
    image, label = _crop((32, 40), colour, seed)
    np.testing.assert_array_equal(label, plain_label)  # the same window
    assert image.dtype == np.float32 and image.min() >= 0 and image.max() <= 255
    assert np.abs(image - plain_image).mean() > 1
    again, _ = _crop((32, 40), colour, seed)
    np.testing.assert_array_equal(image, again)  # stateless: same seed, same colours
    other, _ = _crop((32, 40), colour, (4, 3))
    assert not np.array_equal(image, other)


def test_photometric_keeps_values_in_range_for_extreme_images():
    with tf.Graph().as_default(), tf.Session() as sess:
        extremes = tf.constant(np.stack([np.zeros((4, 4, 3)), np.full((4, 4, 3), 255.0)]),
                               tf.float32)
        for i in range(6):
            for image in sess.run([photometric(extremes[0], tf.constant([i, 0], tf.int64)),
                                   photometric(extremes[1], tf.constant([i, 1], tf.int64))]):
                assert image.min() >= 0 and image.max() <= 255
