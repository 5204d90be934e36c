"""What each checkpoint family was trained on: per-channel input normalisations.

Every normalisation here is `(rgb - mean_rgb) / std_rgb` per channel on float
RGB 0..255, so the colour that becomes exactly zero is `mean_rgb` itself
(`zero_rgb`). Padding with it gives the network the most neutral input there
is, whatever the family: the feeder, test-time sizing, exports and fcn_arch's
pad to a multiple of 32 all pad with the network's `zero_rgb` (derived here,
never typed twice).

    from nets.preprocessing import SCALE_TO_UNIT_RANGE
    inputs = SCALE_TO_UNIT_RANGE(images)        # [B, H, W, 3] 0..255 -> [-1, 1]
    SCALE_TO_UNIT_RANGE.zero_rgb                # (127.5, 127.5, 127.5)
"""
import dataclasses

from utils.tfcompat import tf

# ImageNet mean RGB, 0..255 scale: what the VGG and ResNet-v1 slim checkpoints
# subtract (slim's vgg_preprocessing _R_MEAN, _G_MEAN, _B_MEAN).
IMAGENET_MEAN_RGB = (123.68, 116.78, 103.94)
# torchvision's ImageNet statistics (RGB, 0..255 scale): the resnet_v1_18
# checkpoint is converted from PyTorch weights trained on inputs normalised so.
TORCHVISION_MEAN_RGB = (123.675, 116.28, 103.53)
TORCHVISION_STD_RGB = (58.395, 57.12, 57.375)
# Inception / MobileNet slim checkpoints: 0..255 mapped linearly onto [-1, 1].
UNIT_RANGE_CENTRE = 127.5


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """`(rgb - mean_rgb) / std_rgb` per channel; std_rgb None = no division.

    Call it on float RGB 0..255 [..., 3]. `description` is for tables (README,
    `fcn_arch.py --stats`).
    """
    description: str
    mean_rgb: tuple
    std_rgb: tuple | None = None

    def __call__(self, images):
        centred = images - tf.constant(self.mean_rgb, dtype=images.dtype)
        if self.std_rgb is None:
            return centred
        return centred / tf.constant(self.std_rgb, dtype=images.dtype)

    @property
    def zero_rgb(self):
        """The input colour this preprocessing turns into exactly 0.0 (the padding colour)."""
        return tuple(float(value) for value in self.mean_rgb)


SUBTRACT_IMAGENET_MEAN = Preprocessing("ImageNet mean subtraction", IMAGENET_MEAN_RGB)
NORMALIZE_TORCHVISION = Preprocessing("per-channel mean/std (torchvision)", TORCHVISION_MEAN_RGB,
                                      TORCHVISION_STD_RGB)
SCALE_TO_UNIT_RANGE = Preprocessing("scale to [-1, 1]", (UNIT_RANGE_CENTRE,) * 3,
                                    (UNIT_RANGE_CENTRE,) * 3)
