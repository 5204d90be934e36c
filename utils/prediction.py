"""Segmenting with a trained run: the eval network rebuilt from the run's
`runargs`, restored from one of its checkpoints, predicting class ids at each
image's own resolution.

    run = TrainedRun(traindir, datapath=None)   # runargs + checkpoints checked now
    checkpoint = run.checkpoint(afteriter)      # newest intact one, or snapshot fcn.ckpt_<afteriter>
    checkpoint = run.checkpoint(best=True)      # fcn.ckpt_best of a --keep_best run
    pixels = run.eval_pixels(-1)                # --pixels resolved: as trained
    plan = run.inference_plan(pixels, scales=(1,), flip=False, tile=None)   # InferencePlan
    with run.predictor(checkpoint) as predictor:                  # NetworkPredictor
        scores = score_split(predictor, spec, datapath, 'val', plan,
                             on_image=save)    # ScoreAccumulator
        with SplitPredictor(predictor, spec, datapath, 'val', plan) as split:
            for item in split: ...              # one ImagePrediction per image, file order
        prediction = Segmenter(predictor, plan).segment(image)  # photos, video frames

Whatever size the network sees (`pixels`, scales, windows), its softmax is
cropped to the image's region and resized bilinearly to the source resolution
*before* the argmax (utils.tta): scores are always computed against the
labels as they were drawn, and resizing scores rather than class ids keeps
boundaries smooth.
"""
import dataclasses
import os
import sys

import numpy as np
from tqdm import tqdm

from fcn_arch import arch_from_settings, pad_rgb
from utils.checkpoints import (BEST_NAME, LATEST_NAME, Checkpoint, checkpoint_candidates,
                               pick_checkpoint, saved_step)
from utils.datasets import how_to_make, load_dataset, num_records, record_path
from utils.labels import IGNORE_LABEL
from utils.errors import SegMentorError, first_line
from utils.feeder import make_split_dataset
from utils.inference import ScoreAccumulator
from utils.run_folder import read_runargs
from utils.run_settings import saved_run_settings
from utils.tf_records import records_errors
from utils.tfcompat import session_config, tf
from utils.tta import DEFAULT_OVERLAP, InferencePlan

# --pixels value meaning "the size the run was trained at" (0 means native size).
PIXELS_AS_TRAINED = -1


class TrainedRun:
    """A run folder made by fcn_train.py: its settings (`settings`, a RunSettings;
    `runargs`, the file as saved) and its checkpoints.

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
        self.settings = saved_run_settings(self.runargs, traindir)
        self.datapath = datapath or self.runargs.get("datapath")
        self._datapath_given = datapath is not None
        self._spec = None
        if not checkpoint_candidates(traindir):
            raise SegMentorError(f"no checkpoint ({LATEST_NAME}*) in {traindir}: its training "
                                 f"failed or was interrupted before the first save (or is still "
                                 f"starting); continue it with python fcn_train.py --resume "
                                 f"{traindir}, or pick another run")

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
            return Checkpoint(prefix, saved_step(prefix))
        return pick_checkpoint(self.traindir, afteriter, on_skip=_warn_skipped)

    def dataset(self):
        """DatasetSpec of the dataset the run was trained on (loaded once)."""
        if self._spec is None:
            try:
                self._spec = load_dataset(self.settings.dataset, self.datapath)
            except SegMentorError as err:
                if self._datapath_given:
                    raise
                raise SegMentorError(f"{err} (looked in the run's datapath; if the data moved, "
                                     f"pass --datapath)") from None
        return self._spec

    def eval_pixels(self, pixels):
        """Network input size for --pixels: -1 as trained, 0 native, > 0 that size.
        The one place --pixels is resolved; a command resolves it once."""
        if pixels == PIXELS_AS_TRAINED:
            return int(self.settings.pixels)
        if pixels < PIXELS_AS_TRAINED:
            raise SegMentorError(f"--pixels must be -1 (as trained), 0 (native size) or a size > 0; "
                                 f"got {pixels}")
        return pixels

    def inference_plan(self, pixels, scales=(1.0,), flip=False, tile=None,
                       overlap=DEFAULT_OVERLAP):
        """InferencePlan for this run at `pixels`, already resolved by eval_pixels."""
        return InferencePlan(pixels=pixels, scales=tuple(scales), flip=flip,
                             tile=tuple(tile) if tile else None, overlap=overlap,
                             pad_rgb=self.pad_rgb)

    @property
    def pad_rgb(self):
        """The colour this run's inputs are padded with (zero after its preprocessing)."""
        return pad_rgb(self.settings.basenet)

    def predictor(self, checkpoint):
        """NetworkPredictor of this run's network at `checkpoint` (close it, or use `with`)."""
        return NetworkPredictor(self, checkpoint)

    def build_logits(self, images, num_classes):
        """Eval tower (is_training=False) of the run's network: logits [B, H, W, C]."""
        return arch_from_settings(self.settings, num_classes, is_training=False).build_net(images)


def _warn_skipped(prefix, reason):
    print(f"warning: checkpoint {prefix} is damaged ({reason}); trying an older one",
          file=sys.stderr)


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



class NetworkPredictor(_SessionOwner):
    """A run's eval network restored from one checkpoint, as a probability map function.

        with NetworkPredictor(run, checkpoint) as predictor:
            probabilities = predictor.predict_probabilities(images)

    This is the seam every scorer goes through (utils.tta composes passes
    and windows of it): anything with `num_classes` and the same
    `predict_probabilities` (an exported model) can stand in for it.
    """

    def __init__(self, run, checkpoint):
        self.num_classes = run.dataset().num_classes
        self.graph = tf.Graph()
        with self.graph.as_default():
            self._images = tf.placeholder(tf.float32, [None, None, None, 3], name="images")
            logits = run.build_logits(self._images, self.num_classes)
            self._probabilities = tf.nn.softmax(logits)
            self.sess = _restored_session(self.graph, checkpoint)

    def predict_probabilities(self, images):
        """float32 RGB 0..255 [B, H, W, 3] (any H, W) -> softmax float32 [B, H, W, C]."""
        return self.sess.run(self._probabilities, {self._images: images})


@dataclasses.dataclass
class ImagePrediction:
    """One image of a split, at its source size."""
    filename: str
    prediction: np.ndarray        # uint8 [h, w] class ids
    label: np.ndarray             # uint8 [h, w] class ids, IGNORE_LABEL where void
    image: np.ndarray             # uint8 [h, w, 3] RGB, the source image


def check_split(spec, datapath, split):
    """SegMentorError naming the splits there are when `split` has no records file."""
    if split not in spec.split_files or not os.path.isfile(record_path(spec, datapath, split)):
        have = [name for name in spec.split_files
                if os.path.isfile(record_path(spec, datapath, name))]
        raise SegMentorError(f"dataset {spec.name} has no '{split}' split; "
                             f"choose --split from: {', '.join(have) or 'none'}")


class SplitPredictor(_SessionOwner):
    """Iterate over one split's images with their predictions (one pass, file order).

        with SplitPredictor(predictor, spec, datapath, 'val', plan, batch_size) as split:
            len(split); for item in split: ...    # ImagePrediction

    Records are decoded by tf.data in background threads (its own small graph
    and session) while the network runs; `batch_size` images are predicted
    together when their network inputs share a shape.
    """

    def __init__(self, predictor, spec, datapath, split, plan, batch_size=1):
        check_split(spec, datapath, split)
        self.spec = spec
        self.num_images = num_records(spec, datapath, split)
        self._path = record_path(spec, datapath, split)
        self._how_to_make = how_to_make(spec, datapath)
        self._predictor, self._plan, self._batch_size = predictor, plan, batch_size
        self.graph = tf.Graph()
        with self.graph.as_default():
            dataset = make_split_dataset(spec, datapath, split)
            self._next_record = tf.data.make_one_shot_iterator(dataset).get_next()
        self.sess = tf.Session(graph=self.graph, config=session_config())

    def __len__(self):
        return self.num_images

    def _next_records(self):
        records = []
        with records_errors(self._path, how_to_make=self._how_to_make):
            for _ in range(self._batch_size):
                try:
                    records.append(self.sess.run(self._next_record))
                except tf.errors.OutOfRangeError:
                    break
        return records

    def __iter__(self):
        while records := self._next_records():
            images = [record["image"] for record in records]
            probabilities = self._plan.probabilities(
                self._predictor.predict_probabilities, images, self._batch_size)
            for record, image_probabilities in zip(records, probabilities):
                yield ImagePrediction(filename=record["filename"].decode(),
                                      prediction=class_ids(image_probabilities),
                                      label=record["label"], image=record["image"])


def class_ids(probabilities):
    """uint8 [h, w] argmax of probabilities [h, w, C]."""
    return np.argmax(probabilities, axis=-1).astype(np.uint8)


def score_split(predictor, spec, datapath, split, plan, batch_size=1, on_image=None):
    """Predict every image of `split` and count it into one ScoreAccumulator (returned).

    `on_image(index, item, confusion)` sees each ImagePrediction and its
    confusion matrix on the way (to save pictures). A tqdm bar shows progress.
    """
    with SplitPredictor(predictor, spec, datapath, split, plan, batch_size) as images:
        scores = ScoreAccumulator(spec.num_classes, IGNORE_LABEL)
        for index, item in enumerate(tqdm(images, total=len(images), desc=f"scoring {split}",
                                          unit="img")):
            confusion = scores.add(item.label, item.prediction, item.filename)
            if on_image:
                on_image(index, item, confusion)
    if scores.num_images == 0:
        raise SegMentorError(f"split '{split}' of {spec.name} holds no images")
    return scores


class Segmenter:
    """Segment numpy RGB images of any size (photos, video frames).

        segmenter = Segmenter(predictor, plan)
        prediction = segmenter.segment(image)   # uint8 [h, w, 3] -> uint8 [h, w]

    Images are sized and augmented exactly as the split evaluation does it.
    """

    def __init__(self, predictor, plan):
        self._predictor, self._plan = predictor, plan

    def segment(self, image):
        """uint8 RGB [h, w, 3] -> uint8 class ids [h, w]."""
        (probabilities,) = self._plan.probabilities(self._predictor.predict_probabilities,
                                                         [image])
        return class_ids(probabilities)
