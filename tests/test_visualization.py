"""Tests for utils.visualization: colours, overlays and the saved figures."""
import os

import numpy as np
import pytest
from PIL import Image

from utils.errors import SegMentorError
from utils.tfcompat import tf
from utils.visualization import (IGNORE_COLOR, colorize, colorize_labels_tf,
                                 confusion_heatmap_figure, image_files, normalized_confusion,
                                 overlay, palette, read_rgb, save_figure, save_png,
                                 side_by_side_figure)

IGNORE = 255
COLORS = ((0, 0, 0), (200, 10, 20), (10, 200, 30))
NAMES = ("background", "circle", "square")


def test_palette_and_colorize_use_dataset_colours_and_the_ignore_colour():
    table = palette(COLORS, IGNORE)
    assert table.shape == (256, 3) and table.dtype == np.uint8
    labels = np.array([[0, 1], [2, IGNORE]], np.uint8)
    rgb = colorize(labels, COLORS, IGNORE)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 1]) == COLORS[1] and tuple(rgb[1, 0]) == COLORS[2]
    assert tuple(rgb[1, 1]) == IGNORE_COLOR


def test_in_graph_colorize_matches_numpy():
    labels = np.random.default_rng(0).integers(0, 3, size=(2, 5, 7)).astype(np.int32)
    labels[0, 0, 0] = IGNORE
    with tf.Graph().as_default(), tf.Session() as sess:
        colored = colorize_labels_tf(tf.constant(labels[..., None]), COLORS, IGNORE)
        assert colored.dtype == tf.uint8
        np.testing.assert_array_equal(sess.run(colored), colorize(labels, COLORS, IGNORE))


def test_overlay_blends_half_and_half():
    image = np.full((3, 4, 3), 200, np.uint8)
    colored = np.zeros((3, 4, 3), np.uint8)
    np.testing.assert_array_equal(overlay(image, colored), np.full((3, 4, 3), 100))
    with pytest.raises(ValueError):
        overlay(image, colored[:2])


def _example(height=37, width=53):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    truth = rng.integers(0, 3, size=(height, width)).astype(np.uint8)
    truth[:3] = IGNORE
    prediction = rng.integers(0, 2, size=(height, width)).astype(np.uint8)
    return image, prediction, truth


def test_side_by_side_png_is_three_panels_wide(tmp_path):
    image, prediction, truth = _example()
    three, two = tmp_path / "three.png", tmp_path / "two.png"
    save_figure(side_by_side_figure(image, prediction, truth, COLORS, NAMES, IGNORE, title="a.png"),
                three)
    save_figure(side_by_side_figure(image, prediction, None, COLORS, NAMES, IGNORE), two)
    three_width, three_height = Image.open(three).size
    two_width, _ = Image.open(two).size
    assert three_width > 2.5 * three_height  # three landscape panels in a row
    assert two_width < three_width
    assert sorted(os.listdir(tmp_path)) == ["three.png", "two.png"]  # no partial files left


def test_normalized_confusion_rows_are_recall():
    normalized = normalized_confusion(np.array([[3, 1], [0, 0]]))
    np.testing.assert_allclose(normalized, [[0.75, 0.25], [0.0, 0.0]])


@pytest.mark.parametrize("num_classes", [3, 40])
def test_confusion_heatmap_is_saved(tmp_path, num_classes):
    conf = np.random.default_rng(0).integers(0, 50, size=(num_classes, num_classes))
    path = tmp_path / "confusion.png"
    save_figure(confusion_heatmap_figure(conf, [f"class{i}" for i in range(num_classes)]), path)
    width, height = Image.open(path).size
    assert min(width, height) > 300


def test_save_png_round_trips_label_maps_and_rgb(tmp_path):
    _, prediction, _ = _example()
    rgb = colorize(prediction, COLORS, IGNORE)
    save_png(prediction, tmp_path / "sub" / "labels.png")
    save_png(rgb, tmp_path / "rgb.png")
    np.testing.assert_array_equal(np.array(Image.open(tmp_path / "sub" / "labels.png")), prediction)
    np.testing.assert_array_equal(np.array(Image.open(tmp_path / "rgb.png")), rgb)
    with pytest.raises(ValueError):
        save_png(prediction.astype(np.int32), tmp_path / "bad.png")


def test_a_decompression_bomb_is_one_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "huge.png"
    Image.new("RGB", (40, 30)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL refuses images > 2x this
    for read in (read_rgb, image_files):
        with pytest.raises(SegMentorError, match=r"cannot read image .*huge.png \(Image size"):
            read(str(path))
