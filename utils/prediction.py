"""Segmenting with a trained run: the eval network rebuilt from the run's
`runargs`, restored from one of its checkpoints, predicting class ids at each
image's own resolution.

    run = TrainedRun(traindir, datapath=None)   # runargs + checkpoints checked now
    checkpoint = run.checkpoint(afteriter)      # newest intact one, or snapshot fcn.ckpt_<afteriter>
    checkpoint = run.checkpoint(best=True)      # fcn.ckpt_best of a --keep_best run
    scores = score_split(run, checkpoint, 'val', pixels=-1, on_image=save,
                         image_indices=range(4))  # ScoreAccumulator
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
import sys

import numpy as np
from PIL import Image
from tqdm import tqdm
import tensorflow as tf2  # TF2 resize (half-pixel centres), as utils.augmentation uses

from fcn_arch import arch_from_runargs
from utils import augmentation
from utils.checkpoints import (BEST_NAME, LATEST_NAME, SNAPSHOT_NAME, Checkpoint, saved_step,
                               checkpoint_candidates, newest_intact, snapshot_steps)
from utils.datasets import IGNORE_LABEL, load_dataset, num_records, record_path
from utils.errors import SegMentorError, first_line
from utils.feeder import make_eval_dataset
from utils.inference import ScoreAccumulator
from utils.run_folder import RUNARGS_FILE, read_runargs
from utils.tf_records import records_errors
from utils.tfcompat import session_config, tf

# --pixels value meaning "the size the run was trained at" (0 means native size).
PIXELS_AS_TRAINED = -1
# runargs keys without a default: what the network and the data are (arch_from_runargs
# defaults the decoder and the other settings).
REQUIRED_RUNARGS = ("basenet", "dataset", "pixels")


class TrainedRun:
    """A run folder made by fcn_train.py: its settings and its checkpoints.

    Raises SegMentorError at once for a missing folder, missing, damaged or
    incomplete runargs, or a folder without any checkpoint. `datapath`
    overrides the run's own (for data that moved since training).
    """

    def __init__(self, traindir, datapath=None):
        if not os.path.isdir(traindir):
            raise SegMentorError(f"training run folder {traindir} not found; pass --traindir "
                                 f"tmp/<run> as made by fcn_train.py")
        self.traindir = traindir
        self.runargs = read_runargs(traindir)
        missing = [key for key in REQUIRED_RUNARGS if key not in self.runargs]
        if missing:
            raise SegMentorError(f"{os.path.join(traindir, RUNARGS_FILE)} lacks {', '.join(missing)}; "
                                 f"the run folder is damaged or not made by fcn_train.py")
        self.datapath = datapath or self.runargs.get("datapath")
        self._datapath_given = datapath is not None
        self._spec = None
        if not checkpoint_candidates(traindir):
            raise SegMentorError(f"no checkpoint ({LATEST_NAME}*) in {traindir}: train it first "
                                 f"with fcn_train.py, or pick another run")

    def checkpoint(self, afteriter=None, best=False):
        """The newest intact checkpoint, snapshot fcn.ckpt_<afteriter>, or with `best`
        fcn.ckpt_best (kept by fcn_train.py --keep_best).

        Without either, a damaged newest checkpoint (a save cut short) is
        passed over with a warning for the next one. SegMentorError, listing
        the snapshots there are, when the requested one is absent.
        """
        if best:
            prefix = os.path.join(self.traindir, BEST_NAME)
            if not os.path.isfile(prefix + ".index"):
                raise SegMentorError(f"no {BEST_NAME} in {self.traindir}: only runs trained "
                                     f"with --keep_best keep one")
        elif afteriter is None:
            return newest_intact(self.traindir, on_skip=_warn_skipped)
        else:
            prefix = os.path.join(self.traindir, SNAPSHOT_NAME.format(step=afteriter))
            if not os.path.isfile(prefix + ".index"):
                available = ", ".join(map(str, snapshot_steps(self.traindir))) or "none"
                raise SegMentorError(f"no snapshot {os.path.basename(prefix)} in {self.traindir}; "
                                     f"available --afteriter values: {available}")
        return Checkpoint(prefix, saved_step(prefix))

    def dataset(self):
        """DatasetSpec of the dataset the run was trained on (loaded once)."""
        if self._spec is None:
            try:
                self._spec = load_dataset(self.runargs["dataset"], self.datapath)
            except SegMentorError as err:
                if self._datapath_given:
                    raise
                raise SegMentorError(f"{err} (looked in the run's datapath; if the data moved, "
                                     f"pass --datapath)") from None
        return self._spec

    def eval_pixels(self, pixels):
        """Network input size for --pixels: -1 as trained, 0 native, > 0 that size."""
        if pixels == PIXELS_AS_TRAINED:
            return int(self.runargs["pixels"])
        if pixels < PIXELS_AS_TRAINED:
            raise SegMentorError(f"--pixels must be -1 (as trained), 0 (native size) or a size > 0; "
                                 f"got {pixels}")
        return pixels

    def build_logits(self, images, num_classes):
        """Eval tower (is_training=False) of the run's network: logits [B, H, W, C]."""
        return arch_from_runargs(self.runargs, num_classes, is_training=False).build_net(images)


def _warn_skipped(prefix, reason):
    print(f"warning: checkpoint {prefix} is damaged ({reason}); trying an older one",
          file=sys.stderr)


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


def _restored_session(graph, checkpoint):
    """A session on `graph` with its model variables restored from `checkpoint` (which
    also holds optimizer slots and the step, which evaluation does not build)."""
    saver = tf.train.Saver(tf.global_variables())
    sess = tf.Session(graph=graph, config=session_config())
    try:
        saver.restore(sess, checkpoint.prefix)
    except (tf.errors.OpError, ValueError) as err:
        sess.close()
        raise SegMentorError(f"cannot restore {checkpoint.prefix} ({first_line(err)}); "
                             f"is it damaged, or were runargs edited?") from None
    except BaseException:
        sess.close()
        raise
    return sess


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
    prediction: np.ndarray        # uint8 [h, w] class ids
    label: np.ndarray             # uint8 [h, w] class ids, IGNORE_LABEL where void
    image: np.ndarray | None      # uint8 [h, w, 3] RGB: what the network saw, resized to
                                  # [h, w]; only for the images asked for (image_indices)


class SplitPredictor(_SessionOwner):
    """Iterate over one split's images with their predictions (one pass, file order).

    A context manager owning its graph and session:
        with SplitPredictor(run, checkpoint, 'val', pixels, batch_size, image_indices) as split:
            len(split); for item in split: ...

    The picture of the network input (`item.image`) costs a fetch and a resize,
    so only the images whose index is in `image_indices` get one.
    """

    def __init__(self, run, checkpoint, split, pixels, batch_size=1, image_indices=()):
        self.spec = run.dataset()
        datapath = run.datapath
        if split not in self.spec.split_files or not os.path.isfile(
                record_path(self.spec, datapath, split)):
            have = [name for name in self.spec.split_files
                    if os.path.isfile(record_path(self.spec, datapath, name))]
            raise SegMentorError(f"dataset {self.spec.name} has no '{split}' split; "
                                 f"choose --split from: {', '.join(have) or 'none'}")
        self.num_images = num_records(self.spec, datapath, split)
        self._path = record_path(self.spec, datapath, split)
        self._batch_size = batch_size
        self._image_indices = image_indices  # a set or a range: membership tests only
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
                label=batch["native_label"], height=batch["height"], width=batch["width"],
                filename=batch["filename"])
            self._fetches_with_images = dict(
                self._fetches, image=batch["image"], valid_height=batch["valid_height"],
                valid_width=batch["valid_width"])
            self.sess = _restored_session(self.graph, checkpoint)

    def __len__(self):
        return self.num_images

    def __iter__(self):
        first = 0  # index of the batch's first image (batches are full but for the last)
        with records_errors(self._path):
            while True:
                wanted = {index for index in range(first, first + self._batch_size)
                          if index in self._image_indices}
                try:
                    batch = self.sess.run(self._fetches_with_images if wanted else self._fetches)
                except tf.errors.OutOfRangeError:
                    return
                yield from _unbatch(batch, first, wanted)
                first += len(batch["filename"])


def _unbatch(batch, first, wanted):
    for index in range(len(batch["filename"])):
        height, width = batch["height"][index], batch["width"][index]
        image = None
        if first + index in wanted:
            valid = batch["image"][index, :batch["valid_height"][index], :batch["valid_width"][index]]
            image = _resize_rgb(valid, height, width)
        yield ImagePrediction(
            filename=batch["filename"][index].decode(),
            prediction=batch["prediction"][index, :height, :width],
            label=batch["label"][index, :height, :width].astype(np.uint8),
            image=image)


def _resize_rgb(image, height, width):
    """float RGB [h', w', 3] -> uint8 [height, width, 3] (a picture of the network input)."""
    picture = Image.fromarray(np.clip(np.rint(image), 0, 255).astype(np.uint8))
    if picture.size != (width, height):
        picture = picture.resize((int(width), int(height)), Image.BILINEAR)
    return np.asarray(picture)


def score_split(run, checkpoint, split, pixels, batch_size=1, on_image=None, image_indices=()):
    """Predict every image of `split` and count it into one ScoreAccumulator (returned).

    `on_image(index, item)` sees each ImagePrediction on the way (to save
    pictures); items whose index is in `image_indices` carry the image. A tqdm
    bar shows progress.
    """
    with SplitPredictor(run, checkpoint, split, pixels, batch_size, image_indices) as images:
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
            sized, valid_height, valid_width = augmentation.eval_image_sizing(
                self._image, run.eval_pixels(pixels))
            logits = run.build_logits(sized[tf.newaxis], self.spec.num_classes)
            self._prediction = predictions_at_source_size(
                logits, valid_height[tf.newaxis], valid_width[tf.newaxis],
                source_size[:1], source_size[1:])[0]
            self.sess = _restored_session(self.graph, checkpoint)

    def segment(self, image):
        """uint8 RGB [h, w, 3] -> uint8 class ids [h, w]."""
        return self.sess.run(self._prediction, {self._image: image})
