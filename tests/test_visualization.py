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


def _colour_runs(row):
    """The exact class/ignore/image colours met along a pixel row, in order, each run once."""
    runs = []
    for pixel in map(tuple, row[:, :3]):
        if pixel in _KNOWN_COLOURS and (not runs or runs[-1] != pixel):
            runs.append(pixel)
    return runs


PHOTO_COLOR = (30, 60, 250)  # the "photo" is one colour no class has
_KNOWN_COLOURS = set(COLORS[1:]) | {IGNORE_COLOR, PHOTO_COLOR}


def test_side_by_side_shows_image_prediction_truth_in_class_colours_with_their_legend(tmp_path):
    """Prediction: left half circle, right half square; truth: all circle, top rows ignored.
    A pixel row crosses image, prediction and truth in that order, in the dataset's colours."""
    height, width = 40, 60
    image = np.full((height, width, 3), PHOTO_COLOR, np.uint8)
    prediction = np.ones((height, width), np.uint8)
    prediction[:, width // 2:] = 2
    truth = np.ones((height, width), np.uint8)
    truth[:10] = IGNORE
    three, two = tmp_path / "three.png", tmp_path / "two.png"
    figure = side_by_side_figure(image, prediction, truth, COLORS, NAMES, IGNORE, title="a.png")
    save_figure(figure, three)
    save_figure(side_by_side_figure(image, prediction, None, COLORS, NAMES, IGNORE), two)
    assert sorted(os.listdir(tmp_path)) == ["three.png", "two.png"]  # no partial files left

    (legend,) = figure.legends
    assert [text.get_text() for text in legend.get_texts()] == ["circle", "square", "ignored"]
    swatches = [tuple(np.rint(np.array(patch.get_facecolor()[:3]) * 255).astype(int))
                for patch in legend.legend_handles]
    assert swatches == [COLORS[1], COLORS[2], IGNORE_COLOR]  # background is shown nowhere

    picture = np.array(Image.open(three).convert("RGB"))
    photo_rows = np.flatnonzero(np.all(picture == PHOTO_COLOR, axis=-1).any(axis=1))
    top, bottom = photo_rows.min(), photo_rows.max()  # the panels' rows
    ignored_row, labelled_row = picture[top + 2], picture[bottom - 2]
    assert _colour_runs(ignored_row) == [PHOTO_COLOR, COLORS[1], COLORS[2], IGNORE_COLOR]
    assert _colour_runs(labelled_row) == [PHOTO_COLOR, COLORS[1], COLORS[2], COLORS[1]]
    no_truth = np.array(Image.open(two).convert("RGB"))
    photo_rows = np.flatnonzero(np.all(no_truth == PHOTO_COLOR, axis=-1).any(axis=1))
    assert _colour_runs(no_truth[photo_rows.max() - 2]) == [PHOTO_COLOR, COLORS[1], COLORS[2]]


def test_normalized_confusion_rows_are_recall():
    normalized = normalized_confusion(np.array([[3, 1], [0, 0]]))
    np.testing.assert_allclose(normalized, [[0.75, 0.25], [0.0, 0.0]])


@pytest.mark.parametrize("num_classes", [3, 40])
def test_confusion_heatmap_shows_the_normalised_matrix_and_the_class_names(tmp_path, num_classes):
    conf = np.random.default_rng(0).integers(0, 50, size=(num_classes, num_classes))
    names = [f"class{i}" for i in range(num_classes)]
    figure = confusion_heatmap_figure(conf, names)
    axes = figure.axes[0]
    np.testing.assert_allclose(axes.images[0].get_array(), normalized_confusion(conf))
    assert [label.get_text() for label in axes.get_xticklabels()] == names
    assert [label.get_text() for label in axes.get_yticklabels()] == names
    cell_texts = [text.get_text() for text in axes.texts]
    if num_classes == 3:  # small matrices carry their values, row by row
        assert cell_texts == [f"{value:.2f}" for value in normalized_confusion(conf).ravel()]
    else:
        assert cell_texts == []
    path = tmp_path / "confusion.png"
    save_figure(figure, path)
    assert Image.open(path).format == "PNG"


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
