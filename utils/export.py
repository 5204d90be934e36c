"""Exporting a trained run for use outside seg-mentor, and reading the exports back.

Two formats (`FORMATS`), each written to a temporary folder, checked against
the checkpoint and only then renamed into place:

- `savedmodel`: a TF SavedModel whose `serving_default` signature takes
  `images` (uint8 RGB [B, H, W, 3], any size) and returns `classes` (int32
  [B, H, W]) and `probabilities` (float32 [B, H, W, classes]). Inside: the
  eval sizing of fcn_test (larger side scaled to `pixels`, padded with the
  network's pad colour, zero after its preprocessing; 0 keeps the native size), the preprocessing, the
  padding to a multiple of 32 and the crop back, and the bilinear resize of
  the softmax to the input size before the argmax (as fcn_test does). Plain TensorFlow
  loads it: `tf.saved_model.load(dir).signatures["serving_default"]`.
- `tflite`: `model.tflite` at a fixed input (float32 RGB 0..255 [1, P, P, 3],
  sized and padded as above; uint8 for int8), returning `probabilities` and
  `classes` at [1, P, P]: a phone app sizes the image and crops the result
  itself (`TfliteModel` here does it as fcn_test does). `--quantize`
  (`QUANTIZATIONS`): none (float32), float16 weights, or full-integer int8
  calibrated on the run's training images.

Both carry `segmentor.json` (`METADATA_FILE`: class names, colours, ignore
label, input size, network, padding colour `pad_rgb`, step, and the check's figures): beside the
.tflite, in `assets.extra/` of the SavedModel.

    exported = export_run(run, checkpoint, "tflite", "int8", pixels=-1, out_dir="exp",
                          num_check_images=20)
    with load_exported("exp") as model:            # or "exp/model.tflite", or a SavedModel dir
        classes = model.segment(image)             # uint8 [h, w, 3] -> uint8 [h, w]

The check: on the first `num_check_images` validation images, the loaded
export against the checkpoint restored into the graph fcn_test builds. Float
exports must agree within `FLOAT_TOLERANCE` (max absolute probability
difference at source size) or the export fails and nothing is written;
quantized ones report both models' mIoU on those images and warn when the
drop exceeds `QUANTIZED_WARN_DROP_POINTS`.
"""
import dataclasses
import json
import os
import sys

import numpy as np
from tqdm import tqdm

import fcn_arch
from utils import augmentation
from utils.checkpoints import Checkpoint
from utils.datasets import DatasetSpec, load_dataset, num_records, record_path
from utils.labels import IGNORE_LABEL
from utils.errors import SegMentorError, first_line
from utils.files import atomic_path, disk_full_errors, write_text_atomic
from utils.inference import ScoreAccumulator
from utils.prediction import PIXELS_AS_TRAINED, _SessionOwner, _restored_session
from utils.tf_records import parse_example, read_records, records_errors
from utils.tfcompat import session_config, stderr_silenced, tf, tf2  # tf2: half-pixel resize
from utils.tta import DEFAULT_OVERLAP, InferencePlan, pad_bottom_right

METADATA_FILE = "segmentor.json"
TFLITE_FILE = "model.tflite"
SAVEDMODEL_METADATA_DIR = "assets.extra"  # the SavedModel folder for files TF itself ignores
SERVING_KEY = "serving_default"
INPUT_NAME = "images"

# Float exports compute the same function as the checkpoint; 1e-4 allows for
# reordered float32 sums (the TFLite kernels, constant folding), nothing more.
FLOAT_TOLERANCE = 1e-4
QUANTIZED_WARN_DROP_POINTS = 1.0  # mIoU points
DEFAULT_CHECK_IMAGES = 20
# Calibration images for int8: enough for stable activation ranges on a few
# hundred channels; spread over the whole training file.
REPRESENTATIVE_IMAGES = 64


# --- Graphs: what the exports compute -------------------------------------------------------

def build_serving_graph(run, num_classes, pixels):
    """In the default graph: uint8 images [B, H, W, 3] placeholder -> (images, classes,
    probabilities) at input size, sized as fcn_test sizes images (`pixels` > 0 or 0)."""
    images = tf.placeholder(tf.uint8, [None, None, None, 3], name=INPUT_NAME)
    source_size = tf.shape(images)[1:3]
    # Every image of a batch has the same size, so one valid region serves all.
    sized = tf.map_fn(lambda image: augmentation.eval_image_sizing(image, pixels, run.pad_rgb)[0],
                      images, fn_output_signature=tf.float32)
    _, valid_height, valid_width = augmentation.eval_image_sizing(images[0], pixels, run.pad_rgb)
    logits = run.build_logits(sized, num_classes)[:, :valid_height, :valid_width]
    # The softmax, not the logits, is resized to the source size before the argmax, as
    # fcn_test does it (utils.tta): the classes then equal fcn_test's predictions.
    probabilities = tf.identity(tf2.image.resize(tf.nn.softmax(logits), source_size,
                                                 method="bilinear"), name="probabilities")
    classes = tf.argmax(probabilities, axis=-1, output_type=tf.int32, name="classes")
    return images, classes, probabilities


def build_fixed_size_graph(run, num_classes, pixels):
    """In the default graph: float32 RGB [1, P, P, 3] placeholder (already sized and padded)
    -> (image, classes [1, P, P], probabilities [1, P, P, C]): the TFLite network."""
    image = tf.placeholder(tf.float32, [1, pixels, pixels, 3], name="image")
    logits = run.build_logits(image, num_classes)
    classes = tf.argmax(logits, axis=-1, output_type=tf.int32, name="classes")
    probabilities = tf.nn.softmax(logits, name="probabilities")
    return image, classes, probabilities


class CheckpointServingModel(_SessionOwner):
    """The checkpoint in graph mode, computing what the SavedModel computes (the reference)."""

    def __init__(self, run, checkpoint, num_classes, pixels):
        self.graph = tf.Graph()
        with self.graph.as_default():
            self.images, self.classes, self.probabilities_op = build_serving_graph(
                run, num_classes, pixels)
            self.sess = _restored_session(self.graph, checkpoint)

    def probabilities(self, image):
        """uint8 RGB [h, w, 3] -> float32 [h, w, C]."""
        return self.sess.run(self.probabilities_op, {self.images: image[np.newaxis]})[0]


class CheckpointFixedSizeNetwork(_SessionOwner):
    """The checkpoint in graph mode as the TFLite network: [1, P, P, 3] -> [1, P, P, C]."""

    def __init__(self, run, checkpoint, num_classes, pixels):
        self.graph = tf.Graph()
        with self.graph.as_default():
            self.image, self.classes, self.probabilities = build_fixed_size_graph(
                run, num_classes, pixels)
            self.sess = _restored_session(self.graph, checkpoint)

    def __call__(self, sized_image):
        return self.sess.run(self.probabilities, {self.image: sized_image})


class FixedSizeSegmenter:
    """Any-size images through a fixed-size network, sized as fcn_test sizes them
    (utils.tta: larger side to P, padded with `pad_rgb`, the network's; the image's region
    of the probabilities resized bilinearly to the source size).

    `network(float32 [1, P, P, 3]) -> probabilities [1, P, P, C]`.
    """

    def __init__(self, network, pixels, pad_rgb):
        self.network = network
        self.pixels = pixels
        self.pad_rgb = tuple(pad_rgb)
        self.plan = InferencePlan(pixels=pixels, pad_rgb=self.pad_rgb)

    def predict_probabilities(self, images):
        """float32 RGB 0..255 [B, H, W, 3] with H, W <= P -> softmax [B, H, W, C]: each
        image padded to P x P with pad_rgb (as evaluation pads), the result cropped back.
        The predictor seam of utils.tta."""
        images = np.asarray(images, np.float32)
        height, width = images.shape[1:3]
        if height > self.pixels or width > self.pixels:
            raise SegMentorError(f"this model takes at most {self.pixels} x {self.pixels} "
                                 f"pixels, got {height} x {width}")
        return np.stack([self.network(pad_bottom_right(image, self.pixels, self.pixels,
                                                       self.pad_rgb)[np.newaxis])[0, :height, :width]
                         for image in images])

    def probabilities(self, image):
        """uint8 RGB [h, w, 3] -> float32 [h, w, C] at the image's size."""
        return self.plan.probabilities(self.predict_probabilities, [image])[0]

    def close(self):
        if hasattr(self.network, "close"):
            self.network.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


# --- Reading exports back ---------------------------------------------------------------------

class ExportedModel:
    """Base of the loaded exports: metadata, probabilities(image), segment(image)."""

    def __init__(self, metadata):
        self.metadata = metadata
        self.class_names = metadata["class_names"]
        self.num_classes = len(self.class_names)
        # What fcn_test draws with: the classes as a (record-less) dataset.
        self.spec = DatasetSpec(name=metadata["dataset"], class_names=tuple(self.class_names),
                                colors=tuple(tuple(color) for color in metadata["colors"]),
                                class_frequencies=None, default_pixels=metadata["pixels"],
                                converter="fcn_export.py")
        # Exports before the key existed: the colour the network's preprocessing zeroes.
        self.pad_rgb = tuple(metadata.get("pad_rgb") or fcn_arch.pad_rgb(metadata["basenet"]))

    def segment(self, image):
        """uint8 RGB [h, w, 3] -> uint8 class ids [h, w]."""
        return np.argmax(self.probabilities(image), axis=-1).astype(np.uint8)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class SavedModelModel(ExportedModel):
    """A seg-mentor SavedModel, loaded into its own graph (this project runs in graph mode)."""

    def __init__(self, path, num_threads=None):
        super().__init__(read_metadata(os.path.join(path, SAVEDMODEL_METADATA_DIR, METADATA_FILE)))
        self.graph = tf.Graph()
        self.sess = tf.Session(graph=self.graph, config=session_config(num_threads))
        try:
            meta_graph = tf.saved_model.loader.load(
                self.sess, [tf.saved_model.tag_constants.SERVING], path)
        except (OSError, RuntimeError, ValueError, tf.errors.OpError) as err:
            self.sess.close()
            raise SegMentorError(f"cannot load SavedModel {path} ({first_line(err)})") from None
        signature = meta_graph.signature_def[SERVING_KEY]
        self._images = self.graph.get_tensor_by_name(signature.inputs[INPUT_NAME].name)
        self._probabilities = self.graph.get_tensor_by_name(
            signature.outputs["probabilities"].name)

    def predict_probabilities(self, images):
        """RGB 0..255 [B, H, W, 3] (any size; float is rounded to the uint8 the signature
        takes) -> softmax [B, H, W, C]. The predictor seam of utils.tta."""
        images = np.clip(np.round(images), 0, 255).astype(np.uint8)
        return self.sess.run(self._probabilities, {self._images: images})

    def probabilities(self, image):
        return self.predict_probabilities(image[np.newaxis])[0]

    def close(self):
        self.sess.close()


class TfliteNetwork:
    """A .tflite segmentation network: float32 [1, P, P, 3] -> probabilities [1, P, P, C].

    Quantized inputs (int8 models take uint8) are quantized here with the
    model's own scale and zero point.
    """

    def __init__(self, path, num_threads=None):
        from ai_edge_litert.interpreter import Interpreter  # only TFLite users pay the import
        try:
            self.interpreter = Interpreter(model_path=path, num_threads=num_threads)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            raise SegMentorError(f"cannot load TFLite model {path} ({first_line(err)})") from None
        (self._input,) = self.interpreter.get_input_details()
        outputs = {detail["name"]: detail for detail in self.interpreter.get_output_details()}
        self._probabilities = outputs["probabilities"]
        self.pixels = int(self._input["shape"][1])

    def __call__(self, sized_image):
        dtype = self._input["dtype"]
        scale, zero_point = self._input["quantization"]
        if dtype != np.float32:
            limits = np.iinfo(dtype)
            sized_image = np.clip(np.round(sized_image / scale + zero_point),
                                  limits.min, limits.max).astype(dtype)
        self.interpreter.set_tensor(self._input["index"], sized_image)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._probabilities["index"])


class TfliteModel(ExportedModel):
    """A seg-mentor .tflite with its metadata; images of any size, sized as fcn_test does."""

    def __init__(self, path, num_threads=None):
        folder = os.path.dirname(os.path.abspath(path))
        super().__init__(read_metadata(os.path.join(folder, METADATA_FILE)))
        self.network = TfliteNetwork(path, num_threads)
        self.pixels = self.network.pixels
        self._segmenter = FixedSizeSegmenter(self.network, self.pixels, self.pad_rgb)

    def predict_probabilities(self, images):
        """float32 RGB [B, H, W, 3], H, W <= P -> softmax [B, H, W, C] (padded to P, cropped)."""
        return self._segmenter.predict_probabilities(images)

    def probabilities(self, image):
        return self._segmenter.probabilities(image)

    def close(self):
        self._segmenter.close()


def read_metadata(path):
    try:
        with open(path) as f:
            return json.load(f)
    except OSError as err:
        raise SegMentorError(f"cannot read {path} ({err.strerror}): not a seg-mentor export, "
                             f"or {METADATA_FILE} did not travel with the model") from None
    except json.JSONDecodeError as err:
        raise SegMentorError(f"{path} is damaged ({err})") from None


def load_exported(path, num_threads=None):
    """A SavedModel folder, a .tflite file, or a folder holding model.tflite -> ExportedModel.
    num_threads: CPU threads it may use (None: the runtime's default)."""
    path = os.fspath(path)
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return SavedModelModel(path, num_threads)
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, TFLITE_FILE)):
        path = os.path.join(path, TFLITE_FILE)
    if os.path.isfile(path) and path.endswith(".tflite"):
        return TfliteModel(path, num_threads)
    raise SegMentorError(f"{path} is neither a SavedModel folder nor a .tflite file (nor a "
                         f"folder holding {TFLITE_FILE}); pass what fcn_export.py wrote")


# --- Data for the check and the calibration -------------------------------------------------

@dataclasses.dataclass
class LabelledImage:
    filename: str
    image: np.ndarray  # uint8 [h, w, 3]
    label: np.ndarray  # uint8 [h, w], IGNORE_LABEL where void


def read_split_images(spec, datapath, split, count=None, stride=1):
    """Source images and labels of a split in file order: every `stride`-th, at most
    `count` (None: all). A generator: one image in memory at a time."""
    path = record_path(spec, datapath, split)
    graph = tf.Graph()
    with graph.as_default():
        records = read_records(path).shard(stride, 0)
        if count is not None:
            records = records.take(count)
        example = tf.data.make_one_shot_iterator(records.map(parse_example)).get_next()
    with tf.Session(graph=graph, config=session_config()) as sess, records_errors(path):
        while True:
            try:
                item = sess.run(example)
            except tf.errors.OutOfRangeError:
                return
            yield LabelledImage(item["filename"].decode(), item["image"],
                                item["label"][..., 0])


def representative_images(spec, datapath, pixels, pad_rgb):
    """int8 calibration: a callable yielding [float32 [1, P, P, 3]] training images, sized as
    in evaluation, REPRESENTATIVE_IMAGES of them spread over the training file."""
    path = record_path(spec, datapath, "train")
    if not os.path.isfile(path):
        raise SegMentorError(f"int8 export calibrates on the run's training images, and "
                             f"{path} is not there; pass --datapath where the run's "
                             f"{spec.name} records are, or export float32/float16")
    stride = max(1, num_records(spec, datapath, "train") // REPRESENTATIVE_IMAGES)

    def images():
        plan = InferencePlan(pixels=pixels, pad_rgb=pad_rgb)
        for item in tqdm(read_split_images(spec, datapath, "train", REPRESENTATIVE_IMAGES,
                                           stride),
                         total=REPRESENTATIVE_IMAGES, desc="int8 calibration", unit="img"):
            yield [plan.network_input(item.image)[0][np.newaxis]]
    return images


# --- Writing ------------------------------------------------------------------------------------

def _configure_float32(converter, calibration):
    pass


def _configure_float16(converter, calibration):
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]


def _configure_int8(converter, calibration):
    # Full integer: every op int8 (an op without an int8 kernel fails the conversion
    # rather than silently staying float), uint8 image in, float probabilities out.
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = calibration
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8


@dataclasses.dataclass(frozen=True)
class Quantization:
    """configure(converter, calibration): set up a TFLiteConverter. exact: the export must
    equal the checkpoint (else its mIoU is compared). calibrated: needs training images."""
    configure: object
    exact: bool
    calibrated: bool = False


QUANTIZATIONS = {
    "none": Quantization(_configure_float32, exact=True),
    "float16": Quantization(_configure_float16, exact=False),
    "int8": Quantization(_configure_int8, exact=False, calibrated=True),
}


def _write_savedmodel(run, checkpoint, num_classes, pixels, quantization, calibration, out_dir):
    """SavedModel into out_dir (which must not exist); returns (model path, metadata path)."""
    graph = tf.Graph()
    with graph.as_default():
        images, classes, probabilities = build_serving_graph(run, num_classes, pixels)
        with _restored_session(graph, checkpoint) as sess:
            builder = tf.saved_model.builder.SavedModelBuilder(out_dir)
            signature = tf.saved_model.signature_def_utils.predict_signature_def(
                inputs={INPUT_NAME: images},
                outputs={"classes": classes, "probabilities": probabilities})
            builder.add_meta_graph_and_variables(
                sess, [tf.saved_model.tag_constants.SERVING],
                signature_def_map={SERVING_KEY: signature}, strip_default_attrs=True)
            builder.save()
    os.makedirs(os.path.join(out_dir, SAVEDMODEL_METADATA_DIR))
    return out_dir, os.path.join(out_dir, SAVEDMODEL_METADATA_DIR, METADATA_FILE)


def _write_tflite(run, checkpoint, num_classes, pixels, quantization, calibration, out_dir):
    """model.tflite into out_dir (created); returns (model path, metadata path)."""
    graph = tf.Graph()
    with graph.as_default():
        image, classes, probabilities = build_fixed_size_graph(run, num_classes, pixels)
        with _restored_session(graph, checkpoint) as sess:
            converter = tf.lite.TFLiteConverter.from_session(sess, [image],
                                                             [probabilities, classes])
            quantization.configure(converter, calibration)
            try:
                with stderr_silenced():
                    flatbuffer = converter.convert()
            except Exception as err:  # the converter raises several types, all with a reason
                raise SegMentorError(f"TFLite conversion failed ({first_line(err)})") from None
    os.makedirs(out_dir)
    model_path = os.path.join(out_dir, TFLITE_FILE)
    with open(model_path, "wb") as f:
        f.write(flatbuffer)
    return model_path, os.path.join(out_dir, METADATA_FILE)


def _serving_reference(run, checkpoint, num_classes, pixels):
    return CheckpointServingModel(run, checkpoint, num_classes, pixels)


def _fixed_size_reference(run, checkpoint, num_classes, pixels):
    return FixedSizeSegmenter(CheckpointFixedSizeNetwork(run, checkpoint, num_classes, pixels),
                              pixels, run.pad_rgb)


@dataclasses.dataclass(frozen=True)
class ExportFormat:
    """write(run, checkpoint, num_classes, pixels, quantization, calibration, out_dir) ->
    (model path, metadata path); reference(run, checkpoint, num_classes, pixels): the
    checkpoint computing the same, for the check. fixed_size: needs pixels > 0."""
    write: object
    reference: object
    fixed_size: bool
    quantizations: tuple
    input_description: str


FORMATS = {
    "savedmodel": ExportFormat(
        _write_savedmodel, _serving_reference, fixed_size=False, quantizations=("none",),
        input_description="signature serving_default: images uint8 RGB [B, H, W, 3] -> "
                          "classes int32 [B, H, W], probabilities float32 [B, H, W, C]"),
    "tflite": ExportFormat(
        _write_tflite, _fixed_size_reference, fixed_size=True,
        quantizations=tuple(QUANTIZATIONS),
        input_description="image [1, P, P, 3] RGB 0..255 (float32; uint8 for int8), the larger "
                          "side scaled to P and padded bottom/right with pad_rgb (the colour "
                          "the network's preprocessing turns into 0) -> classes int32 [1, P, P], probabilities float32 "
                          "[1, P, P, C]; crop the image's region"),
}


def export_pixels(run, format_name, pixels):
    """The size an export runs the network at, checked against the format."""
    pixels = run.eval_pixels(pixels)
    if FORMATS[format_name].fixed_size and pixels == 0:
        raise SegMentorError(f"{format_name} has a fixed input size: pass --pixels > 0, or -1 "
                             f"for the run's ({run.settings.pixels})")
    return pixels


def check_out_dir(out_dir):
    """An output folder must not exist, or be empty: an export never mixes with other files."""
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise SegMentorError(f"output folder {out_dir} exists and is not empty; pass a new --out "
                             f"or empty it")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise SegMentorError(f"--out {out_dir} is a file; pass a folder path")


# --- The check ------------------------------------------------------------------------------------

@dataclasses.dataclass
class CheckResult:
    num_images: int
    max_abs_difference: float   # of probabilities, over every pixel and class
    miou_checkpoint: float      # on the check images, fractions in [0, 1]
    miou_export: float

    @property
    def drop_points(self):
        return 100 * (self.miou_checkpoint - self.miou_export)


def compare_with_checkpoint(reference, exported, images, class_names):
    """Probabilities and mIoU of `exported` vs `reference` on `images` (LabelledImage)."""
    scores = {name: ScoreAccumulator(len(class_names), IGNORE_LABEL)
              for name in ("checkpoint", "export")}
    max_difference = 0.0
    for item in tqdm(images, desc="checking the export", unit="img"):
        expected = reference.probabilities(item.image)
        got = exported.probabilities(item.image)
        if got.shape != expected.shape:
            raise SegMentorError(f"the export gives probabilities of shape {got.shape} for "
                                 f"{item.filename}, the checkpoint {expected.shape}")
        max_difference = max(max_difference, float(np.max(np.abs(got - expected))))
        for name, probabilities in (("checkpoint", expected), ("export", got)):
            scores[name].add(item.label, np.argmax(probabilities, axis=-1))
    return CheckResult(len(images), max_difference,
                       scores["checkpoint"].metrics(class_names)["miou"],
                       scores["export"].metrics(class_names)["miou"])


def _judge(result, quantization, format_name, quantize):
    """Raise SegMentorError when a float export differs; print the figures either way."""
    what = (format_name if not FORMATS[format_name].fixed_size
            else f"{format_name} {'float32' if quantize == 'none' else quantize}")
    figures = (f"{what} vs checkpoint on {result.num_images} val images: max |probability "
               f"difference| {result.max_abs_difference:.2g}, "
               f"mIoU {100 * result.miou_checkpoint:.1f} "
               f"(checkpoint) vs {100 * result.miou_export:.1f} (export), drop "
               f"{result.drop_points:.2f} points")
    if quantization.exact and not result.max_abs_difference <= FLOAT_TOLERANCE:
        raise SegMentorError(f"the export differs from the checkpoint ({figures}; allowed "
                             f"{FLOAT_TOLERANCE:g}); nothing was written")
    print(figures)
    if not quantization.exact and result.drop_points > QUANTIZED_WARN_DROP_POINTS:
        print(f"warning: {what} loses {result.drop_points:.1f} mIoU points on the check images "
              f"(more than {QUANTIZED_WARN_DROP_POINTS:g})", file=sys.stderr)


def _metadata(run, checkpoint, spec, format_name, quantize, pixels):
    settings = run.settings
    return dict(
        format=format_name, quantize=quantize, pixels=pixels, pad_rgb=list(run.pad_rgb),
        io=FORMATS[format_name].input_description,
        class_names=list(spec.class_names), colors=[list(color) for color in spec.colors],
        ignore_label=IGNORE_LABEL, dataset=spec.name,
        datapath=os.path.abspath(run.datapath) if run.datapath else None,
        basenet=settings.basenet,
        architecture={key: getattr(settings, key) for key in sorted((
            "extended_arch", "fcn16", "fcn8", "fcn4", "output_stride", "trainable_upsampling"))},
        traindir=os.path.abspath(run.traindir), checkpoint=os.path.basename(checkpoint.prefix),
        step=checkpoint.step)


def write_export(run, checkpoint, spec, format_name, quantize, pixels, calibration, out_dir):
    """The export and its metadata, unchecked, into `out_dir` (which must not exist);
    returns (model path, metadata path). `pixels` as export_pixels gives it."""
    model_path, metadata_path = FORMATS[format_name].write(
        run, checkpoint, spec.num_classes, pixels, QUANTIZATIONS[quantize], calibration, out_dir)
    metadata = _metadata(run, checkpoint, spec, format_name, quantize, pixels)
    write_text_atomic(metadata_path, json.dumps(metadata, indent=1) + "\n")
    return model_path, metadata_path


def export_run(run, checkpoint, format_name, quantize, pixels, out_dir,
               num_check_images=DEFAULT_CHECK_IMAGES):
    """Write the export to `out_dir`, proven against the checkpoint; returns CheckResult.

    Everything is checked before the network is built (the folder, the size,
    the check images, the calibration records); the export is written to a
    temporary folder beside `out_dir` and renamed into place only after its
    check passed, so a failure leaves nothing behind.
    """
    export_format, quantization = FORMATS[format_name], QUANTIZATIONS[quantize]
    if quantize not in export_format.quantizations:
        raise SegMentorError(f"--quantize {quantize} does not apply to {format_name}; "
                             f"choose from: {', '.join(export_format.quantizations)}")
    check_out_dir(out_dir)
    pixels = export_pixels(run, format_name, pixels)
    spec = run.dataset()
    calibration = (representative_images(spec, run.datapath, pixels, run.pad_rgb)
                   if quantization.calibrated else None)
    if not os.path.isfile(record_path(spec, run.datapath, "val")):
        raise SegMentorError(f"the export is checked on validation images, and "
                             f"{record_path(spec, run.datapath, 'val')} is not there; pass "
                             f"--datapath where the run's {spec.name} records are")
    check_images = list(read_split_images(spec, run.datapath, "val", num_check_images))
    if not check_images:
        raise SegMentorError(f"the val split of {spec.name} holds no images to check against")

    os.makedirs(os.path.dirname(os.path.abspath(out_dir)), exist_ok=True)
    # A full disk is one line naming the folder; atomic_path has removed the partial one.
    with disk_full_errors(out_dir, "the export"), atomic_path(out_dir) as tmp_dir:
        model_path, metadata_path = write_export(run, checkpoint, spec, format_name, quantize,
                                                 pixels, calibration, tmp_dir)
        with export_format.reference(run, checkpoint, spec.num_classes, pixels) as reference, \
                load_exported(model_path) as exported:
            result = compare_with_checkpoint(reference, exported, check_images, spec.class_names)
        _judge(result, quantization, format_name, quantize)
        metadata = read_metadata(metadata_path)
        metadata["check"] = dataclasses.asdict(result)
        write_text_atomic(metadata_path, json.dumps(metadata, indent=1) + "\n")
    return result


# --- Scoring an export with fcn_test --model ------------------------------------------------------

class ExportedRun:
    """An export read back, standing in for prediction.TrainedRun in fcn_test --model:
    `checkpoint()` (the export: its path and step), `dataset()`, `inference_plan()`,
    `predictor()`, and `folder` (the export's folder, home of the default outputs).

    The model is loaded here, so a path that is no export fails before anything is written.
    """

    def __init__(self, path, datapath=None):
        self.model = load_exported(path, num_threads=None)
        self.path = path
        self.folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
        self.datapath = datapath or self.model.metadata.get("datapath")
        self._datapath_given = datapath is not None
        self._spec = None

    @property
    def fixed_size(self):
        """The size every network input must fit (TFLite), or 0: any size (SavedModel)."""
        return getattr(self.model, "pixels", 0)

    def checkpoint(self, afteriter=None, best=False):
        """The export itself: fcn_test's flags pick no other checkpoint for it."""
        return Checkpoint(self.path, self.model.metadata.get("step"))

    def eval_pixels(self, pixels=PIXELS_AS_TRAINED):
        """The size the export runs the network at (chosen when it was exported, whatever
        `pixels` asks: fcn_test refuses --pixels with --model)."""
        return self.model.metadata["pixels"]

    def inference_plan(self, pixels, scales=(1.0,), flip=False, tile=None,
                       overlap=DEFAULT_OVERLAP):
        """InferencePlan feeding the export as it expects (`pixels`, as eval_pixels gives
        it, is the export's own): a SavedModel sizes images inside
        (plan at native size), a TFLite model takes them sized to its P x P. Scales and
        windows need a network that runs at any size: a SavedModel exported with --pixels 0.
        """
        sizes_inside = self.model.metadata["pixels"]
        if (tuple(scales) != (1.0,) or tile) and (self.fixed_size or sizes_inside):
            raise SegMentorError(
                f"--scales/--tile need a model that takes any input size, and {self.path} "
                f"runs at {self.eval_pixels()} pixels; drop them, use --traindir, or export a "
                f"savedmodel with --pixels 0")
        return InferencePlan(pixels=self.fixed_size, scales=tuple(scales), flip=flip,
                             tile=tuple(tile) if tile else None, overlap=overlap,
                             pad_rgb=self.model.pad_rgb)

    def predictor(self, checkpoint=None):
        """The loaded export, with `num_classes` and `predict_probabilities(images)` (the
        seam utils.tta and utils.evaluation use); closing it closes this run's model."""
        return self.model

    def classes(self):
        """A record-less DatasetSpec of the export's classes and colours (for drawing
        photos, which need no dataset)."""
        return self.model.spec

    def dataset(self):
        """The DatasetSpec the model was trained on, its classes checked against the model's."""
        if self._spec is None:
            name = self.model.metadata["dataset"]
            try:
                spec = load_dataset(name, self.datapath)
            except SegMentorError as err:
                if self._datapath_given:
                    raise
                raise SegMentorError(f"{err} (looked in the datapath the model was trained "
                                     f"with; if the data moved, pass --datapath)") from None
            if list(spec.class_names) != self.model.class_names:
                raise SegMentorError(f"dataset {name} in {self.datapath} has classes "
                                     f"{list(spec.class_names)}, the model "
                                     f"{self.model.class_names}; pass the --datapath it was "
                                     f"trained on")
            self._spec = spec
        return self._spec
