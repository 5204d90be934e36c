"""Segmenting with a trained run: the eval network rebuilt from the run's
`runargs`, restored from one of its checkpoints, predicting class ids at each
image's own resolution.

    run = TrainedRun(traindir)                  # runargs + checkpoints checked now
    checkpoint = run.checkpoint(afteriter)      # fcn.ckpt, or the snapshot fcn.ckpt_<afteriter>
    scores = score_split(run, checkpoint, 'val', pixels=-1, on_image=save)  # ScoreAccumulator
    with SplitPredictor(run, checkpoint, 'val', pixels=-1) as split:
        for item in split: ...                  # one ImagePrediction per image, file order
    with Segmenter(run, checkpoint) as segmenter:  # numpy in, numpy out (photos, video frames)
        prediction = segmenter.segment(image)     # uint8 [h, w] for uint8 RGB [h, w, 3]

Whatever size the network sees (`pixels`), logits are cropped to the image's
region and resized bilinearly to the source resolution *before* the argmax:
scores are always computed against the labels as they were drawn, and
resizing scores rather than class ids keeps boundaries smooth.
"""
import dataclasses
import os

import numpy as np
from PIL import Image
from tqdm import tqdm
import tensorflow as tf2  # TF2 resize (half-pixel centres), as utils.augmentation uses

from fcn_arch import get_arch_class
from utils import augmentation
from utils.checkpoints import LATEST_NAME, SNAPSHOT_NAME, checkpoint_candidates, snapshot_steps
from utils.datasets import IGNORE_LABEL, load_dataset, num_records, record_path
from utils.errors import SegMentorError
from utils.feeder import make_eval_dataset
from utils.inference import ScoreAccumulator
from utils.run_folder import read_runargs
from utils.tf_records import records_errors
from utils.tfcompat import tf

# --pixels value meaning "the size the run was trained at" (0 means native size).
PIXELS_AS_TRAINED = -1
# Name of the step counter variable fcn_train.py saves in every checkpoint.
GLOBAL_STEP_NAME = "global_step"


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    prefix: str          # path without .index / .data-*
    step: int | None     # training step it was saved at (None if unknown)


class TrainedRun:
    """A run folder made by fcn_train.py: its settings and its checkpoints.

    Raises SegMentorError at once for a missing folder, missing or damaged
    runargs, or a folder without any checkpoint.
    """

    def __init__(self, traindir):
        if not os.path.isdir(traindir):
            raise SegMentorError(f"training run folder {traindir} not found; pass --traindir "
                                 f"tmp/<run> as made by fcn_train.py")
        self.traindir = traindir
        self.runargs = read_runargs(traindir)
        if not checkpoint_candidates(traindir):
            raise SegMentorError(f"no checkpoint ({LATEST_NAME}*) in {traindir}: train it first "
                                 f"with fcn_train.py, or pick another run")

    def checkpoint(self, afteriter=None):
        """The newest checkpoint (normally fcn.ckpt), or snapshot fcn.ckpt_<afteriter>.

        SegMentorError, listing the snapshots there are, when that one is absent.
        """
        if afteriter is None:
            prefix = checkpoint_candidates(self.traindir)[0]
        else:
            prefix = os.path.join(self.traindir, SNAPSHOT_NAME.format(step=afteriter))
            if not os.path.isfile(prefix + ".index"):
                available = ", ".join(map(str, snapshot_steps(self.traindir))) or "none"
                raise SegMentorError(f"no snapshot {os.path.basename(prefix)} in {self.traindir}; "
                                     f"available --afteriter values: {available}")
        return Checkpoint(prefix, _saved_step(prefix))

    def dataset(self):
        """DatasetSpec of the dataset the run was trained on."""
        return load_dataset(self.runargs["dataset"], self.runargs.get("datapath"))

    def eval_pixels(self, pixels):
        """Network input size for --pixels: -1 as trained, 0 native, > 0 that size."""
        if pixels == PIXELS_AS_TRAINED:
            return int(self.runargs["pixels"])
        if pixels < PIXELS_AS_TRAINED:
            raise SegMentorError(f"--pixels must be -1 (as trained), 0 (native size) or a size > 0; "
                                 f"got {pixels}")
        return pixels

    def build_logits(self, images, num_classes):
        """Eval tower (is_training=False) of the run's network: logits [B, H, W, C].

        Weight and batch-norm decay only shape training updates, so they are not needed.
        """
        args = self.runargs
        arch = get_arch_class(args.get("extended_arch", "fcn"))(
            num_classes, is_training=False, net=args["basenet"],
            fcn16=args.get("fcn16", False), fcn8=args.get("fcn8", False),
            fcn4=args.get("fcn4", False),
            trainable_upsampling=args.get("trainable_upsampling", False))
        return arch.build_net(images)


def _saved_step(prefix):
    """The global step stored in a checkpoint (None when it has none)."""
    try:
        reader = tf.train.NewCheckpointReader(prefix)
    except Exception as err:  # TF raises several error types for unreadable files
        raise SegMentorError(f"cannot read checkpoint {prefix}: {str(err).splitlines()[0]}") from None
    if reader.has_tensor(GLOBAL_STEP_NAME):
        return int(reader.get_tensor(GLOBAL_STEP_NAME))
    return None


def predictions_at_source_size(logits, valid_height, valid_width, height, width):
    """Class ids uint8 [B, maxH, maxW] at each image's source size.

    logits [B, P, P, C]; image b fills logits[b, :valid_height[b], :valid_width[b]]
    and was height[b] x width[b] originally. Each prediction lies in the top
    left of its row, the rest is IGNORE_LABEL (the batch holds several sizes).
    """
    max_height, max_width = tf.reduce_max(height), tf.reduce_max(width)

    def one_image(inputs):
        image_logits, valid_h, valid_w, h, w = inputs
        region = image_logits[:valid_h, :valid_w]
        resized = tf2.image.resize(region, tf.stack([h, w]), method="bilinear")
        classes = tf.cast(tf.argmax(resized, axis=-1), tf.uint8)
        return tf.pad(classes, [[0, max_height - h], [0, max_width - w]],
                      constant_values=IGNORE_LABEL)

    return tf.map_fn(one_image, (logits, valid_height, valid_width, height, width),
                     fn_output_signature=tf.TensorSpec([None, None], tf.uint8))


def _restore(sess, checkpoint):
    """Restore the model variables of the current graph (the checkpoint also holds
    optimizer slots and the step, which evaluation does not build)."""
    saver = tf.train.Saver(tf.global_variables())
    try:
        saver.restore(sess, checkpoint.prefix)
    except (tf.errors.OpError, ValueError) as err:
        lines = [line for line in str(err).splitlines() if line.strip()]
        raise SegMentorError(f"cannot restore {checkpoint.prefix} ({lines[0] if lines else err}); "
                             f"is it damaged, or were runargs edited?") from None


def session_config():
    """Grow GPU memory as needed, so evaluation can share a GPU with training."""
    config = tf.ConfigProto()
    config.gpu_options.allow_growth = True
    return config


class _SessionOwner:
    """Closes its `sess` on close() or at the end of a `with` block."""

    def close(self):
        self.sess.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


@dataclasses.dataclass
class ImagePrediction:
    """One image of a split, at its source size."""
    filename: str
    prediction: np.ndarray   # uint8 [h, w] class ids
    label: np.ndarray        # uint8 [h, w] class ids, IGNORE_LABEL where void
    image: np.ndarray        # uint8 [h, w, 3] RGB: what the network saw, resized to [h, w]


class SplitPredictor(_SessionOwner):
    """Iterate over one split's images with their predictions (one pass, file order).

    A context manager owning its graph and session:
        with SplitPredictor(run, checkpoint, 'val', pixels, batch_size) as split:
            len(split); for item in split: ...
    """

    def __init__(self, run, checkpoint, split, pixels, batch_size=1):
        self.spec = run.dataset()
        datapath = run.runargs.get("datapath")
        if split not in self.spec.split_files or not os.path.isfile(
                record_path(self.spec, datapath, split)):
            have = [name for name in self.spec.split_files
                    if os.path.isfile(record_path(self.spec, datapath, name))]
            raise SegMentorError(f"dataset {self.spec.name} has no '{split}' split; "
                                 f"choose --split from: {', '.join(have) or 'none'}")
        self.num_images = num_records(self.spec, datapath, split)
        self._path = record_path(self.spec, datapath, split)
        self.graph = tf.Graph()
        with self.graph.as_default():
            dataset = make_eval_dataset(self.spec, datapath, split, run.eval_pixels(pixels),
                                        batch_size)
            batch = tf.data.make_one_shot_iterator(dataset).get_next()
            logits = run.build_logits(batch["image"], self.spec.num_classes)
            self._fetches = dict(
                prediction=predictions_at_source_size(
                    logits, batch["valid_height"], batch["valid_width"],
                    batch["height"], batch["width"]),
                label=batch["native_label"], image=batch["image"],
                valid_height=batch["valid_height"], valid_width=batch["valid_width"],
                height=batch["height"], width=batch["width"], filename=batch["filename"])
            self.sess = tf.Session(graph=self.graph, config=session_config())
            _restore(self.sess, checkpoint)

    def __len__(self):
        return self.num_images

    def __iter__(self):
        with records_errors(self._path):
            while True:
                try:
                    batch = self.sess.run(self._fetches)
                except tf.errors.OutOfRangeError:
                    return
                yield from _unbatch(batch)


def _unbatch(batch):
    for index in range(len(batch["filename"])):
        height, width = batch["height"][index], batch["width"][index]
        valid = batch["image"][index, :batch["valid_height"][index], :batch["valid_width"][index]]
        yield ImagePrediction(
            filename=batch["filename"][index].decode(),
            prediction=batch["prediction"][index, :height, :width],
            label=batch["label"][index, :height, :width].astype(np.uint8),
            image=_resize_rgb(valid, height, width))


def _resize_rgb(image, height, width):
    """float RGB [h', w', 3] -> uint8 [height, width, 3] (a picture of the network input)."""
    picture = Image.fromarray(np.clip(np.rint(image), 0, 255).astype(np.uint8))
    if picture.size != (width, height):
        picture = picture.resize((int(width), int(height)), Image.BILINEAR)
    return np.asarray(picture)


def score_split(run, checkpoint, split, pixels, batch_size=1, on_image=None):
    """Predict every image of `split` and count it into one ScoreAccumulator (returned).

    `on_image(index, item)` sees each ImagePrediction on the way (to save
    pictures); a tqdm bar shows progress.
    """
    with SplitPredictor(run, checkpoint, split, pixels, batch_size) as images:
        scores = ScoreAccumulator(images.spec.num_classes, IGNORE_LABEL)
        for index, item in enumerate(tqdm(images, total=len(images), desc=f"scoring {split}",
                                          unit="img")):
            scores.add(item.label, item.prediction)
            if on_image:
                on_image(index, item)
    if scores.num_images == 0:
        raise SegMentorError(f"split '{split}' of {images.spec.name} holds no images")
    return scores


class Segmenter(_SessionOwner):
    """Segment numpy RGB images of any size with a run's network (photos, video frames).

        with Segmenter(run, checkpoint, pixels=-1) as segmenter:
            prediction = segmenter.segment(image)   # uint8 [h, w, 3] -> uint8 [h, w]

    Images are sized exactly as the split evaluation sizes them.
    """

    def __init__(self, run, checkpoint, pixels=PIXELS_AS_TRAINED):
        self.spec = run.dataset()
        self.graph = tf.Graph()
        with self.graph.as_default():
            self._image = tf.placeholder(tf.uint8, [None, None, 3], name="image")
            source_size = tf.shape(self._image)[:2]
            # eval_sizing sizes an (image, label) pair; a photo has no label.
            no_label = tf.zeros(tf.concat([source_size, [1]], axis=0), tf.uint8)
            sized, _, valid_height, valid_width = augmentation.eval_sizing(
                self._image, no_label, run.eval_pixels(pixels))
            logits = run.build_logits(sized[tf.newaxis], self.spec.num_classes)
            self._prediction = predictions_at_source_size(
                logits, valid_height[tf.newaxis], valid_width[tf.newaxis],
                source_size[:1], source_size[1:])[0]
            self.sess = tf.Session(graph=self.graph, config=session_config())
            _restore(self.sess, checkpoint)

    def segment(self, image):
        """uint8 RGB [h, w, 3] -> uint8 class ids [h, w]."""
        return self.sess.run(self._prediction, {self._image: image})
