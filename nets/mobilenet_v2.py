"""MobileNet-v2 (depth multiplier 1.0) with the slim checkpoint's variable names.

Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", 2018
(https://arxiv.org/abs/1801.04381). tf_slim does not ship it; the layer list
and names follow tensorflow/models research/slim/nets/mobilenet (V2_DEF): a
3x3 conv 'Conv', 17 inverted-residual blocks 'expanded_conv[_<i>]' (1x1
'expand' to a wider depth, 3x3 'depthwise', linear 1x1 'project', plus the
input when the shape allows), and a 1x1 conv 'Conv_1' to 1280 channels.

Usage:
    with slim.arg_scope(arg_scope(is_training=True)):
        conv_1, end_points = mobilenet_v2(images)  # images: RGB scaled to [-1, 1]
        skip_16s = end_points['expanded_conv_12']
"""
import collections

from nets import mobilenet_v1
from nets.batch_norm import batch_norm
from utils.tfcompat import slim, tf

# Official slim mobilenet.training_scope values; everything else in that scope
# equals MobileNet-v1's.
WEIGHT_DECAY = 0.00004
BATCH_NORM_DECAY = 0.997
_DROPOUT_KEEP_PROB = 0.8  # official classifier head
_KERNEL = [3, 3]
_STEM_DEPTH = 32  # 'Conv', stride 2
_HEAD_DEPTH = 1280  # 'Conv_1'

# expansion: depth of the 'expand' output as a multiple of the block's input depth.
_Block = collections.namedtuple("_Block", ["expansion", "stride", "depth"])
_MOBILENET_V2_BLOCKS = (
    _Block(1, 1, 16),                                      # stride 2, no 'expand' layer
    _Block(6, 2, 24), _Block(6, 1, 24),                    # stride 4
    _Block(6, 2, 32), *[_Block(6, 1, 32)] * 2,             # stride 8
    _Block(6, 2, 64), *[_Block(6, 1, 64)] * 3,             # stride 16
    *[_Block(6, 1, 96)] * 3,
    _Block(6, 2, 160), *[_Block(6, 1, 160)] * 2,           # stride 32
    _Block(6, 1, 320),
)


def _inverted_residual(net, block, scope, stride, rate):
    """expand (1x1, ReLU6) -> depthwise (3x3, ReLU6) -> project (1x1, linear) [+ input]."""
    with tf.variable_scope(scope):
        inputs = net
        input_depth = net.shape[-1]
        if block.expansion > 1:
            net = slim.conv2d(net, input_depth * block.expansion, [1, 1], scope="expand")
        net = slim.separable_conv2d(net, None, _KERNEL, depth_multiplier=1, stride=stride,
                                    rate=rate, scope="depthwise")
        # Linear bottleneck: a ReLU here would destroy information in the narrow output.
        net = slim.conv2d(net, block.depth, [1, 1], activation_fn=None, scope="project")
        if block.stride == 1 and input_depth == block.depth:
            net = net + inputs
        return net


def _base(images, end_points, output_stride=None):
    net = slim.conv2d(images, _STEM_DEPTH, _KERNEL, stride=2, scope="Conv")
    end_points["Conv"] = net
    # The stem's stride 2 comes first; the blocks' strides follow it.
    plan = mobilenet_v1.atrous_strides([2] + [block.stride for block in _MOBILENET_V2_BLOCKS],
                                       output_stride)[1:]
    for index, (block, (stride, rate)) in enumerate(zip(_MOBILENET_V2_BLOCKS, plan)):
        name = "expanded_conv" if index == 0 else f"expanded_conv_{index}"
        net = _inverted_residual(net, block, name, stride, rate)
        end_points[name] = net
    net = slim.conv2d(net, _HEAD_DEPTH, [1, 1], scope="Conv_1")
    end_points["Conv_1"] = net
    return net


def mobilenet_v2(images, is_training=True, num_classes=None, reuse=None, scope="MobilenetV2",
                 output_stride=None):
    """MobileNet-v2 1.0 through Conv_1.

    images: float32 RGB scaled to [-1, 1], [B, H, W, 3], any H, W.
    num_classes None: (Conv_1 [B, H/32, W/32, 1280], end_points).
    num_classes int: the ImageNet classifier 'Logits/Conv2d_1c_1x1' after a
        global average pool: (logits [B, num_classes], end_points).
    end_points: 'Conv', 'expanded_conv', 'expanded_conv_1'..'expanded_conv_16',
        'Conv_1'; e.g. expanded_conv_2/5/12 are the last blocks at stride 4/8/16.
    output_stride: None (32), 16 or 8: atrous convolution after that stride
        (mobilenet_v1.atrous_strides); the variables do not change.
    """
    end_points = {}
    with tf.variable_scope(scope, "MobilenetV2", [images], reuse=reuse), \
            slim.arg_scope([batch_norm, slim.dropout], is_training=is_training):
        net = _base(images, end_points, output_stride)
        if num_classes is None:
            return net, end_points
        with tf.variable_scope("Logits"):
            net = tf.reduce_mean(net, [1, 2], keepdims=True, name="AvgPool")
            net = slim.dropout(net, keep_prob=_DROPOUT_KEEP_PROB, scope="Dropout")
            net = slim.conv2d(net, num_classes, [1, 1], activation_fn=None, normalizer_fn=None,
                              biases_initializer=tf.zeros_initializer(), scope="Conv2d_1c_1x1")
            logits = tf.squeeze(net, [1, 2], name="output")
        end_points["Logits"] = logits
        return logits, end_points


def arg_scope(is_training=True, weight_decay=WEIGHT_DECAY, batch_norm_decay=BATCH_NORM_DECAY):
    """slim arg scope of MobileNet-v2: MobileNet-v1's, with v2's batch norm decay."""
    return mobilenet_v1.arg_scope(is_training=is_training, weight_decay=weight_decay,
                                  batch_norm_decay=batch_norm_decay)
