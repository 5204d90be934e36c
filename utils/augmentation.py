"""Paired image+label ops: training augmentation and the seg-mentor sizing.

Every op takes and returns an (image, label) pair, so whatever moves pixels
of the image moves the same pixels of the label.

Seg-mentor sizing: scale so the larger side equals `pixels`, then pad to
`pixels x pixels`. Training adds a random flip, rescale and aspect stretch
before it (folded into the same single resize), crops at random what grew
beyond `pixels`, and places the image at a random spot of the padded square.
Evaluation uses the same sizing with no randomness and pads bottom/right, so
`[:valid_height, :valid_width]` of a prediction is the image. Images are padded
with `pad_rgb`, the colour the network's preprocessing turns into zero
(`fcn_arch.pad_rgb(net)`); labels with IGNORE_LABEL.

Crops at the image's own scale (`train_crop`, fcn_train's --crop H W): the
flip, rescale and stretch apply to the native size, then a random H x W
window is cut; only where the augmented image is smaller than the window is
it padded (or, with pad=False, the rescale is raised until the image covers
the window). Such runs evaluate at native size (pixels=0).

    colour = fcn_arch.pad_rgb('mobilenet_v1')       # (127.5, 127.5, 127.5)
    image, label = train_sizing(image, label, 512, AugmentParams(), seed, colour)
    image, label = train_crop(image, label, (288, 384), AugmentParams(), seed, colour)
    image, label, valid_height, valid_width = eval_sizing(image, label, 512, colour)
    image, valid_height, valid_width = eval_image_sizing(image, 512, colour)   # a photo, no label

Inputs: image uint8 [h, w, 3], label uint8 [h, w, 1] (as `parse_example`
gives them). Outputs: image float32 RGB 0..255, label int32 [H, W].
Random ops are stateless: `seed` is an int [2] tensor, so a batch is
reproducible whatever order the parallel map runs in.
"""
import dataclasses

from utils.labels import IGNORE_LABEL
from utils.tfcompat import tf, tf2  # tf2: half-pixel resize and stateless random ops


@dataclasses.dataclass(frozen=True)
class AugmentParams:
    """Training augmentation; factors are drawn uniformly from each range."""
    flip: bool = True                     # random horizontal flip (never vertical: scenes have an up)
    scale_range: tuple = (0.75, 1.25)     # size factor on top of the sizing to `pixels`
    stretch_range: tuple = (0.85, 1.15)   # width/height ratio change, area kept
    photometric: bool = False             # random brightness, contrast, saturation, hue

    def __post_init__(self):
        for name in ("scale_range", "stretch_range"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"{name} must be 0 < low <= high, got {(low, high)}")


NO_AUGMENT = AugmentParams(flip=False, scale_range=(1.0, 1.0), stretch_range=(1.0, 1.0))

# Photometric strengths: those of slim's Inception preprocessing (`distort_color`),
# on images scaled to [0, 1]. Colour is a weak cue for most classes (a car may be
# any colour) while lighting changes a lot between street scenes.
BRIGHTNESS_MAX_DELTA = 32 / 255
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)
HUE_MAX_DELTA = 0.2
# Stream index folded into an example's seed for its photometric draws, so the
# geometric draws (and thus every run made before the flag existed) stay as they were.
_PHOTOMETRIC_STREAM = 1
# Phrase of the graph-level check of train_crop(pad=False); utils/feeder.py turns
# the error carrying it into one line.
CROP_TOO_LARGE_PHRASE = "crop larger than the image, and padding is off:"


def _resize_image(image, height, width):
    return tf2.image.resize(image, tf.stack([height, width]), method="bilinear")


def _resize_pair(image, label, height, width):
    # Nearest neighbour for labels: interpolating class indices would invent
    # classes (between 3 and 5 lies 4) and blur the ignore label into real ones.
    label = tf2.image.resize(label, tf.stack([height, width]), method="nearest")
    return _resize_image(image, height, width), label


def _paddings(image, size, top, left):
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    return [[top, size[0] - height - top], [left, size[1] - width - left], [0, 0]]


def _pad_image(image, size, top, left, pad_rgb):
    """Pad to size = (height, width) with the colour pad_rgb."""
    colour = tf.constant(pad_rgb, tf.float32)
    image = tf.pad(image - colour, _paddings(image, size, top, left)) + colour
    image.set_shape([size[0], size[1], 3])
    return image


def _pad_pair(image, label, size, top, left, pad_rgb):
    """Pad to size = (height, width): image with pad_rgb, label with IGNORE_LABEL."""
    label = tf.pad(label, _paddings(label, size, top, left), constant_values=IGNORE_LABEL)
    label.set_shape([size[0], size[1], 1])
    return _pad_image(image, size, top, left, pad_rgb), label


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


def photometric(image, seed):
    """Random brightness, contrast, saturation and hue of float32 RGB 0..255 [h, w, 3].

    The strengths are the module's constants; the result is clipped to 0..255.
    Only the image changes: call it on the pair's image, before padding (so
    padding stays the network's zero colour).
    """
    brightness_seed, contrast_seed, saturation_seed, hue_seed = \
        tf2.unstack(tf2.random.experimental.stateless_split(seed, num=4))
    image = image / 255.0
    image = tf2.image.stateless_random_brightness(image, BRIGHTNESS_MAX_DELTA, brightness_seed)
    image = tf2.image.stateless_random_contrast(image, *CONTRAST_RANGE, contrast_seed)
    # Saturation and hue work in HSV, which needs RGB in [0, 1].
    image = tf.clip_by_value(image, 0.0, 1.0)
    image = tf2.image.stateless_random_saturation(image, *SATURATION_RANGE, saturation_seed)
    image = tf2.image.stateless_random_hue(image, HUE_MAX_DELTA, hue_seed)
    return tf.clip_by_value(image, 0.0, 1.0) * 255.0


def _augment_and_window(image, label, base_size, window, params, seed, pad_rgb, pad=True):
    """Flip, rescale and stretch from `base_size`, then a random `window` (height, width).

    base_size: float (height, width) the scale range applies to. The part of
    the augmented image beyond the window is cropped at random; where the
    image is smaller, it sits at a random spot of the padded window, or, with
    pad=False, the size factor is raised until it covers the window.
    """
    flip_seed, scale_seed, stretch_seed, crop_y_seed, crop_x_seed, pad_y_seed, pad_x_seed = \
        tf2.unstack(tf2.random.experimental.stateless_split(seed, num=7))
    if params.flip:
        flip = _uniform(flip_seed, 0.0, 1.0) < 0.5
        image, label = tf.cond(flip, lambda: (tf.reverse(image, [1]), tf.reverse(label, [1])),
                               lambda: (image, label))
    scale = _uniform(scale_seed, *params.scale_range)
    stretch = tf.sqrt(_uniform(stretch_seed, *params.stretch_range))
    height, width = base_size[0] * scale / stretch, base_size[1] * scale * stretch
    window_height, window_width = window
    if not pad:
        cover = tf.maximum(1.0, tf.maximum(window_height / height, window_width / width))
        height, width = height * cover, width * cover
    height = tf.maximum(1, tf.cast(tf.round(height), tf.int32))
    width = tf.maximum(1, tf.cast(tf.round(width), tf.int32))
    if not pad:  # rounding must not undo the cover
        height, width = tf.maximum(height, window_height), tf.maximum(width, window_width)
    image, label = _resize_pair(image, label, height, width)

    crop_height, crop_width = tf.minimum(height, window_height), tf.minimum(width, window_width)
    top = _offset(crop_y_seed, height - crop_height)
    left = _offset(crop_x_seed, width - crop_width)
    image = image[top:top + crop_height, left:left + crop_width]
    label = label[top:top + crop_height, left:left + crop_width]
    if params.photometric:
        image = photometric(image, tf2.random.experimental.stateless_fold_in(
            seed, _PHOTOMETRIC_STREAM))
    image, label = _pad_pair(image, label, window,
                             _offset(pad_y_seed, window_height - crop_height),
                             _offset(pad_x_seed, window_width - crop_width), pad_rgb)
    return _to_outputs(image, label)


def train_sizing(image, label, pixels, params, seed, pad_rgb):
    """Augment and size one training pair -> image [P, P, 3], label [P, P]."""
    return _augment_and_window(image, label, _fit_size(image, pixels), (pixels, pixels), params,
                               seed, pad_rgb)


def train_crop(image, label, crop_size, params, seed, pad_rgb, pad=True):
    """Augment one training pair at its own scale and cut a random crop_size window.

    -> image [H, W, 3], label [H, W] for crop_size = (H, W). The scale range
    applies to the native size. pad=False: no padding ever; an image whose
    native size is smaller than the window fails (CROP_TOO_LARGE_PHRASE, then
    the image's height and width), and a size factor that would shrink the
    image below the window is raised to just cover it.
    """
    native = tf.shape(image)[:2]
    if not pad:
        fits = tf.reduce_all(native >= tf.constant(crop_size, tf.int32))
        check = tf.debugging.Assert(fits, [CROP_TOO_LARGE_PHRASE, native[0], native[1]])
        with tf.control_dependencies([check]):
            image = tf.identity(image)
    native = tf.cast(native, tf.float32)
    return _augment_and_window(image, label, (native[0], native[1]), tuple(crop_size), params,
                               seed, pad_rgb, pad)


def _eval_size(image, pixels):
    """Int height, width of the image after the deterministic sizing to `pixels`."""
    height, width = _fit_size(image, pixels)
    return (tf.maximum(1, tf.cast(tf.round(height), tf.int32)),
            tf.maximum(1, tf.cast(tf.round(width), tf.int32)))


def eval_sizing(image, label, pixels, pad_rgb):
    """Size one pair without randomness.

    Returns image [P, P, 3], label [P, P], valid_height, valid_width: the
    image fills the top-left valid_height x valid_width, the rest is padding.
    pixels=0 keeps the native size (and no padding).
    """
    if pixels:
        height, width = _eval_size(image, pixels)
        image, label = _resize_pair(image, label, height, width)
        image, label = _pad_pair(image, label, (pixels, pixels), 0, 0, pad_rgb)
    else:
        height, width = tf.shape(image)[0], tf.shape(image)[1]
    image, label = _to_outputs(image, label)
    return image, label, height, width


def eval_image_sizing(image, pixels, pad_rgb):
    """eval_sizing of an image without a label, in the graph: what an exported
    SavedModel does inside (utils/export.py; fcn_test sizes in numpy, utils/tta.py).

    Returns image float32 [P, P, 3], valid_height, valid_width.
    """
    if pixels:
        height, width = _eval_size(image, pixels)
        image = _pad_image(_resize_image(image, height, width), (pixels, pixels), 0, 0, pad_rgb)
    else:
        height, width = tf.shape(image)[0], tf.shape(image)[1]
    return tf.cast(image, tf.float32), height, width
