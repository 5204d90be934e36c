"""ResNet-v1 feature extractors: resnet_v1_50 and resnet_v1_18.

He et al., "Deep Residual Learning for Image Recognition", 2015
(https://arxiv.org/abs/1512.03385). Both come out of tf_slim's `resnet_v1`
generator. resnet_v1_50 is tf_slim's own (bottleneck units, the stride of a
block on its last unit). resnet_v1_18 follows the Hailo fork of
tensorflow/models (hailotech/tf-models-hailofork), whose ImageNet weights were
converted from torchvision's ResNet-18: basic units `res_block_v1`, the stride
on the FIRST unit of a block and a 1x1 conv + BN shortcut where the depth
changes. Its stem is padded as torchvision pads it (`_torchvision_root`), so
torchvision's weights (utils/convert_torchvision.py) compute what they computed
in PyTorch: same features up to float rounding
(tests/test_convert_torchvision.py).

Usage:
    with slim.arg_scope(arg_scope(is_training=True)):
        features_32s, end_points = resnet_v1_18(images)  # images: preprocessed [B, H, W, 3]
        skip_16s = end_points['block3/unit_2/res_block_v1']
"""
import re

from tf_slim.nets import resnet_utils
from tf_slim.nets import resnet_v1 as slim_resnet_v1

from nets.batch_norm import batch_norm
from utils.tfcompat import slim, tf

# Official slim training values (resnet_utils.resnet_arg_scope, also the fork's).
WEIGHT_DECAY = 1e-4
BATCH_NORM_DECAY = 0.997
BATCH_NORM_EPSILON = 1e-5

# conv1 and pool1 reduce the input 4 times before the blocks.
ROOT_STRIDE = 4
# torchvision's max-pool padding (each side), for pool1 of resnet_v1_18.
_POOL1_PAD_PX = 1

# resnet_v1_18: (block scope, output depth, units, stride of the block's first unit).
# After the stride-4 root (conv1 + pool1), blocks 1-4 end at stride 4, 8, 16, 32.
_RESNET_V1_18_BLOCKS = (
    ("block1", 64, 2, 1),
    ("block2", 128, 2, 2),
    ("block3", 256, 2, 2),
    ("block4", 512, 2, 2),
)


@slim.add_arg_scope
def res_block_v1(inputs, depth, stride, rate=1, outputs_collections=None, scope=None):
    """Basic residual unit: relu(shortcut + BN(conv3x3(relu(BN(conv3x3_strided(x)))))).

    The stride sits on the first 3x3 conv, padded explicitly (conv2d_same) so a
    stride-2 conv sees the same pixels as PyTorch's padding=1 conv.
    """
    with tf.variable_scope(scope, "res_block_v1", [inputs]) as sc:
        depth_in = inputs.shape[-1]
        if depth == depth_in:
            shortcut = resnet_utils.subsample(inputs, stride, "shortcut")
        else:
            shortcut = slim.conv2d(inputs, depth, [1, 1], stride=stride, activation_fn=None,
                                   scope="shortcut")
        residual = resnet_utils.conv2d_same(inputs, depth, 3, stride, rate=rate, scope="conv1")
        residual = slim.conv2d(residual, depth, [3, 3], stride=1, rate=rate, activation_fn=None,
                               scope="conv2")
        output = tf.nn.relu(shortcut + residual)
        return slim.utils.collect_named_outputs(outputs_collections, sc.name, output)


def _relative_end_points(end_points, top_scope):
    """Drop everything up to the top scope (and a tower suffix like `_1`) from each key."""
    top = re.compile(re.escape(top_scope) + r"(_\d+)?")
    relative = {}
    for key, tensor in end_points.items():
        parts = key.split("/")
        for index, part in enumerate(parts):
            if top.fullmatch(part):
                parts = parts[index + 1:]
                break
        relative["/".join(parts)] = tensor
    return relative


def _build(generator, images, is_training, num_classes, reuse, scope, output_stride):
    """Run a tf_slim ResNet builder in FCN mode (no pooling, no logits) or as a classifier.

    output_stride None, 16 or 8: tf_slim's generator turns the later strides
    into dilation rates (resnet_utils.stack_blocks_dense), same variables. It
    raises the rate after a unit, so in resnet_v1_18 (stride on a unit's first
    conv) that unit's second conv keeps the old rate: it sees a 2x smaller
    window than without atrous convolution; later units see the same.
    """
    classifier = num_classes is not None
    with slim.arg_scope([batch_norm], is_training=is_training):
        net, end_points = generator(images, num_classes=num_classes, is_training=is_training,
                                    global_pool=classifier, reuse=reuse, scope=scope,
                                    output_stride=output_stride)
    return net, _relative_end_points(end_points, scope)


def resnet_v1_50(images, is_training=True, num_classes=None, reuse=None, scope="resnet_v1_50",
                 output_stride=None):
    """ResNet-50 v1 (tf_slim's definition).

    images: preprocessed float32 [B, H, W, 3], any H, W.
    num_classes None: (block4 features [B, H/32, W/32, 2048], end_points).
    num_classes int: (logits [B, 1, 1, num_classes] as the official 'logits' layer, end_points).
    end_points keys are relative to `scope`, e.g. 'block3/unit_5/bottleneck_v1'.
    """
    return _build(slim_resnet_v1.resnet_v1_50, images, is_training, num_classes, reuse, scope,
                  output_stride)


def _torchvision_root(images):
    """The stem as torchvision pads it: conv1 7x7/2 with 3 pixels on every side, then
    pool1 3x3/2 with 1 pixel on every side. conv2d_same pads conv1 that way already;
    tf_slim's SAME max-pool would pad only the bottom/right, which moves every later
    feature map by one pixel against the weights (0.17 relative difference from
    torchvision's features). The pool pads with the lowest float, as PyTorch does."""
    net = resnet_utils.conv2d_same(images, 64, 7, stride=2, scope="conv1")
    net = tf.pad(net, [[0, 0], [_POOL1_PAD_PX] * 2, [_POOL1_PAD_PX] * 2, [0, 0]],
                 constant_values=net.dtype.min)
    return slim.max_pool2d(net, [3, 3], stride=2, padding="VALID", scope="pool1")


def _resnet_v1_18_generator(images, scope=None, reuse=None, output_stride=None, **kwargs):
    blocks = [resnet_utils.Block(name, res_block_v1,
                                 [{"depth": depth, "stride": first_stride}]
                                 + [{"depth": depth, "stride": 1}] * (units - 1))
              for name, depth, units, first_stride in _RESNET_V1_18_BLOCKS]
    if output_stride is not None and output_stride % ROOT_STRIDE:
        raise ValueError(f"output_stride must be a multiple of {ROOT_STRIDE}, got {output_stride}")
    # tf_slim's generator collects only its own `bottleneck` units as end
    # points; collect ours through a collection unique to this call (towers
    # must not mix) and merge it in.
    units_collection = tf.get_default_graph().unique_name("res_block_v1_end_points")
    with tf.variable_scope(scope, "resnet_v1", [images], reuse=reuse) as sc:
        # Our own root (torchvision's padding) inside the generator's scope, collected
        # where the generator collects its end points.
        with slim.arg_scope([slim.conv2d, slim.max_pool2d],
                            outputs_collections=sc.original_name_scope + "_end_points"):
            net = _torchvision_root(images)
        with slim.arg_scope([res_block_v1], outputs_collections=units_collection):
            net, end_points = slim_resnet_v1.resnet_v1(
                net, blocks, include_root_block=False, scope=sc, reuse=reuse,
                output_stride=output_stride // ROOT_STRIDE if output_stride else None, **kwargs)
    end_points.update(slim.utils.convert_collection_to_dict(units_collection))
    return net, end_points


def resnet_v1_18(images, is_training=True, num_classes=None, reuse=None, scope="resnet_v1_18",
                 output_stride=None):
    """ResNet-18 v1 with the Hailo fork's layout (basic units, stride on the first unit).

    images: preprocessed float32 [B, H, W, 3], any H, W.
    num_classes None: (block4 features [B, H/32, W/32, 512], end_points).
    num_classes int: (logits [B, 1, 1, num_classes] as the 'logits' layer, end_points).
    end_points keys are relative to `scope`; the last unit of blocks 1-3,
    'block1/unit_2/res_block_v1' (stride 4), 'block2/unit_2/...' (8) and
    'block3/unit_2/...' (16), are the deepest maps at each stride.
    """
    return _build(_resnet_v1_18_generator, images, is_training, num_classes, reuse, scope,
                  output_stride)


def arg_scope(is_training=True, weight_decay=WEIGHT_DECAY, batch_norm_decay=BATCH_NORM_DECAY):
    """slim arg scope of both ResNets: our batch norm (with gamma) after every conv.

    tf_slim's ResNet generator sets `is_training` on tf_slim's batch norm only,
    so it is set here (and by the builders) on ours.
    """
    with slim.arg_scope([batch_norm], is_training=is_training, decay=batch_norm_decay,
                        epsilon=BATCH_NORM_EPSILON, center=True, scale=True):
        with slim.arg_scope([slim.conv2d],
                            weights_regularizer=slim.l2_regularizer(weight_decay),
                            weights_initializer=slim.variance_scaling_initializer(),
                            activation_fn=tf.nn.relu,
                            normalizer_fn=batch_norm):
            # SAME pool1 (resnet_v1_50; resnet_v1_18 pads its own, as torchvision) keeps
            # feature maps aligned to the input for dense prediction.
            with slim.arg_scope([slim.max_pool2d], padding="SAME") as scope:
                return scope
