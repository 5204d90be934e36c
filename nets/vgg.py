"""VGG-16 feature extractor with the slim checkpoint's variable names.

Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
Recognition", 2014 (https://arxiv.org/abs/1409.1556). tf_slim's `vgg_16`
always builds fc8 and fixes fc6 as a 7x7 VALID conv, which only fits 224x224
inputs; FCN (Long et al., 2015) runs fc6 as a 7x7 SAME conv instead, so any
input size gives a stride-32 map. Same variables, so the ImageNet checkpoint
restores unchanged.

Usage:
    with slim.arg_scope(arg_scope(is_training=True)):
        fc7, end_points = vgg_16(images)  # images: mean-subtracted RGB [B, H, W, 3]
        skip_16s = end_points['pool4']
"""

from utils.errors import SegMentorError
from utils.tfcompat import slim, tf

WEIGHT_DECAY = 0.0005  # official slim vgg_arg_scope

# (number of 3x3 convs, depth) of the blocks conv1..conv5, each closed by a
# 2x2 max pool pool1..pool5: VGG-16 is configuration "D" of the paper.
_VGG_16_BLOCKS = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))
_FC_DEPTH = 4096
_FC6_KERNEL = [7, 7]  # fc6 is the paper's 7x7x512 -> 4096 fully connected layer
_DROPOUT_KEEP_PROB = 0.5


def vgg_16(images, is_training=True, num_classes=None, reuse=None, scope="vgg_16"):
    """VGG-16 through fc7.

    images: mean-subtracted float32 RGB [B, H, W, 3], any H, W.
    num_classes None: (fc7 [B, H/32, W/32, 4096], end_points); fc6 is a 7x7
        SAME conv, fc7 is followed by dropout when training, no fc8.
    num_classes int: the ImageNet classifier (fc6 7x7 VALID, so 224x224 input,
        and fc8): (logits [B, num_classes], end_points).
    end_points: 'pool1'..'pool5' (stride 2..32), 'fc6', 'fc7' (and 'fc8').
    """
    end_points = {}
    classifier = num_classes is not None
    with tf.variable_scope(scope, "vgg_16", [images], reuse=reuse), \
            slim.arg_scope([slim.dropout], is_training=is_training,
                           keep_prob=_DROPOUT_KEEP_PROB):
        net = images
        for index, (num_convs, depth) in enumerate(_VGG_16_BLOCKS, start=1):
            net = slim.repeat(net, num_convs, slim.conv2d, depth, [3, 3], scope=f"conv{index}")
            net = slim.max_pool2d(net, [2, 2], scope=f"pool{index}")
            end_points[f"pool{index}"] = net
        net = slim.conv2d(net, _FC_DEPTH, _FC6_KERNEL, padding="VALID" if classifier else "SAME",
                          scope="fc6")
        end_points["fc6"] = net
        net = slim.dropout(net, scope="dropout6")
        net = slim.conv2d(net, _FC_DEPTH, [1, 1], scope="fc7")
        end_points["fc7"] = net
        net = slim.dropout(net, scope="dropout7")
        if not classifier:
            return net, end_points
        net = slim.conv2d(net, num_classes, [1, 1], activation_fn=None, normalizer_fn=None,
                          scope="fc8")
        logits = tf.squeeze(net, [1, 2], name="fc8/squeezed")
        end_points["fc8"] = logits
        return logits, end_points


def arg_scope(is_training=True, weight_decay=WEIGHT_DECAY, batch_norm_decay=None):
    """slim arg scope of VGG-16 (official values); it has no batch norm.

    is_training: dropout mode. batch_norm_decay is part of the common
    interface; VGG-16 has no batch norm, so any value other than None is an error.
    """
    if batch_norm_decay is not None:
        raise SegMentorError("vgg_16 has no batch norm, so a batch-norm decay does not apply "
                             "to it: drop --batch_norm_decay with --basenet vgg_16")
    with slim.arg_scope([slim.conv2d], activation_fn=tf.nn.relu,
                        weights_regularizer=slim.l2_regularizer(weight_decay),
                        biases_initializer=tf.zeros_initializer(), padding="SAME"), \
            slim.arg_scope([slim.dropout], is_training=is_training) as scope:
        return scope
