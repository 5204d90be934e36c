"""Paired image+label ops: training augmentation and the seg-mentor sizing.

Every op takes and returns an (image, label) pair, so whatever moves pixels
of the image moves the same pixels of the label.

Seg-mentor sizing: scale so the larger side equals `pixels`, then pad to
`pixels x pixels`. Training adds a random flip, rescale and aspect stretch
before it (folded into the same single resize), crops at random what grew
beyond `pixels`, and places the image at a random spot of the padded square.
Evaluation uses the same sizing with no randomness and pads bottom/right, so
`[:valid_height, :valid_width]` of a prediction is the image.

    image, label = train_sizing(image, label, 512, AugmentParams(), seed)
    image, label, valid_height, valid_width = eval_sizing(image, label, 512)
    image, valid_height, valid_width = eval_image_sizing(image, 512)   # a photo, no label

Inputs: image uint8 [h, w, 3], label uint8 [h, w, 1] (as `parse_example`
gives them). Outputs: image float32 RGB 0..255, label int32 [H, W].
Random ops are stateless: `seed` is an int [2] tensor, so a batch is
reproducible whatever order the parallel map runs in.
"""
import dataclasses

from utils.datasets import IGNORE_LABEL
from utils.tfcompat import tf
import tensorflow as tf2  # TF2 resize (half-pixel centres) and stateless random ops

# ImageNet mean RGB (the VGG/ResNet slim checkpoints subtract it). Padding is
# this colour, here and inside fcn_arch's build_net, so after preprocessing it
# carries (almost) no signal: exactly zero for the mean-subtracting nets
# (VGG, ResNet); near zero for those scaling 0..255 to [-1, 1] (Inception,
# MobileNet: about -0.03, -0.08, -0.18 per channel).
IMAGENET_MEAN_RGB = (123.68, 116.78, 103.94)


@dataclasses.dataclass(frozen=True)
class AugmentParams:
    """Training augmentation; factors are drawn uniformly from each range."""
    flip: bool = True                     # random horizontal flip (never vertical: scenes have an up)
    scale_range: tuple = (0.75, 1.25)     # size factor on top of the sizing to `pixels`
    stretch_range: tuple = (0.85, 1.15)   # width/height ratio change, area kept

    def __post_init__(self):
        for name in ("scale_range", "stretch_range"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"{name} must be 0 < low <= high, got {(low, high)}")


NO_AUGMENT = AugmentParams(flip=False, scale_range=(1.0, 1.0), stretch_range=(1.0, 1.0))


def _resize_image(image, height, width):
    return tf2.image.resize(image, tf.stack([height, width]), method="bilinear")


def _resize_pair(image, label, height, width):
    # Nearest neighbour for labels: interpolating class indices would invent
    # classes (between 3 and 5 lies 4) and blur the ignore label into real ones.
    label = tf2.image.resize(label, tf.stack([height, width]), method="nearest")
    return _resize_image(image, height, width), label


def _paddings(image, pixels, top, left):
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    return [[top, pixels - height - top], [left, pixels - width - left], [0, 0]]


def _pad_image(image, pixels, top, left):
    """Pad to pixels x pixels with IMAGENET_MEAN_RGB."""
    mean = tf.constant(IMAGENET_MEAN_RGB, tf.float32)
    image = tf.pad(image - mean, _paddings(image, pixels, top, left)) + mean
    image.set_shape([pixels, pixels, 3])
    return image


def _pad_pair(image, label, pixels, top, left):
    """Pad to pixels x pixels: image with IMAGENET_MEAN_RGB, label with IGNORE_LABEL."""
    label = tf.pad(label, _paddings(label, pixels, top, left), constant_values=IGNORE_LABEL)
    label.set_shape([pixels, pixels, 1])
    return _pad_image(image, pixels, top, left), label


def _fit_size(image, pixels):
    """Float height, width after scaling the larger side to `pixels`."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    factor = pixels / tf.reduce_max(shape)
    return shape[0] * factor, shape[1] * factor


def _to_outputs(image, label):
    return tf.cast(image, tf.float32), tf.cast(label[..., 0], tf.int32)


def _uniform(seed, low, high):
    return tf2.random.stateless_uniform([], seed, minval=low, maxval=high)


def _offset(seed, max_offset):
    """Random int in [0, max_offset]."""
    return tf2.random.stateless_uniform([], seed, minval=0, maxval=max_offset + 1, dtype=tf.int32)


def train_sizing(image, label, pixels, params, seed):
    """Augment and size one training pair -> image [P, P, 3], label [P, P]."""
    flip_seed, scale_seed, stretch_seed, crop_y_seed, crop_x_seed, pad_y_seed, pad_x_seed = \
        tf2.unstack(tf2.random.experimental.stateless_split(seed, num=7))
    if params.flip:
        flip = _uniform(flip_seed, 0.0, 1.0) < 0.5
        image, label = tf.cond(flip, lambda: (tf.reverse(image, [1]), tf.reverse(label, [1])),
                               lambda: (image, label))
    height, width = _fit_size(image, pixels)
    scale = _uniform(scale_seed, *params.scale_range)
    stretch = tf.sqrt(_uniform(stretch_seed, *params.stretch_range))
    height = tf.maximum(1, tf.cast(tf.round(height * scale / stretch), tf.int32))
    width = tf.maximum(1, tf.cast(tf.round(width * scale * stretch), tf.int32))
    image, label = _resize_pair(image, label, height, width)

    crop_height, crop_width = tf.minimum(height, pixels), tf.minimum(width, pixels)
    top = _offset(crop_y_seed, height - crop_height)
    left = _offset(crop_x_seed, width - crop_width)
    image = image[top:top + crop_height, left:left + crop_width]
    label = label[top:top + crop_height, left:left + crop_width]

    image, label = _pad_pair(image, label, pixels,
                             _offset(pad_y_seed, pixels - crop_height),
                             _offset(pad_x_seed, pixels - crop_width))
    return _to_outputs(image, label)


def _eval_size(image, pixels):
    """Int height, width of the image after the deterministic sizing to `pixels`."""
    height, width = _fit_size(image, pixels)
    return (tf.maximum(1, tf.cast(tf.round(height), tf.int32)),
            tf.maximum(1, tf.cast(tf.round(width), tf.int32)))


def eval_sizing(image, label, pixels):
    """Size one pair without randomness.

    Returns image [P, P, 3], label [P, P], valid_height, valid_width: the
    image fills the top-left valid_height x valid_width, the rest is padding.
    pixels=0 keeps the native size (and no padding).
    """
    if pixels:
        height, width = _eval_size(image, pixels)
        image, label = _resize_pair(image, label, height, width)
        image, label = _pad_pair(image, label, pixels, 0, 0)
    else:
        height, width = tf.shape(image)[0], tf.shape(image)[1]
    image, label = _to_outputs(image, label)
    return image, label, height, width


def eval_image_sizing(image, pixels):
    """eval_sizing of an image without a label (a photo, a video frame).

    Returns image float32 [P, P, 3], valid_height, valid_width.
    """
    if pixels:
        height, width = _eval_size(image, pixels)
        image = _pad_image(_resize_image(image, height, width), pixels, 0, 0)
    else:
        height, width = tf.shape(image)[0], tf.shape(image)[1]
    return tf.cast(image, tf.float32), height, width
