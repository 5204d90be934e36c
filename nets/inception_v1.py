"""Inception-v1 (GoogLeNet) feature extractor: tf_slim's definition, our batch norm.

Szegedy et al., "Going Deeper with Convolutions", 2014
(https://arxiv.org/abs/1409.4842), with batch norm after every conv as in the
slim ImageNet checkpoint. tf_slim's `inception_v1_base` and classifier are
used as they are; only the arg scope changes, to put our batch norm in.

Usage:
    with slim.arg_scope(arg_scope(is_training=True)):
        mixed_5c, end_points = inception_v1(images)  # images: RGB scaled to [-1, 1]
        skip_16s = end_points['Mixed_4f']
"""
from tf_slim.nets import inception_v1 as slim_inception_v1

from nets.batch_norm import batch_norm
from utils.tfcompat import slim, tf

# Official slim inception_v1_arg_scope values. The checkpoint's batch norm has
# no gamma (scale=False): the ReLU and the next conv absorb any scale.
WEIGHT_DECAY = 0.00004
BATCH_NORM_DECAY = 0.9997
BATCH_NORM_EPSILON = 0.001


def inception_v1(images, is_training=True, num_classes=None, reuse=None, scope="InceptionV1"):
    """Inception-v1 through Mixed_5c.

    images: float32 RGB scaled to [-1, 1], [B, H, W, 3], any H, W.
    num_classes None: (Mixed_5c [B, H/32, W/32, 1024], end_points).
    num_classes int: the ImageNet classifier (7x7 average pool, so 224x224
        input; 'Logits/Conv2d_0c_1x1'): (logits [B, num_classes], end_points).
    end_points: keyed by layer, e.g. 'Conv2d_2c_3x3' (stride 4), 'Mixed_3c' (8),
        'Mixed_4f' (16), 'Mixed_5c' (32).
    """
    with slim.arg_scope([batch_norm, slim.dropout], is_training=is_training):
        if num_classes is not None:
            return slim_inception_v1.inception_v1(images, num_classes=num_classes,
                                                  is_training=is_training, reuse=reuse,
                                                  scope=scope)
        with tf.variable_scope(scope, "InceptionV1", [images], reuse=reuse) as top_scope:
            return slim_inception_v1.inception_v1_base(images, scope=top_scope)


def arg_scope(is_training=True, weight_decay=WEIGHT_DECAY, batch_norm_decay=BATCH_NORM_DECAY):
    """slim arg scope of Inception-v1: our batch norm, without gamma, after every conv.

    tf_slim's Inception builder sets `is_training` on tf_slim's batch norm
    only, so it is set here (and by the builder) on ours.
    """
    with slim.arg_scope([batch_norm], is_training=is_training, decay=batch_norm_decay,
                        epsilon=BATCH_NORM_EPSILON, center=True, scale=False), \
            slim.arg_scope([slim.conv2d, slim.fully_connected],
                           weights_regularizer=slim.l2_regularizer(weight_decay)), \
            slim.arg_scope([slim.conv2d],
                           weights_initializer=slim.variance_scaling_initializer(),
                           activation_fn=tf.nn.relu, normalizer_fn=batch_norm), \
            slim.arg_scope([slim.dropout], is_training=is_training) as scope:
        return scope
