"""A tiny dataset on disk for tests that run fcn_train.py: `shapes` images as tfrecords,
known only through their dataset.json (with class frequencies, for --class_weighting)."""
import numpy as np

from utils import shapes
from utils.datasets import write_dataset_meta
from utils.tf_records import RecordWriter, encode_label_png
from encoded_images import encode_image

RECORD_FILES = {"train": "training.tfrecords", "val": "validation.tfrecords"}


def write_tiny_shapes(root, name, num_images, size_px):
    """<root>/<name>: num_images {"train": n, "val": m} shapes pairs of size_px, seeded by
    split and index. Returns root (a --datapath)."""
    pixel_counts = np.zeros(len(shapes.CLASS_NAMES))
    for split_index, (split, count) in enumerate(num_images.items()):
        with RecordWriter(root / name / RECORD_FILES[split]) as writer:
            for index in range(count):
                image, label = shapes.make_sample(np.random.default_rng([split_index, index]),
                                                  size_px)
                writer.write(encode_image(image, "PNG"), "png", encode_label_png(label),
                             size_px, size_px, f"{split}_{index}.png")
                pixel_counts += np.bincount(label.ravel(), minlength=len(pixel_counts))
    write_dataset_meta(root / name, {
        "name": name, "class_names": list(shapes.CLASS_NAMES),
        "colors": [list(c) for c in shapes.CLASS_COLORS],
        "class_frequencies": (pixel_counts / pixel_counts.sum()).tolist(),
        "default_pixels": size_px,
        "splits": {split: {"file": RECORD_FILES[split], "count": n}
                   for split, n in num_images.items()}})
    return root
