"""Run by tests/test_distribute.py in a fresh process (TensorFlow fixes its logical CPU
devices at its first session): trains the real training graph (training_loop.build_graph)
for a few steps on one device and on 2 replicas (MirroredStrategy over 2 logical CPUs),
from the same weights on the same batches, and prints what the test compares as JSON.

    python tests/replica_equality.py vgg_16 32 4 3 distinct   # net, px, batch, steps, halves

halves "distinct": each replica's half of the batch holds other images; "repeated": the
batch is one half twice, so each replica's half has the whole batch's statistics.
"""
import json
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from utils.tfcompat import tf, tf2  # noqa: E402 (first: it quiets TensorFlow's import logging)
from nets import vgg  # noqa: E402
from utils import distribute, shapes, training_loop  # noqa: E402
from utils.datasets import DatasetSpec  # noqa: E402
from utils.run_settings import RunSettings  # noqa: E402

NUM_REPLICAS = 2
SPEC = DatasetSpec(name="tiny", class_names=shapes.CLASS_NAMES, colors=shapes.CLASS_COLORS,
                   class_frequencies=None, default_pixels=32, converter="")


def batch(pixels, batch_size, halves):
    count = batch_size // 2 if halves == "repeated" else batch_size
    samples = [shapes.make_sample(np.random.default_rng([7, index]), pixels)
               for index in range(count)]
    images = np.stack([image for image, _ in samples]).astype(np.float32)
    labels = np.stack([label for _, label in samples]).astype(np.int32)
    if halves == "repeated":
        images, labels = np.concatenate([images, images]), np.concatenate([labels, labels])
    return images, labels


def train(settings, images, labels, steps, parallel, start_checkpoint):
    """(losses, {variable: value}, largest difference between a variable's replica
    copies) after `steps` steps from the weights saved at `start_checkpoint` (saved
    there first when it does not exist yet)."""
    with tf.Graph().as_default():
        tf.set_random_seed(0)
        graph = training_loop.build_graph(settings, SPEC, tf.constant(images),
                                          tf.constant(labels), (), 100, parallel)
        saver = tf.train.Saver(graph.model_variables)
        with tf.Session(config=parallel.session_config(tf.ConfigProto())) as sess:
            sess.run(tf.global_variables_initializer())
            if os.path.exists(start_checkpoint + ".index"):
                saver.restore(sess, start_checkpoint)
                sess.run(graph.copy_first_replica)  # what training_loop.initialise does
            else:
                saver.save(sess, start_checkpoint, write_meta_graph=False)
            losses = [float(sess.run(graph.step_fetches())["loss"]) for _ in range(steps)]
            values = {variable.name: sess.run(variable) for variable in graph.model_variables}
            copy_gap = 0.0
            for variable in graph.model_variables:
                if isinstance(variable, tf2.distribute.DistributedValues):
                    first, *others = sess.run(list(variable.values))
                    copy_gap = max([copy_gap] + [float(np.abs(other - first).max())
                                                 for other in others])
    return losses, values, copy_gap


def main(net, pixels, batch_size, steps, halves):
    if net == "vgg_16":
        # Dropout draws other masks on each replica than on one device: off, to compare.
        vgg._DROPOUT_KEEP_PROB = 1.0
    parallel = distribute.start(NUM_REPLICAS, batch_size)  # before TensorFlow starts
    settings = RunSettings(basenet=net, pixels=pixels, batch_size=batch_size, scratch=True,
                           learnrate=0.01, optimizer="momentum", weight_decay=0.01)
    images, labels = batch(pixels, batch_size, halves)
    with tempfile.TemporaryDirectory() as start_dir:
        start = os.path.join(start_dir, "start")
        one = train(settings, images, labels, steps, distribute.ONE_DEVICE, start)
        two = train(settings, images, labels, steps, parallel, start)
    gaps = {name: float(np.abs(two[1][name] - value).max() / (np.abs(value).max() or 1.0))
            for name, value in one[1].items()}
    print(json.dumps(dict(losses_one=one[0], losses_two=two[0], relative_gaps=gaps,
                          copy_gap=two[2], num_replicas=parallel.num_replicas)))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
