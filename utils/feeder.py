"""tf.data pipelines from tfrecords to batches, behind one feedable iterator.

`Feeder` builds a training pipeline (shuffle, parse, augment, batch, prefetch,
all inside tf.data and parallel) and a validation pipeline over a fixed subset
of the validation records. Both sit behind one string-handle iterator, so a
single graph trains or validates depending on the handle fed:

    feeder = Feeder(spec, datapath, batch_size=16, pixels=512, start_step=0,
                    pad_rgb=fcn_arch.pad_rgb(net))      # padding: zero after preprocessing
    feeder = Feeder(spec, datapath, batch_size=8, pixels=0, crop=(288, 384),  # native scale
                    pad_rgb=fcn_arch.pad_rgb(net))
    feeder = Feeder(spec, datapath, batch_size=16, pixels=512, pad_rgb=fcn_arch.pad_rgb(net),
                    num_workers=2, worker_index=1)      # worker 1's half of each batch
    logits = arch.build_net(feeder.images)
    train = {feeder.handle: feeder.train_handle(sess)}
    sess.run(train_op, train)
    val = {feeder.handle: feeder.val_handle(sess)}
    for _ in range(feeder.val_batches_per_pass):  # one pass over the val subset
        sess.run(..., val)

The training stream is a pure function of (seed, step): epoch e is the records
shuffled with a seed made of (seed, e), and example i of the stream is
augmented with seed (seed, i). A run resumed at step s (`start_step=s`)
therefore gets exactly the batches the uninterrupted run would have got.
With several workers (`num_workers`), worker w trains on part w of every global batch
(batch_size / num_workers examples in a row), so no two workers train on the same
record in an epoch and together they see what one worker would.

`make_split_dataset` is the single-split pipeline of fcn_test.
"""
import contextlib
import math
import re

from utils import augmentation
from utils.augmentation import CROP_TOO_LARGE_PHRASE, AugmentParams
from utils.datasets import how_to_make, num_records, record_path
from utils.labels import IGNORE_LABEL
from utils.errors import SegMentorError
from utils.tf_records import (HEIGHT_KEY, WIDTH_KEY, checked_label, parse_example, read_records,
                              records_errors)
from utils.tfcompat import tf

# Serialized (still encoded) records held for shuffling: all of CamVid, and
# ~100 MB of Pascal VOC JPEGs, enough mixing for datasets stored in any order.
SHUFFLE_BUFFER_RECORDS = 1000
# Epoch e of a run seeded s shuffles with seed s * EPOCH_SEED_STRIDE + e: distinct
# for every (s, e) as long as a run has fewer epochs than this.
EPOCH_SEED_STRIDE = 1 << 20
# tf.data map functions are plain graph code (every branch on a tensor is an explicit
# tf.cond), so they skip AutoGraph: transpiling the augmentation code made a Feeder take
# 11.5 s to build instead of 1.4 s (2 busy AVX2 cores), for the same graph.
graph_function = tf.autograph.experimental.do_not_convert
# tf.data's autotuning gives each iterator a model thread that sleeps between
# optimisations (a period that doubles up to 60 s) and is not woken when the iterator is
# destroyed: closing a session, or replacing an iterator, waited out that sleep. It was
# 0-60 s at the end of every training run (the README job: 13 s, 49 s, 59 s in three
# runs; Session.close in gdb: ~RootDataset::Iterator waiting on Model::OptimizeLoop).
# Without the model, AUTOTUNE sizes are fixed at start (map parallelism = the cores),
# which is what it chose on 2 cores: the same step time in an in-process A/B.
def _without_autotune_thread(dataset):
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


# The failed check of a crop that may not be padded: the phrase, then the image's height, width.
_CROP_TOO_LARGE_PATTERN = re.compile(re.escape(CROP_TOO_LARGE_PHRASE) + r"\D*(\d+)\D+(\d+)")


class Feeder:
    """Train and validation batches of one dataset behind a feedable iterator.

    images: float32 [B, P, P, 3], RGB 0..255, padded with `pad_rgb` (the network's
    fcn_arch.pad_rgb, which its preprocessing turns into exactly 0.0);
    labels: int32 [B, P, P], IGNORE_LABEL on padding and void.
    With `crop` = (H, W), training batches are random H x W windows at the
    images' own scale (augmentation.train_crop, `crop_pad` as its pad) and
    validation runs at native size (`pixels` must be 0): a batch of images of
    different sizes is padded bottom/right to its largest one.
    The validation subset is every n-th validation record, n = round(1 / val_fraction),
    so it spans the whole file (CamVid's val split is a few sequential clips).
    `start_step`: the training step the first batch is for (a resumed run's step).
    `num_workers`, `worker_index`: training batches are this worker's part of each global
    batch of `batch_size` (validation batches stay whole: the chief validates alone).
    """

    def __init__(self, spec, datapath, batch_size, pixels, augment=AugmentParams(),
                 val_fraction=0.25, seed=0, debug_overfit=0, start_step=0, crop=None,
                 crop_pad=True, *, pad_rgb, num_workers=1, worker_index=0):
        if batch_size % num_workers or not 0 <= worker_index < num_workers:
            raise SegMentorError(f"--batch_size {batch_size} does not split over "
                                 f"{num_workers} workers: give a multiple of {num_workers}")
        if crop is None and pixels <= 0:
            raise SegMentorError(f"training needs a fixed size: --pixels must be > 0, got {pixels}")
        if crop is not None and pixels != 0:
            raise SegMentorError(f"training crops at native scale validate at native size: "
                                 f"--pixels must be 0 with --crop, got {pixels}")
        self.crop, self._crop_pad = crop, crop_pad
        self.pad_rgb = tuple(pad_rgb)
        if not 0 < val_fraction <= 1:
            raise SegMentorError(f"the validated fraction must be in (0, 1], got {val_fraction}")
        self._how_to_make = how_to_make(spec, datapath)
        if spec.split_counts is not None and "val" not in spec.split_counts:
            raise SegMentorError(
                f"dataset {spec.name} has no validation split, which training monitors; convert "
                f"it with one (folder datasets: --val_ratio > 0): {self._how_to_make}")
        self.train_path = record_path(spec, datapath, "train")
        self.val_path = record_path(spec, datapath, "val")
        if crop and not crop_pad:
            # The first image decides at once for datasets of one size (CamVid); images of
            # other sizes are checked in the pipeline (see records_errors).
            first_size = _first_image_size(self.train_path)
            if first_size and (first_size[0] < crop[0] or first_size[1] < crop[1]):
                raise self._crop_too_large(*first_size)

        self.num_train_images = num_records(spec, datapath, "train")
        if debug_overfit:
            self.num_train_images = min(debug_overfit, self.num_train_images)
        if self.num_train_images == 0:
            raise SegMentorError(f"{self.train_path} holds no records; rerun: {self._how_to_make}")
        self._val_stride = max(1, round(1 / val_fraction))
        self.num_val_images = math.ceil(num_records(spec, datapath, "val") / self._val_stride)
        self.val_batches_per_pass = math.ceil(self.num_val_images / batch_size)

        train = self._train_dataset(spec.num_classes, batch_size, pixels, augment, seed,
                                    debug_overfit, start_step, crop, crop_pad,
                                    num_workers, worker_index)
        val = self._val_dataset(spec.num_classes, batch_size, pixels)
        self.handle = tf.placeholder(tf.string, shape=[], name="feeder_handle")
        iterator = tf.data.Iterator.from_string_handle(
            self.handle, tf.data.get_output_types(val), tf.data.get_output_shapes(val))  # val: batch dim None
        self.images, self.labels = iterator.get_next()
        # Handle ops are made now: scripts may finalize the graph before asking for them.
        self._handle_ops = {"train": tf.data.make_one_shot_iterator(train).string_handle(),
                            "val": tf.data.make_one_shot_iterator(val).string_handle()}
        self._handles = {}

    def _train_dataset(self, num_classes, batch_size, pixels, augment, seed, debug_overfit,
                       start_step, crop, crop_pad, num_workers, worker_index):
        records = read_records(self.train_path, self._how_to_make)
        if debug_overfit:
            records = records.take(debug_overfit)

        @graph_function
        def epoch_records(epoch):
            if debug_overfit:
                return records  # the same few images in the same order: easiest to overfit
            return records.shuffle(SHUFFLE_BUFFER_RECORDS, seed=seed * EPOCH_SEED_STRIDE + epoch,
                                   reshuffle_each_iteration=False)

        @graph_function
        def parse_and_augment(index, serialized):
            # Each example's random draws are seeded by (seed, position in the
            # stream), so batches depend neither on the parallel map's timing
            # nor on where the run was resumed.
            example = parse_example(serialized)
            label = checked_label(example["label"], num_classes, IGNORE_LABEL)
            example_seed = tf.stack([tf.cast(seed, tf.int64), index])
            if crop:
                return augmentation.train_crop(example["image"], label, crop, augment,
                                               example_seed, self.pad_rgb, pad=crop_pad)
            return augmentation.train_sizing(example["image"], label, pixels, augment,
                                             example_seed, self.pad_rgb)

        worker_batch_size = batch_size // num_workers

        def for_this_worker(index, serialized):
            return tf.equal((index % batch_size) // worker_batch_size, worker_index)

        first_example = start_step * batch_size
        start_epoch, offset_in_epoch = divmod(first_example, self.num_train_images)
        stream = (tf.data.Dataset.counter(start_epoch).flat_map(epoch_records)
                  .skip(offset_in_epoch)  # still serialized: skipping decodes nothing
                  .enumerate(start=first_example))
        if num_workers > 1:  # before decoding: each worker decodes its own part only
            stream = stream.filter(for_this_worker)
        return _without_autotune_thread(
            stream.map(parse_and_augment, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(worker_batch_size, drop_remainder=True)
            .prefetch(tf.data.AUTOTUNE))

    def _val_dataset(self, num_classes, batch_size, pixels):
        colour = tf.constant(self.pad_rgb, tf.float32)

        @graph_function
        def parse_and_size(serialized):
            example = parse_example(serialized)
            label = checked_label(example["label"], num_classes, IGNORE_LABEL)
            image, label, _, _ = augmentation.eval_sizing(example["image"], label, pixels,
                                                          self.pad_rgb)
            return image - colour, label  # padded with 0 below: pad_rgb once added back

        # Batched, then repeated: every val_batches_per_pass batches are one pass, the
        # last batch partial. One endless iterator instead of re-initialising one per
        # pass: on `shapes` (2 cores) the re-initialisation sometimes waited 4-20 s,
        # for a pass that itself takes 0.2 s (the autotune thread, see
        # _without_autotune_thread). padded_batch only pads at native size
        # (pixels=0), where images may differ in size; at pixels > 0 all are P x P.
        return _without_autotune_thread(
            read_records(self.val_path, self._how_to_make).shard(self._val_stride, 0)
            .map(parse_and_size, num_parallel_calls=tf.data.AUTOTUNE)
            .padded_batch(batch_size, padding_values=(0.0, IGNORE_LABEL))
            .map(graph_function(lambda image, label: (image + colour, label)))
            .repeat()
            .prefetch(tf.data.AUTOTUNE))

    def _handle(self, sess, name):
        if name not in self._handles:
            self._handles[name] = sess.run(self._handle_ops[name])
        return self._handles[name]

    def train_handle(self, sess):
        """The string to feed into `handle` for a training batch."""
        return self._handle(sess, "train")

    def val_handle(self, sess):
        """The string to feed into `handle` for a validation batch: each run of
        `val_batches_per_pass` of them is one pass over the val subset, in order."""
        return self._handle(sess, "val")

    @contextlib.contextmanager
    def records_errors(self, split):
        """Context manager turning a corrupt-record error in sess.run of `split` ('train' or
        'val') batches into a SegMentorError naming that split's file, or a training image
        smaller than a crop that may not be padded into one saying so."""
        path = {"train": self.train_path, "val": self.val_path}[split]
        try:
            with records_errors(path, how_to_make=self._how_to_make):
                yield
        except tf.errors.InvalidArgumentError as err:
            match = _CROP_TOO_LARGE_PATTERN.search(err.message)
            if match is None:
                raise
            raise self._crop_too_large(*map(int, match.groups())) from None

    def _crop_too_large(self, height, width):
        return SegMentorError(
            f"--crop {self.crop[0]} {self.crop[1]} is larger than a {height}x{width} training "
            f"image of {self.train_path}, and --no-crop_pad forbids padding: give a --crop "
            f"that fits the smallest image, or allow padding")


def _first_image_size(path):
    """(height, width) stored in the first record of `path`, or None if it cannot be read
    (then the pipeline reports the file). Costs one record."""
    try:
        for serialized in tf.io.tf_record_iterator(path):
            features = tf.train.Example.FromString(serialized).features.feature
            return features[HEIGHT_KEY].int64_list.value[0], features[WIDTH_KEY].int64_list.value[0]
    except (tf.errors.OpError, IndexError, ValueError):
        pass
    return None



def make_split_dataset(spec, datapath, split):
    """The images of one split at their source size, in file order, one pass.

    Elements are dicts: image uint8 [h, w, 3] RGB, label uint8 [h, w] (class
    ids, IGNORE_LABEL where void; a value outside the classes fails inside
    `records_errors`), filename (source base name). Decoding runs in parallel
    and ahead of the consumer, so it overlaps the network's work.
    """
    @graph_function
    def parse(serialized):
        example = parse_example(serialized)
        label = checked_label(example["label"], spec.num_classes, IGNORE_LABEL)
        return dict(image=example["image"], label=label[..., 0], filename=example["filename"])

    return _without_autotune_thread(
        read_records(record_path(spec, datapath, split), how_to_make(spec, datapath))
        .map(parse, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE))
