"""Test-time augmentation and sliding windows: from a network's softmax to
class probabilities at an image's own size.

Pure numpy around one callable, `predict(images) -> probabilities`
(float32 RGB 0..255 [B, H, W, 3] -> softmax [B, H, W, C] of the same height and
width): a trained run's network (utils.prediction.NetworkPredictor) or anything
else that answers the same way (an exported model).

    plan = InferencePlan(pixels=0, scales=(0.75, 1, 1.25), flip=True, tile=(512, 512),
                         pad_rgb=fcn_arch.pad_rgb(net))
    probabilities = plan.probabilities(predictor.predict_probabilities, [image])[0]
    prediction = probabilities.argmax(-1)              # [h, w] at the image's size

Each pass (a scale, mirrored or not) sizes the image as evaluation always has
(larger side to `pixels`, or native size for 0, times the scale), runs the
network on it whole or window by window, undoes the mirror and resizes the
softmax bilinearly to the image's original size; the passes are averaged there,
before any argmax, so every pass votes with its confidence at every pixel.

Sliding windows (`tile`): windows of tile_h x tile_w network-input pixels,
`overlap` of a window shared with its neighbour, the last one flush with the
image's end. Each window's softmax is weighted by a tent that is 1 at its
centre and falls linearly towards its borders (never to 0, so a pixel that only
one window covers keeps its value), and the weighted sum is divided by the
summed weights: a window's border pixels, which saw the least context, count
least, and no seam shows where windows meet.
"""
import dataclasses

import numpy as np

# The default --overlap: tents at half-window steps sum to a near-constant
# weight, so every pixel gets the same total trust.
DEFAULT_OVERLAP = 0.5


@dataclasses.dataclass(frozen=True)
class InferencePlan:
    """How an image is sized and passed through the network at test time.

    pixels: 0 = native size, > 0 = larger side scaled to it and padded to a
    square as in training (already resolved: not -1). scales: factors on that
    size, one pass each. flip: also a mirrored pass per scale. tile: (height,
    width) of sliding windows in network-input pixels, or None for whole images.
    pad_rgb: the colour images are padded with to the training square (the
    network's fcn_arch.pad_rgb: zero after its preprocessing); needed when pixels > 0.
    """
    pixels: int = 0
    scales: tuple = (1.0,)
    flip: bool = False
    tile: tuple | None = None
    overlap: float = DEFAULT_OVERLAP
    pad_rgb: tuple | None = None

    def __post_init__(self):
        if self.pixels < 0:
            raise ValueError(f"pixels must be resolved to 0 (native) or a size, got {self.pixels}")
        if self.pixels and self.pad_rgb is None:
            raise ValueError("pixels > 0 pads images: give the network's pad_rgb")
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"scales must be > 0, got {self.scales}")
        if self.tile is not None and (len(self.tile) != 2 or min(self.tile) < 1):
            raise ValueError(f"tile must be (height, width) >= 1, got {self.tile}")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")

    @property
    def is_plain(self):
        """One whole-image pass, as without test-time augmentation."""
        return tuple(self.scales) == (1.0,) and not self.flip and self.tile is None

    def settings(self):
        """The settings as plain JSON values (metrics.json)."""
        return dict(pixels=self.pixels, scales=[float(s) for s in self.scales], flip=self.flip,
                    tile=list(self.tile) if self.tile else None,
                    overlap=self.overlap if self.tile else None)

    def tag(self):
        """'' for a plain pass, else a short name of the settings
        ('s0.75-1-1.25_flip_tile512x512o0.5')."""
        if self.is_plain:
            return ""
        parts = []
        if tuple(self.scales) != (1.0,):
            parts.append("s" + "-".join(f"{s:g}" for s in self.scales))
        if self.flip:
            parts.append("flip")
        if self.tile:
            parts.append(f"tile{self.tile[0]}x{self.tile[1]}o{self.overlap:g}")
        return "_".join(parts)

    def passes(self):
        """(scale, mirrored) of every pass."""
        return [(scale, mirrored) for scale in self.scales
                for mirrored in ((False, True) if self.flip else (False,))]

    def probabilities(self, predict, images, batch_size=1):
        """Averaged softmax float32 [h, w, C] at each image's own size, one per image.

        `images`: uint8 or float RGB [h, w, 3] of any sizes. Network inputs of
        equal shape are run up to `batch_size` at a time.
        """
        sums = [None] * len(images)
        for scale, mirrored in self.passes():
            sized = [self.network_input(image, scale, mirrored) for image in images]
            inputs = [array for array, _ in sized]
            if self.tile:
                outputs = [tiled_probabilities(predict, array, self.tile, self.overlap, batch_size)
                           for array in inputs]
            else:
                outputs = _predict_grouped(predict, inputs, batch_size)
            for index, (output, (_, (valid_h, valid_w)), image) in enumerate(
                    zip(outputs, sized, images)):
                output = output[:valid_h, :valid_w]
                if mirrored:
                    output = output[:, ::-1]
                output = resize_bilinear(output, *image.shape[:2])
                sums[index] = output if sums[index] is None else sums[index] + output
        num_passes = len(self.passes())
        return [total / num_passes for total in sums]

    def network_input(self, image, scale=1.0, mirrored=False):
        """(float32 [H, W, 3] network input, (valid_h, valid_w) of the image in it)."""
        height, width = image.shape[:2]
        if self.pixels:
            factor = self.pixels * scale / max(height, width)
            side = max(1, round(self.pixels * scale))
        else:
            factor, side = scale, None
        size = (max(1, round(height * factor)), max(1, round(width * factor)))
        sized = resize_bilinear(np.asarray(image, np.float32), *size)
        if mirrored:  # before padding, which stays bottom/right as in training's eval sizing
            sized = sized[:, ::-1]
        if side and not self.tile:  # whole images are padded to the square training saw
            sized = pad_bottom_right(sized, side, side, self.pad_rgb)
        return sized, size


def _interpolation(in_size, out_size):
    """(low, high, weight of high) source indices along one axis for each output pixel,
    with half-pixel centres: output pixel i samples source position (i + 0.5) * in/out - 0.5."""
    source = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
    source = np.clip(source, 0, in_size - 1)
    low = np.floor(source).astype(np.intp)
    high = np.minimum(low + 1, in_size - 1)
    return low, high, (source - low).astype(np.float32)


def resize_bilinear(array, height, width):
    """float32 [h, w, C] -> [height, width, C], bilinear with half-pixel centres and no
    antialiasing: TF2's tf.image.resize, so test-time sizing equals training's eval sizing.

    numpy rather than OpenCV: any number of channels (cv2.resize stops at 128, COCO-Stuff
    has 171 classes), and scoring loads no drawing library.
    """
    array = np.asarray(array, np.float32)
    if array.shape[:2] == (height, width):
        return array
    low, high, weight = _interpolation(array.shape[0], height)
    rows = array[low]
    rows += (array[high] - rows) * weight[:, np.newaxis, np.newaxis]
    low, high, weight = _interpolation(array.shape[1], width)
    resized = rows[:, low]
    resized += (rows[:, high] - resized) * weight[np.newaxis, :, np.newaxis]
    return resized


def pad_bottom_right(image, height, width, pad_rgb):
    """Pad bottom/right to height x width with pad_rgb (the network's: zero after its
    preprocessing)."""
    padded = np.empty((height, width, 3), np.float32)
    padded[:] = pad_rgb
    padded[:image.shape[0], :image.shape[1]] = image
    return padded


def _predict_grouped(predict, inputs, batch_size):
    """predict() over a list of arrays, stacking those of equal shape up to batch_size."""
    outputs = [None] * len(inputs)
    by_shape = {}
    for index, array in enumerate(inputs):
        by_shape.setdefault(array.shape, []).append(index)
    for indices in by_shape.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            batch = predict(np.stack([inputs[index] for index in chunk]))
            for index, output in zip(chunk, batch):
                outputs[index] = output
    return outputs


def window_starts(length, window, overlap):
    """Start offsets of windows covering 0..length, the last flush with the end."""
    if length <= window:
        return [0]
    stride = max(1, round(window * (1 - overlap)))
    starts = list(range(0, length - window, stride))
    return starts + [length - window]


def tent_weights(length):
    """float32 [length]: 1 in the middle, falling linearly to 1/length at either end."""
    position = (np.arange(length, dtype=np.float32) + 0.5) / length  # pixel centres in (0, 1)
    return np.maximum(1.0 - np.abs(2.0 * position - 1.0), 1.0 / length)


def tiled_probabilities(predict, image, tile, overlap=DEFAULT_OVERLAP, batch_size=1):
    """Softmax [H, W, C] of `image` [H, W, 3] from tent-blended sliding windows."""
    height, width = image.shape[:2]
    tile_h, tile_w = min(tile[0], height), min(tile[1], width)
    windows = [(top, left) for top in window_starts(height, tile_h, overlap)
               for left in window_starts(width, tile_w, overlap)]
    weights = np.outer(tent_weights(tile_h), tent_weights(tile_w))[..., np.newaxis]
    total = weight_sum = None
    for start in range(0, len(windows), batch_size):
        chunk = windows[start:start + batch_size]
        batch = predict(np.stack([image[top:top + tile_h, left:left + tile_w]
                                  for top, left in chunk]))
        if total is None:
            total = np.zeros((height, width, batch.shape[-1]), np.float32)
            weight_sum = np.zeros((height, width, 1), np.float32)
        for (top, left), output in zip(chunk, batch):
            total[top:top + tile_h, left:left + tile_w] += weights * output
            weight_sum[top:top + tile_h, left:left + tile_w] += weights
    return total / weight_sum
