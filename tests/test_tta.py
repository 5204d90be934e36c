"""utils/tta.py: sizing, test-time augmentation and sliding windows, with
hand-made "networks" whose answers are known (numpy functions of the input)."""
import numpy as np
import pytest

from utils.augmentation import eval_sizing
from utils.tfcompat import tf, tf2
from utils.tta import (InferencePlan, resize_bilinear, tent_weights, tiled_probabilities,
                       window_starts)

PAD_RGB = (12.0, 34.0, 56.0)  # any colour: a plan pads with the one it is given
PALETTE = np.array([[250, 10, 10], [10, 250, 10], [10, 10, 250], [240, 240, 20]], np.float32)


def _softmax(scores):
    scores = scores - scores.max(axis=-1, keepdims=True)
    exp = np.exp(scores)
    return exp / exp.sum(axis=-1, keepdims=True)


def colour_oracle(images):
    """A 'network' with a one-pixel receptive field: the class whose palette colour is
    nearest to the pixel, as a near-one-hot softmax."""
    distances = np.linalg.norm(images[..., np.newaxis, :] - PALETTE, axis=-1)
    return _softmax(-distances / 4.0).astype(np.float32)


def left_leaning(images):
    """A position-aware 'network': class 0 grows from the left edge to the right."""
    batch, height, width, _ = images.shape
    ramp = np.broadcast_to(np.linspace(0.1, 0.9, width, dtype=np.float32), (batch, height, width))
    return np.stack([ramp, 1 - ramp], axis=-1)


def _blocks(height, width, seed=0):
    """(image, label) of random class rectangles painted in PALETTE colours."""
    rng = np.random.default_rng(seed)
    label = np.zeros((height, width), np.uint8)
    for class_id in range(1, len(PALETTE)):
        top, left = rng.integers(0, height - 8), rng.integers(0, width - 8)
        bottom, right = top + rng.integers(6, height // 2), left + rng.integers(6, width // 2)
        label[top:bottom, left:right] = class_id
    return PALETTE[label].astype(np.uint8), label


@pytest.mark.parametrize("pixels, scales, min_agreement", [
    (0, (1.0,), 1.0), (128, (1.0,), 0.99), (48, (1.0,), 0.97), (0, (0.5, 1.0, 1.5), 0.99)])
def test_probabilities_come_back_at_the_source_size_on_the_right_pixels(pixels, scales,
                                                                        min_agreement):
    image, label = _blocks(45, 61)
    plan = InferencePlan(pixels=pixels, scales=scales, pad_rgb=PAD_RGB)
    (probabilities,) = plan.probabilities(colour_oracle, [image])
    assert probabilities.shape == (45, 61, len(PALETTE))
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
    assert np.mean(probabilities.argmax(-1) == label) >= min_agreement


@pytest.mark.parametrize("pixels", [32, 0])
def test_network_input_is_the_training_eval_sizing(pixels):
    image, label = _blocks(24, 40)
    with tf.Graph().as_default(), tf.Session() as sess:
        expected, _, valid_h, valid_w = sess.run(eval_sizing(tf.constant(image),
                                                             tf.constant(label[..., None]), pixels,
                                                             PAD_RGB))
    sized, valid = InferencePlan(pixels=pixels, pad_rgb=PAD_RGB).network_input(image, 1.0, mirrored=False)
    assert valid == (valid_h, valid_w) and sized.shape == expected.shape
    np.testing.assert_allclose(sized, expected, atol=1e-3)


def test_fixed_size_inputs_are_padded_with_the_given_colour_and_mirrored_before_padding():
    image = np.zeros((10, 20, 3), np.uint8)
    image[:, :5] = 255  # a bright left edge
    sized, valid = InferencePlan(pixels=40, pad_rgb=PAD_RGB).network_input(image, 1.0, mirrored=True)
    assert sized.shape == (40, 40, 3) and valid == (20, 40)
    np.testing.assert_allclose(sized[20:], np.broadcast_to(PAD_RGB, (20, 40, 3)))
    assert sized[:20, -9:].min() > 250 and sized[:20, :29].max() < 5  # bright edge now right


def test_flip_makes_a_symmetric_input_predict_symmetrically():
    half, _ = _blocks(30, 20)
    symmetric = np.concatenate([half, half[:, ::-1]], axis=1)
    (plain,) = InferencePlan(pixels=0).probabilities(left_leaning, [symmetric])
    (flipped,) = InferencePlan(pixels=0, flip=True).probabilities(left_leaning, [symmetric])
    assert not np.allclose(plain, plain[:, ::-1])
    np.testing.assert_allclose(flipped, flipped[:, ::-1], atol=1e-6)
    np.testing.assert_allclose(flipped, 0.5, atol=1e-6)  # the ramp and its mirror average out
    # A one-pixel receptive field sees the mirrored image as the same pixels.
    (oracle_plain,) = InferencePlan(pixels=0).probabilities(colour_oracle, [symmetric])
    (oracle_flipped,) = InferencePlan(pixels=0, flip=True).probabilities(colour_oracle, [symmetric])
    np.testing.assert_allclose(oracle_flipped, oracle_plain, atol=1e-6)


@pytest.mark.parametrize("tile, overlap", [((16, 16), 0.5), ((20, 33), 0.25), ((7, 64), 0.0),
                                           ((100, 100), 0.5)])
def test_tiles_equal_the_whole_image_for_a_one_pixel_receptive_field(tile, overlap):
    image, _ = _blocks(45, 61)
    image = image.astype(np.float32)
    whole = colour_oracle(image[np.newaxis])[0]
    np.testing.assert_allclose(tiled_probabilities(colour_oracle, image, tile, overlap), whole,
                               atol=1e-6)


def test_a_constant_response_blends_without_seams():
    constant = np.array([0.7, 0.2, 0.1], np.float32)

    def predict(images):
        return np.broadcast_to(constant, images.shape[:3] + (3,)).copy()

    blended = tiled_probabilities(predict, np.zeros((50, 70, 3), np.float32), (16, 24), 0.5)
    np.testing.assert_allclose(blended, np.broadcast_to(constant, (50, 70, 3)), atol=1e-6)


def test_windows_cover_everything_and_end_flush():
    assert window_starts(10, 16, 0.5) == [0]  # the image is smaller than a window
    assert window_starts(64, 16, 0.5) == [0, 8, 16, 24, 32, 40, 48]
    assert window_starts(70, 16, 0.5) == [0, 8, 16, 24, 32, 40, 48, 54]  # last flush with 70
    assert window_starts(70, 16, 0.0) == [0, 16, 32, 48, 54]


def test_tent_weights_peak_in_the_middle_and_stay_positive():
    weights = tent_weights(8)
    np.testing.assert_allclose(weights, [0.125, 0.375, 0.625, 0.875, 0.875, 0.625, 0.375, 0.125])
    # At half-window steps the tents of neighbours add up to a constant.
    summed = weights[4:] + weights[:4]
    np.testing.assert_allclose(summed, 1.0)


def test_equal_inputs_are_batched():
    calls = []

    def predict(images):
        calls.append(images.shape[0])
        return colour_oracle(images)

    images = [_blocks(20, 30, seed)[0] for seed in range(3)] + [_blocks(25, 30)[0]]
    results = InferencePlan(pixels=0).probabilities(predict, images, batch_size=2)
    assert sorted(calls) == [1, 1, 2] and [r.shape[:2] for r in results] == [(20, 30)] * 3 + [(25, 30)]


@pytest.mark.parametrize("height, width", [(12, 16), (4, 5), (6, 8), (9, 3)])
def test_resize_is_tf_s_half_pixel_bilinear_for_any_channel_count(height, width):
    probabilities = np.random.default_rng(0).random((6, 8, 171)).astype(np.float32)
    with tf.Graph().as_default(), tf.Session() as sess:
        expected = sess.run(tf2.image.resize(probabilities, (height, width), method="bilinear"))
    resized = resize_bilinear(probabilities, height, width)
    assert resized.shape == (height, width, 171)
    np.testing.assert_allclose(resized, expected, atol=1e-5)


def test_settings_and_names():
    plain = InferencePlan(pixels=0)
    assert plain.is_plain and plain.tag() == ""
    tta = InferencePlan(pixels=512, scales=(0.75, 1.0, 1.25), flip=True, tile=(256, 384),
                        overlap=0.25, pad_rgb=PAD_RGB)
    assert tta.tag() == "s0.75-1-1.25_flip_tile256x384o0.25"
    assert tta.settings() == dict(pixels=512, scales=[0.75, 1.0, 1.25], flip=True,
                                  tile=[256, 384], overlap=0.25)
    assert len(tta.passes()) == 6
    with pytest.raises(ValueError, match="scales"):
        InferencePlan(scales=(1.0, 0.0))
    with pytest.raises(ValueError, match="resolved"):
        InferencePlan(pixels=-1)
    with pytest.raises(ValueError, match="pad_rgb"):
        InferencePlan(pixels=32)
