"""`shapes`: the synthetic dataset that makes seg-mentor work with no download.

Each image shows 1-2 filled shapes (circle, rectangle, triangle, cross) in
random colours, sizes and rotations on a textured, noisy background; later
shapes occlude earlier ones and the label map records exactly what is
visible. Colour says nothing about the class (every shape draws from the same
colour distribution), so a net has to learn outlines; the objects are large
relative to the image, so an output-stride-16 decoder can still reach a high
mIoU. Generation is seeded per image: the same constants give the same files.

    meta = write_shapes_dataset(dataset_dir, SPLIT_FILES)  # writes the records, returns dataset.json dict
    python -m utils.shapes --out data/shapes   # the same from the command line (__main__.py)

`utils.datasets.load_dataset('shapes', ...)` calls it on first use. The command line lives
in `__main__.py` because it needs the dataset registry, which imports this generator.
"""
import hashlib
import io
import json
import os

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from utils.tf_records import RecordWriter, encode_label_png

# ---- Parameters (the lead tunes these; any change regenerates the records) ----
IMAGE_SIZE_PX = 128            # native (square) size; also the training --pixels default
# Sized with fcn_train.py's defaults (RunSettings epochs x NUM_TRAIN_IMAGES / batch_size
# steps at SCRATCH_LEARNRATE): enough for a from-scratch MobileNetV1-FCN16 to pass val
# mIoU 0.8 in a few minutes on 2 CPU cores. Retune those together.
NUM_TRAIN_IMAGES = 2000
NUM_VAL_IMAGES = 200
SEED = 2018
MIN_SHAPES, MAX_SHAPES = 1, 2  # per image
# Shape "radius" (centre to farthest point) as a fraction of the image side: at
# 128 px and output stride 16 the logits are 8x8 cells, and a radius of 0.24
# (31 px) still spans ~4 cells, enough for bilinear-upsampled scores to place
# the outline to within a few pixels.
MIN_RADIUS_FRACTION, MAX_RADIUS_FRACTION = 0.24, 0.38
RECTANGLE_ASPECT_RANGE = (0.7, 1.0)   # short side / long side
# How far (in radii) a shape's centre stays from the border: below 1 some
# shapes are cut by it, but most stay whole enough to be recognised.
BORDER_MARGIN_RADII = 0.8
CROSS_ARM_WIDTH_FRACTION = 0.5         # arm width / arm length, thick enough to survive stride 16
MIN_COLOR_CONTRAST = 120               # L2 RGB distance of a shape's colour from the background's
BACKGROUND_BLOB_CELLS = 6              # low-frequency texture: random grid upsampled to the image
BACKGROUND_BLOB_AMPLITUDE = 35
BACKGROUND_STRIPE_AMPLITUDE = 20       # faint oriented stripes, random period and angle
STRIPE_PERIOD_RANGE_PX = (6, 24)
SHAPE_SHADING_AMPLITUDE = 30           # linear light gradient across each shape
PIXEL_NOISE_STDDEV = 10

SHAPE_NAMES = ("circle", "rectangle", "triangle", "cross")
CLASS_NAMES = ("background",) + SHAPE_NAMES
CLASS_COLORS = ((0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200))
SPLIT_SIZES = {"train": NUM_TRAIN_IMAGES, "val": NUM_VAL_IMAGES}

_PARAMS = {name: value for name, value in dict(globals()).items()
           if name.isupper() and not name.startswith("_")}
# Stored as the dataset's "source": load_dataset regenerates records made with other parameters.
SOURCE = "utils/shapes.py params " + hashlib.sha1(
    json.dumps(_PARAMS, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _polygon_points(rng, centre, radius, shape):
    """Vertices (list of polygons) of a rotated rectangle, triangle or cross."""
    angle = rng.uniform(0, 2 * np.pi)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])

    def place(points):
        return [tuple(p) for p in (np.asarray(points) * radius) @ rotation.T + centre]

    if shape == "triangle":  # equilateral, vertices on the circle of `radius`
        corners = [(np.cos(a), np.sin(a)) for a in np.deg2rad([90, 210, 330])]
        return [place(corners)]
    if shape == "rectangle":  # corners on the circle of `radius`
        aspect = rng.uniform(*RECTANGLE_ASPECT_RANGE)
        half_w, half_h = np.array([1.0, aspect]) / np.hypot(1.0, aspect)
        return [place([(-half_w, -half_h), (half_w, -half_h), (half_w, half_h), (-half_w, half_h)])]
    if shape == "cross":  # two bars of length 2*radius
        half_arm = CROSS_ARM_WIDTH_FRACTION / 2
        bar = [(-1, -half_arm), (1, -half_arm), (1, half_arm), (-1, half_arm)]
        return [place(bar), place([(y, x) for x, y in bar])]
    raise ValueError(shape)


def _shape_mask(rng, shape, size):
    """bool [size, size] of one shape at a random place, size and rotation."""
    radius = rng.uniform(MIN_RADIUS_FRACTION, MAX_RADIUS_FRACTION) * size
    margin = BORDER_MARGIN_RADII * radius
    centre = rng.uniform(margin, size - margin, size=2)
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if shape == "circle":
        (x, y), r = centre, radius
        draw.ellipse([x - r, y - r, x + r, y + r], fill=1)
    else:
        for polygon in _polygon_points(rng, centre, radius, shape):
            draw.polygon(polygon, fill=1)
    return np.asarray(canvas, dtype=bool)


def _background(rng, size):
    """(base_rgb float [3], image float [size, size, 3]): a base colour plus smooth blobs
    and faint stripes; shapes pick colours that contrast with base_rgb."""
    base = rng.uniform(0, 255, size=3)
    cells = rng.normal(0, 1, size=(BACKGROUND_BLOB_CELLS, BACKGROUND_BLOB_CELLS, 3))
    blobs = np.stack([np.asarray(Image.fromarray(cells[..., c].astype(np.float32))
                                 .resize((size, size), Image.BICUBIC)) for c in range(3)], axis=-1)
    y, x = np.mgrid[0:size, 0:size]
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(*STRIPE_PERIOD_RANGE_PX)
    stripes = np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period)
    return base, base + BACKGROUND_BLOB_AMPLITUDE * blobs + BACKGROUND_STRIPE_AMPLITUDE * stripes[..., None]


def _contrasting_color(rng, background_rgb):
    while True:
        color = rng.uniform(0, 255, size=3)
        if np.linalg.norm(color - background_rgb) >= MIN_COLOR_CONTRAST:
            return color


def make_sample(rng, size=IMAGE_SIZE_PX):
    """One (image uint8 [size, size, 3], label uint8 [size, size]) pair."""
    background_rgb, image = _background(rng, size)
    label = np.zeros((size, size), np.uint8)
    y, x = np.mgrid[0:size, 0:size] / size
    for _ in range(rng.integers(MIN_SHAPES, MAX_SHAPES + 1)):
        class_index = int(rng.integers(1, len(CLASS_NAMES)))
        mask = _shape_mask(rng, CLASS_NAMES[class_index], size)
        light = rng.normal(0, 1, size=2)
        shading = SHAPE_SHADING_AMPLITUDE * (light[0] * (x - 0.5) + light[1] * (y - 0.5))
        color = _contrasting_color(rng, background_rgb)
        image[mask] = color + shading[mask][:, None]
        label[mask] = class_index  # painted in order: a later shape occludes earlier ones
    image += rng.normal(0, PIXEL_NOISE_STDDEV, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), label


def _sample_rng(split, index):
    # One generator per image: a sample does not depend on how many others are made.
    return np.random.default_rng([SEED, list(SPLIT_SIZES).index(split), index])


def _png_bytes(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_shapes_dataset(dataset_dir, split_files):
    """Write the train and val records into `dataset_dir`; return the dataset.json dict.

    `split_files` maps each split to its file name (utils.datasets.SPLIT_FILES).
    """
    pixel_counts = np.zeros(len(CLASS_NAMES), np.int64)
    splits = {}
    with tqdm(total=sum(SPLIT_SIZES.values()), desc="generating shapes", unit="img") as progress:
        for split, count in SPLIT_SIZES.items():
            file_name = split_files[split]
            with RecordWriter(os.path.join(dataset_dir, file_name)) as writer:
                for index in range(count):
                    image, label = make_sample(_sample_rng(split, index))
                    writer.write(_png_bytes(image), "png", encode_label_png(label),
                                 IMAGE_SIZE_PX, IMAGE_SIZE_PX, f"{split}_{index:05d}.png")
                    if split == "train":
                        pixel_counts += np.bincount(label.ravel(), minlength=len(CLASS_NAMES))
                    progress.update()
            splits[split] = {"file": file_name, "count": count}
    return {"name": "shapes", "class_names": list(CLASS_NAMES),
            "colors": [list(c) for c in CLASS_COLORS],
            "class_frequencies": (pixel_counts / pixel_counts.sum()).tolist(),
            "splits": splits, "source": SOURCE}
