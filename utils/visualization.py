"""Pictures of segmentations: palettes, coloured label maps, overlays, figures.

Label maps are coloured with the dataset's own colours (`DatasetSpec.colors`)
so a CamVid road looks like CamVid's road everywhere: in fcn_test outputs, in
TensorBoard image summaries and in the notebook.

    rgb = colorize(prediction, spec.colors, IGNORE_LABEL)           # numpy
    tf.summary.image('pred', colorize_labels_tf(labels, spec.colors, IGNORE_LABEL))
    blended = overlay(image, rgb)
    save_figure(side_by_side_figure(image, prediction, truth, spec.colors,
                                    spec.class_names, IGNORE_LABEL), path)
    save_figure(confusion_heatmap_figure(conf, spec.class_names), path)

Photos and videos come in and go out here too (`read_rgb`, `image_files`,
`VideoReader`, `VideoWriter`), with unreadable input reported as one
SegMentorError line.

Figures are built with matplotlib's object API (`matplotlib.figure.Figure`),
never pyplot, so nothing here switches the global backend: scripts render
headless with Agg while a notebook keeps its inline display.

OpenCV and matplotlib are imported inside the functions that draw or touch
video: training imports this module for `colorize_labels_tf` alone, and should
not load either (tests/test_imports.py checks).
"""
import os

import numpy as np
from PIL import Image

from utils.labels import NUM_LABEL_VALUES
from utils.errors import SegMentorError, first_line
from utils.files import IMAGE_EXTENSIONS, IMAGE_READ_ERRORS, atomic_path
from utils.tfcompat import tf

# Colour of ignored pixels: Pascal VOC's 'void' border colour, pale enough to
# read as "no label" next to any class colour.
IGNORE_COLOR = (224, 224, 192)
# Weight of the class colour when blending it over the photo.
OVERLAY_ALPHA = 0.5

_FIGURE_DPI = 100
# Side-by-side panels are drawn at least this wide, so small images stay legible.
_MIN_PANEL_WIDTH_PX = 320
_LEGEND_COLUMNS = 6
_TEXT_ROW_INCHES = 0.25  # one line of small text
# Above this many classes the heat map cells are too small for printed values.
_MAX_ANNOTATED_CLASSES = 20
_HEATMAP_INCHES_PER_CLASS = 0.45
_HEATMAP_MIN_INCHES, _HEATMAP_MAX_INCHES = 6.0, 40.0

# mp4v is the MPEG-4 codec every OpenCV build can write into an .mp4 container.
VIDEO_FOURCC = "mp4v"
DEFAULT_VIDEO_FPS = 25.0  # when a container does not state its frame rate


def palette(colors, ignore_label):
    """uint8 [256, 3] lookup table: row i is the colour of label value i.

    Rows past the class colours are black, except `ignore_label`, which gets
    IGNORE_COLOR.
    """
    colors = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    if len(colors) > NUM_LABEL_VALUES:
        raise ValueError(f"{len(colors)} colours do not fit in a uint8 label map")
    table = np.zeros((NUM_LABEL_VALUES, 3), np.uint8)
    table[:len(colors)] = colors
    if 0 <= ignore_label < NUM_LABEL_VALUES:
        table[ignore_label] = IGNORE_COLOR
    return table


def colorize(labels, colors, ignore_label):
    """RGB uint8 [..., 3] of an integer label map [...] (class ids, ignore label)."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_LABEL_VALUES):
        raise ValueError("label values must lie in 0..255")
    return palette(colors, ignore_label)[labels.astype(np.intp)]


def colorize_labels_tf(labels, colors, ignore_label):
    """In-graph colorize: integer labels [B, H, W] (or [B, H, W, 1]) -> uint8 [B, H, W, 3].

    For `tf.summary.image`. Values outside 0..255 are clipped rather than
    failing the summary op.
    """
    table = tf.constant(palette(colors, ignore_label))
    labels = tf.convert_to_tensor(labels)
    if labels.shape.ndims == 4:
        labels = tf.squeeze(labels, axis=-1)
    indices = tf.clip_by_value(tf.cast(labels, tf.int32), 0, NUM_LABEL_VALUES - 1)
    return tf.gather(table, indices)


def overlay(image, colored, alpha=OVERLAY_ALPHA):
    """Blend a coloured label map over an RGB image (both uint8 [H, W, 3])."""
    image = np.asarray(image, dtype=np.float32)
    colored = np.asarray(colored, dtype=np.float32)
    if image.shape != colored.shape:
        raise ValueError(f"image {image.shape} and colours {colored.shape} differ in shape")
    blended = (1.0 - alpha) * image + alpha * colored
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def legend_handles(labels_shown, colors, class_names, ignore_label):
    """Patches for the classes (and 'ignored') occurring in any of `labels_shown`."""
    from matplotlib.patches import Patch

    present = set()
    for labels in labels_shown:
        present.update(np.unique(np.asarray(labels)).tolist())
    table = palette(colors, ignore_label) / 255.0
    handles = [Patch(facecolor=table[class_id], edgecolor="black", label=class_names[class_id])
               for class_id in sorted(present) if class_id < len(class_names)]
    if ignore_label in present:
        handles.append(Patch(facecolor=table[ignore_label], edgecolor="black", label="ignored"))
    return handles


def side_by_side_figure(image, prediction, truth, colors, class_names, ignore_label, title=None):
    """Figure of image | prediction | ground truth, with a legend of the classes shown.

    `truth` may be None (a photo without labels): then two panels. Panels
    show each picture at (at least) its own pixel size.
    """
    from matplotlib.figure import Figure

    panels = [("image", np.asarray(image)), ("prediction", colorize(prediction, colors, ignore_label))]
    if truth is not None:
        panels.append(("ground truth", colorize(truth, colors, ignore_label)))
    height_px, width_px = panels[0][1].shape[:2]
    scale = max(1.0, _MIN_PANEL_WIDTH_PX / width_px)
    panel_w_in, panel_h_in = scale * width_px / _FIGURE_DPI, scale * height_px / _FIGURE_DPI
    shown = [prediction] + ([truth] if truth is not None else [])
    handles = legend_handles(shown, colors, class_names, ignore_label)
    legend_rows = -(-len(handles) // _LEGEND_COLUMNS)  # ceil
    legend_h_in = _TEXT_ROW_INCHES * (legend_rows + 1)
    title_h_in = 2 * _TEXT_ROW_INCHES  # the figure title plus the panel names
    total_h_in = panel_h_in + legend_h_in + title_h_in
    fig = Figure(figsize=(len(panels) * panel_w_in, total_h_in), dpi=_FIGURE_DPI)
    bottom = legend_h_in / total_h_in
    for index, (name, picture) in enumerate(panels):
        ax = fig.add_axes([index / len(panels), bottom, 1.0 / len(panels), panel_h_in / total_h_in])
        ax.imshow(picture, interpolation="nearest")
        ax.set_axis_off()
        ax.text(0.5, 1.0, name, transform=ax.transAxes, ha="center", va="bottom")
    if title:
        fig.suptitle(title, y=1.0, va="top")
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(_LEGEND_COLUMNS, len(handles)),
                   frameon=False, fontsize="small")
    return fig


def normalized_confusion(conf):
    """Rows of `conf` divided by their sums (recall per true class); empty rows stay 0."""
    conf = np.asarray(conf, dtype=np.float64)
    row_sums = conf.sum(axis=1, keepdims=True)
    return np.divide(conf, row_sums, out=np.zeros_like(conf), where=row_sums > 0)


def confusion_heatmap_figure(conf, class_names, title="confusion matrix (rows: truth, normalised)"):
    """Heat map of the row-normalised confusion matrix with class names on both axes."""
    from matplotlib.figure import Figure

    num_classes = len(class_names)
    normalized = normalized_confusion(conf)
    side_in = float(np.clip(_HEATMAP_INCHES_PER_CLASS * num_classes + 2.5,
                            _HEATMAP_MIN_INCHES, _HEATMAP_MAX_INCHES))
    fig = Figure(figsize=(side_in + 1.0, side_in), dpi=_FIGURE_DPI)
    ax = fig.add_subplot()
    shown = ax.imshow(normalized, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(shown, ax=ax, shrink=0.8)
    ticks = np.arange(num_classes)
    ax.set_xticks(ticks, labels=class_names, rotation=90, fontsize="small")
    ax.set_yticks(ticks, labels=class_names, fontsize="small")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    if num_classes <= _MAX_ANNOTATED_CLASSES:
        for row in range(num_classes):
            for col in range(num_classes):
                value = normalized[row, col]
                ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize="x-small",
                        color="white" if value > 0.5 else "black")
    return fig


def save_figure(fig, path):
    """Render `fig` to a PNG at `path` (folders made as needed), atomically."""
    _make_parent(path)
    with atomic_path(path) as tmp_path:
        fig.savefig(tmp_path, format="png", dpi=_FIGURE_DPI, bbox_inches="tight")


def save_png(array, path):
    """Write a uint8 array ([H, W] grey/label map or [H, W, 3] RGB) as PNG, atomically."""
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"PNG output needs uint8, got {array.dtype}")
    _make_parent(path)
    with atomic_path(path) as tmp_path:
        Image.fromarray(array).save(tmp_path, format="PNG")


def _make_parent(path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


# --- Photos and videos in and out ----------------------------------------------------

def image_files(path):
    """[path] for an image file, else the sorted images of a folder.

    Each file's header is checked now (cheap: PIL opens lazily), so a bad
    file fails before any network is built. SegMentorError when there is no
    image or one is unreadable.
    """
    if os.path.isdir(path):
        files = sorted(os.path.join(path, name) for name in os.listdir(path)
                       if name.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise SegMentorError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {path}")
    elif os.path.isfile(path):
        files = [path]
    else:
        raise SegMentorError(f"image {path} not found; pass an image file or a folder of images")
    for file in files:
        try:
            Image.open(file).close()
        except IMAGE_READ_ERRORS as err:
            raise SegMentorError(_unreadable_image(file, err)) from None
    return files


def _unreadable_image(path, err):
    return f"cannot read image {path} ({first_line(err)}); is it a PNG/JPEG image?"


def read_rgb(path):
    """uint8 RGB [h, w, 3] of an image file (grey and RGBA become RGB)."""
    try:
        with Image.open(path) as picture:
            return np.asarray(picture.convert("RGB"))
    except IMAGE_READ_ERRORS as err:
        raise SegMentorError(_unreadable_image(path, err)) from None


def _opencv():
    """OpenCV, imported on first use (only video needs it)."""
    # FFmpeg inside OpenCV prints its own complaints ("moov atom not found") on
    # stderr; an unreadable video is reported by VideoReader in one line instead.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET, read at import
    import cv2
    return cv2


class VideoReader:
    """RGB frames of a video file, read with OpenCV.

        with VideoReader(path) as reader:  # SegMentorError if OpenCV cannot read it
            reader.fps, reader.num_frames (container's estimate), reader.width, reader.height
            for frame in reader: ...     # uint8 RGB [height, width, 3]
    """

    def __init__(self, path):
        self.path = path
        if not os.path.isfile(path):
            raise SegMentorError(f"video {path} not found")
        cv2 = _opencv()
        self._capture = cv2.VideoCapture(path)
        if not self._capture.isOpened():
            raise SegMentorError(f"cannot read video {path}: OpenCV does not recognise it "
                                 f"(damaged file or unsupported codec; try an .mp4 or .avi)")
        ok, first = self._capture.read()
        if not ok:
            self._capture.release()
            raise SegMentorError(f"cannot read video {path}: it has no readable frame")
        self._first = first
        self.height, self.width = first.shape[:2]
        self.fps = self._capture.get(cv2.CAP_PROP_FPS) or DEFAULT_VIDEO_FPS
        self.num_frames = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT))

    def __iter__(self):
        cv2 = _opencv()
        frame = self._first
        while frame is not None:
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            ok, frame = self._capture.read()
            frame = frame if ok else None
        self.close()

    def close(self):
        """Release the file (also done after the last frame); safe to call twice."""
        self._capture.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class VideoWriter:
    """Writes RGB frames to an mp4 file, atomically (renamed into place on close).

        with VideoWriter(path, fps, width, height) as writer:
            writer.write(frame)      # uint8 RGB [height, width, 3]
    """

    def __init__(self, path, fps, width, height):
        self.path = path
        _make_parent(path)
        # OpenCV picks the container from the extension, so the temporary name keeps it.
        self._atomic = atomic_path(path, suffix=".partial" + os.path.splitext(path)[1])
        self._partial = self._atomic.__enter__()
        cv2 = _opencv()
        self._writer = cv2.VideoWriter(self._partial, cv2.VideoWriter_fourcc(*VIDEO_FOURCC),
                                       fps, (width, height))
        if not self._writer.isOpened():
            self._writer.release()
            err = SegMentorError(f"cannot write video {path}: OpenCV has no {VIDEO_FOURCC} encoder")
            self._atomic.__exit__(SegMentorError, err, None)  # removes any temporary file
            raise err
        self.num_frames = 0

    def write(self, frame):
        cv2 = _opencv()
        self._writer.write(cv2.cvtColor(np.asarray(frame, np.uint8), cv2.COLOR_RGB2BGR))
        self.num_frames += 1

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        self._writer.release()
        # atomic_path renames on success and removes the temporary file on error.
        self._atomic.__exit__(exc_type, exc, traceback)
        return False
