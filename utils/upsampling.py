"""Learnable-or-fixed bilinear upsampling by transposed convolution.

FCN upsamples class scores with `conv2d_transpose` whose kernel starts as a
bilinear interpolation filter: at step 0 the decoder then computes exactly
what `tf.image.resize(..., 'bilinear')` would, and with
`trainable_upsampling` the kernel can learn from there.
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
    """Upsample [B, h, w, C] to [B, h*factor, w*factor, C] with a bilinear-initialised kernel.

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
        kernel = tf.get_variable(
            "kernel",
            initializer=tf.constant(bilinear_kernel(factor, num_channels)),
            trainable=trainable)
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
        static = inputs.shape
        upsampled.set_shape([
            static[0],
            None if static[1] is None else static[1] * factor,
            None if static[2] is None else static[2] * factor,
            num_channels])
        return upsampled
