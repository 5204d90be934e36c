"""Feature extractors with the variable names of the official slim ImageNet checkpoints.

One module per network family: vgg (vgg_16), resnet_v1 (resnet_v1_18,
resnet_v1_50), inception_v1, mobilenet_v1, mobilenet_v2. Each exposes
`<net>(images, is_training, num_classes=None, reuse, scope)`, which returns the
stride-32 features and end points keyed relative to the checkpoint scope
(`num_classes` int builds the ImageNet classifier instead), and
`arg_scope(is_training, weight_decay, batch_norm_decay)` with the family's
official values. Batch-normalised families use `batch_norm.batch_norm`, our
own, because tf_slim's does not run on TF >= 2.13. `preprocessing` holds what
each family's checkpoint expects as input (the ImageNet mean, torchvision's
mean/std, [-1, 1] scaling) and the colour each turns into zero (the padding).
Nothing here imports from the data side (tests/test_imports.py).
"""

# Submodules import tf_slim internals (tf_slim.nets...) directly; importing
# TensorFlow through utils.tfcompat first keeps its start-up chatter quiet.
import utils.tfcompat  # noqa: E402,F401
