"""Bilinear transposed-convolution upsampling (utils/upsampling.py)."""
import numpy as np
import pytest

from utils.tfcompat import tf, tf2
from utils.upsampling import bilinear_kernel, bilinear_kernel_1d, upsample_bilinear


def test_kernel_matches_hand_computed_weights():
    # factor 2: taps at distances 1.5, 0.5, 0.5, 1.5 from the centre, divided by 2.
    np.testing.assert_allclose(bilinear_kernel_1d(2), [0.25, 0.75, 0.75, 0.25])
    np.testing.assert_allclose(bilinear_kernel_1d(4),
                               [0.125, 0.375, 0.625, 0.875, 0.875, 0.625, 0.375, 0.125])
    kernel = bilinear_kernel(2, 3)
    assert kernel.shape == (4, 4, 3, 3)
    assert kernel[1, 2, 0, 0] == pytest.approx(0.75 * 0.75)
    assert kernel[1, 2, 0, 1] == 0.0  # channels are upsampled independently


def test_odd_factor_is_rejected():
    with pytest.raises(ValueError, match="even factor"):
        bilinear_kernel_1d(3)


def _run(factor, values, trainable=False):
    with tf.Graph().as_default():
        inputs = tf.placeholder(tf.float32, [None, None, None, values.shape[-1]])
        upsampled = upsample_bilinear(inputs, factor, trainable=trainable)
        reference = tf2.image.resize(inputs, tf.shape(inputs)[1:3] * factor, method="bilinear")
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            trainable_vars = tf.trainable_variables()
            return sess.run([upsampled, reference], {inputs: values}) + [trainable_vars]


@pytest.mark.parametrize("trainable", [False, True])
@pytest.mark.parametrize("factor", [2, 4, 8, 16, 32])
def test_constant_map_stays_constant_borders_included(factor, trainable):
    constant = np.full((1, 3, 5, 2), 2.5, np.float32)
    upsampled, _, _ = _run(factor, constant, trainable)
    assert upsampled.shape == (1, 3 * factor, 5 * factor, 2)
    np.testing.assert_allclose(upsampled, 2.5, atol=1e-5)


@pytest.mark.parametrize("factor", [2, 16])
def test_transposed_conv_equals_half_pixel_bilinear_resize(factor):
    values = np.random.RandomState(0).rand(2, 5, 7, 3).astype(np.float32)
    upsampled, reference, _ = _run(factor, values, trainable=True)
    np.testing.assert_allclose(upsampled, reference, atol=1e-5)


def test_trainable_flag_controls_the_kernel_variable():
    values = np.zeros((1, 2, 2, 1), np.float32)
    assert _run(2, values, trainable=False)[2] == []
    assert len(_run(2, values, trainable=True)[2]) == 1


def test_trainable_kernel_starts_equal_to_the_fixed_resize():
    values = np.random.RandomState(1).rand(1, 4, 6, 3).astype(np.float32)
    trainable, _, _ = _run(4, values, trainable=True)
    fixed, _, _ = _run(4, values, trainable=False)
    np.testing.assert_allclose(trainable, fixed, atol=1e-5)
