"""Bilinear upsampling, fixed or learnable (a transposed convolution).

FCN upsamples class scores with `conv2d_transpose` whose kernel starts as a
bilinear interpolation filter: at step 0 it computes exactly what a
half-pixel-centred bilinear resize computes, and with `trainable_upsampling`
the kernel learns from there. While the kernel is fixed the two are the same
function, so the fixed case runs the resize op: the transposed convolution
needs a dense [2f, 2f, C, C] kernel, C times the work for the same numbers.
"""
import numpy as np

from utils.tfcompat import tf


def bilinear_kernel_1d(factor):
    """Weights of the 1-D bilinear filter that upsamples by an even `factor`.

    The filter has 2 * factor taps; tap t sits at distance |t - c| from the
    centre c = factor - 0.5 and weighs 1 - distance / factor, so the two input
    pixels nearest an output pixel share its value linearly.
    """
    if factor < 2 or factor % 2:
        raise ValueError(f"bilinear upsampling needs an even factor >= 2, got {factor}")
    centre = factor - 0.5
    taps = np.arange(2 * factor, dtype=np.float64)
    return 1.0 - np.abs(taps - centre) / factor


def bilinear_kernel(factor, num_channels):
    """conv2d_transpose kernel [2f, 2f, C, C] upsampling each channel on its own.

    Off-diagonal (channel-mixing) weights are zero; they only matter once the
    kernel is trainable.
    """
    weights_1d = bilinear_kernel_1d(factor)
    weights_2d = np.outer(weights_1d, weights_1d).astype(np.float32)
    size = 2 * factor
    kernel = np.zeros((size, size, num_channels, num_channels), np.float32)
    for channel in range(num_channels):
        kernel[:, :, channel, channel] = weights_2d
    return kernel


def upsample_bilinear(inputs, factor, trainable=False, scope=None):
    """Upsample [B, h, w, C] to [B, h*factor, w*factor, C], bilinear (at least at init).

    trainable=False: a half-pixel-centred bilinear resize, no variables.
    trainable=True: a transposed convolution whose kernel starts bilinear.
    """
    if not trainable:
        height, width = tf.shape(inputs)[1], tf.shape(inputs)[2]
        upsampled = tf.image.resize_bilinear(
            inputs, tf.stack([height * factor, width * factor]), half_pixel_centers=True)
        return _with_static_shape(upsampled, inputs, factor)
    return _upsample_transposed_conv(inputs, factor, scope)


def _with_static_shape(upsampled, inputs, factor):
    static = inputs.shape
    upsampled.set_shape([
        static[0],
        None if static[1] is None else static[1] * factor,
        None if static[2] is None else static[2] * factor,
        static[3]])
    return upsampled


def _upsample_transposed_conv(inputs, factor, scope):
    """Transposed convolution with a trainable kernel initialised bilinear.

    A plain SAME transposed convolution darkens the border (border pixels get
    only part of the kernel). Padding one edge-replicated pixel first and
    cropping the middle of a VALID transposed convolution reproduces
    half-pixel-centred bilinear resizing everywhere, borders included, so a
    constant map stays constant.
    """
    num_channels = inputs.shape[-1]
    if num_channels is None:
        raise ValueError("upsample_bilinear needs a known channel count")
    with tf.variable_scope(scope, "upsample_x%d" % factor, [inputs]):
        initial = bilinear_kernel(factor, num_channels)
        # The explicit shape makes reuse by a tower of another factor fail loudly.
        kernel = tf.get_variable("kernel", shape=initial.shape,
                                 initializer=tf.constant_initializer(initial),
                                 trainable=True)
        padded = tf.pad(inputs, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
        shape = tf.shape(inputs)
        batch, height, width = shape[0], shape[1], shape[2]
        # VALID transposed conv of an (n + 2)-long input has (n + 1) * f + 2f outputs;
        # output j of the bilinear resize sits at index j + f + f/2 of it (the pad adds f,
        # the kernel centre adds f/2).
        full = tf.nn.conv2d_transpose(
            padded, kernel,
            output_shape=tf.stack([batch, (height + 3) * factor, (width + 3) * factor, num_channels]),
            strides=[1, factor, factor, 1], padding="VALID")
        offset = factor + factor // 2
        upsampled = full[:, offset:offset + height * factor, offset:offset + width * factor, :]
        return _with_static_shape(upsampled, inputs, factor)
