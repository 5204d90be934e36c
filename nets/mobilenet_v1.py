"""MobileNet-v1 (depth multiplier 1.0) with the slim checkpoint's variable names.

Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile
Vision Applications", 2017 (https://arxiv.org/abs/1704.04861). tf_slim does
not ship it; the layer list and names follow tensorflow/models
research/slim/nets/mobilenet_v1.py (2018): a 3x3 conv, then 13 depthwise
separable layers, each a 3x3 depthwise conv 'Conv2d_<i>_depthwise' and a 1x1
conv 'Conv2d_<i>_pointwise', all with batch norm and ReLU6.

Usage:
    with slim.arg_scope(arg_scope(is_training=True)):
        features_32s, end_points = mobilenet_v1(images)  # images: RGB scaled to [-1, 1]
        skip_16s = end_points['Conv2d_11_pointwise']
"""
import collections

from nets.batch_norm import batch_norm
from utils.tfcompat import slim, tf

# Official slim mobilenet_v1_arg_scope values.
WEIGHT_DECAY = 0.00004
BATCH_NORM_DECAY = 0.9997
BATCH_NORM_EPSILON = 0.001
_WEIGHTS_STDDEV = 0.09
_KERNEL = [3, 3]
_DROPOUT_KEEP_PROB = 0.999  # official classifier head

# separable False: plain conv 'Conv2d_<i>'; True: depthwise + pointwise pair.
_Layer = collections.namedtuple("_Layer", ["separable", "stride", "depth"])
_MOBILENET_V1_LAYERS = (
    _Layer(False, 2, 32),                                # stride 2
    _Layer(True, 1, 64),
    _Layer(True, 2, 128), _Layer(True, 1, 128),          # stride 4
    _Layer(True, 2, 256), _Layer(True, 1, 256),          # stride 8
    _Layer(True, 2, 512), *[_Layer(True, 1, 512)] * 5,   # stride 16
    _Layer(True, 2, 1024), _Layer(True, 1, 1024),        # stride 32
)


def atrous_strides(layer_strides, output_stride):
    """(stride, dilation rate) per layer so the net ends at `output_stride` (None: no change).

    Once the running stride reaches `output_stride`, each later stride becomes
    1 and multiplies the dilation rate of the layers after it, so they see the
    same pixels as without atrous convolution, at a finer output.
    """
    current_stride, rate, plan = 1, 1, []
    for stride in layer_strides:
        if output_stride is not None and current_stride == output_stride:
            plan.append((1, rate))
            rate *= stride
        else:
            plan.append((stride, 1))
            current_stride *= stride
    return plan


def _base(images, end_points, output_stride=None):
    net = images
    plan = atrous_strides([layer.stride for layer in _MOBILENET_V1_LAYERS], output_stride)
    for index, (layer, (stride, rate)) in enumerate(zip(_MOBILENET_V1_LAYERS, plan)):
        name = f"Conv2d_{index}"
        if not layer.separable:
            net = slim.conv2d(net, layer.depth, _KERNEL, stride=stride, rate=rate, scope=name)
            end_points[name] = net
            continue
        net = slim.separable_conv2d(net, None, _KERNEL, depth_multiplier=1, stride=stride,
                                    rate=rate, scope=name + "_depthwise")
        end_points[name + "_depthwise"] = net
        net = slim.conv2d(net, layer.depth, [1, 1], stride=1, scope=name + "_pointwise")
        end_points[name + "_pointwise"] = net
    return net


def mobilenet_v1(images, is_training=True, num_classes=None, reuse=None, scope="MobilenetV1",
                 output_stride=None):
    """MobileNet-v1 1.0 through Conv2d_13_pointwise.

    images: float32 RGB scaled to [-1, 1], [B, H, W, 3], any H, W.
    num_classes None: (Conv2d_13_pointwise [B, H/32, W/32, 1024], end_points).
    num_classes int: the ImageNet classifier 'Logits/Conv2d_1c_1x1' after a
        global average pool: (logits [B, num_classes], end_points).
    end_points: 'Conv2d_0', 'Conv2d_<i>_depthwise', 'Conv2d_<i>_pointwise'
        (i = 1..13); e.g. Conv2d_3/5/11_pointwise are at stride 4/8/16.
    output_stride: None (32), 16 or 8: atrous convolution after that stride
        (see `atrous_strides`); the variables do not change.
    """
    end_points = {}
    with tf.variable_scope(scope, "MobilenetV1", [images], reuse=reuse), \
            slim.arg_scope([batch_norm, slim.dropout], is_training=is_training):
        net = _base(images, end_points, output_stride)
        if num_classes is None:
            return net, end_points
        with tf.variable_scope("Logits"):
            # At 224x224 the official 7x7 average pool is this global mean.
            net = tf.reduce_mean(net, [1, 2], keepdims=True, name="AvgPool_1a")
            net = slim.dropout(net, keep_prob=_DROPOUT_KEEP_PROB, scope="Dropout_1b")
            net = slim.conv2d(net, num_classes, [1, 1], activation_fn=None, normalizer_fn=None,
                              scope="Conv2d_1c_1x1")
            logits = tf.squeeze(net, [1, 2], name="SpatialSqueeze")
        end_points["Logits"] = logits
        return logits, end_points


def arg_scope(is_training=True, weight_decay=WEIGHT_DECAY, batch_norm_decay=BATCH_NORM_DECAY):
    """slim arg scope of MobileNet-v1: our batch norm (center and scale) and ReLU6 after every conv.

    As in the official scope, depthwise weights get no weight decay (the paper:
    they have so few parameters that it should be little or none).
    """
    with slim.arg_scope([batch_norm], is_training=is_training, decay=batch_norm_decay,
                        epsilon=BATCH_NORM_EPSILON, center=True, scale=True), \
            slim.arg_scope([slim.conv2d, slim.separable_conv2d],
                           weights_initializer=tf.truncated_normal_initializer(
                               stddev=_WEIGHTS_STDDEV),
                           activation_fn=tf.nn.relu6, normalizer_fn=batch_norm, padding="SAME"), \
            slim.arg_scope([slim.conv2d], weights_regularizer=slim.l2_regularizer(weight_decay)), \
            slim.arg_scope([slim.separable_conv2d], weights_regularizer=None), \
            slim.arg_scope([slim.dropout], is_training=is_training) as scope:
        return scope
