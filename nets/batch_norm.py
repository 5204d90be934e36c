"""Batch normalisation with tf_slim's variable names, computed by the fused kernel.

Why our own: tf_slim 1.1.0's `batch_norm` does not run on TF >= 2.13. Its
default path builds `tf.layers.BatchNormalization`, which TF now loads from the
separate `tf_keras.legacy_tf_layers` package; its fused path calls
`tf_slim.layers.utils.constant_value`, which tests `ops.Tensor`, a name TF
removed. The slim ImageNet checkpoints still need slim's layout, so this module
re-implements the part the networks use: NHWC 4-D inputs, variables
`<scope>/BatchNorm/{beta,gamma,moving_mean,moving_variance}` created as slim
MODEL_VARIABLES, moving averages updated through an update-ops collection.

Usage (as slim's, e.g. as a conv normalizer inside an arg scope):
    with slim.arg_scope([slim.conv2d], normalizer_fn=batch_norm,
                        normalizer_params={'is_training': True, 'decay': 0.997}):
        net = slim.conv2d(images, 64, [3, 3])      # -> conv/BatchNorm/...
    train_op = ...  # run with tf.get_collection(tf.GraphKeys.UPDATE_OPS)
"""
from tf_slim.layers import utils as slim_layer_utils

from utils.tfcompat import slim, tf


def _update_moving_average(variable, value, decay):
    """variable <- decay * variable + (1 - decay) * value (slim's update, no zero-debias)."""
    return tf.assign_sub(variable, (variable - value) * (1.0 - decay))


@slim.add_arg_scope
def batch_norm(inputs,
               decay=0.999,
               center=True,
               scale=False,
               epsilon=0.001,
               activation_fn=None,
               is_training=True,
               trainable=True,
               updates_collections=tf.GraphKeys.UPDATE_OPS,
               variables_collections=None,
               outputs_collections=None,
               param_initializers=None,
               reuse=None,
               scope=None):
    """Batch-normalise NHWC `inputs` [batch, height, width, channels] per channel.

    is_training True: normalise with the batch's statistics and add the
        moving-average update ops to `updates_collections`; they run only when
        the caller runs that collection (fcn_train adds UPDATE_OPS to its train op).
    is_training False: normalise with the moving statistics; no update ops.
    scale: create and apply `gamma` (Inception-v1 checkpoints have none).
    center: create and add `beta`.
    variables_collections: a list for all variables, or a dict keyed by
        'beta', 'gamma', 'moving_mean', 'moving_variance' (slim semantics).
    param_initializers: optional dict with the same keys.
    The moving statistics are never trainable. Returns a tensor like `inputs`,
    after `activation_fn` if given.
    """
    if not isinstance(is_training, bool):
        raise TypeError(f"batch_norm needs a Python bool is_training, got {is_training!r}; "
                        f"build one tower per mode instead")
    if updates_collections is None:
        raise ValueError("batch_norm puts its moving-average updates in a collection; "
                         "in-place updates (updates_collections=None) are not supported")
    inputs = tf.convert_to_tensor(inputs)
    if inputs.shape.ndims != 4:
        raise ValueError(f"batch_norm needs a 4-D NHWC input, got shape {inputs.shape}")
    channels = inputs.shape[-1]
    if channels is None:
        raise ValueError("batch_norm needs a static channel dimension")
    initializers = dict(param_initializers or {})
    unknown = set(initializers) - {"beta", "gamma", "moving_mean", "moving_variance"}
    if unknown:
        raise ValueError(f"batch_norm param_initializers has unknown keys {sorted(unknown)}")

    # A fixed name, not slim's default_name="BatchNorm" (which numbers a second use,
    # BatchNorm_1): tf.distribute builds each replica's tower in its own thread, and the
    # eval tower built after them was numbered anew, creating untrained copies.
    with tf.variable_scope(scope or "BatchNorm", values=[inputs], reuse=reuse) as sc:
        def make_variable(name, default_initializer, is_trainable, aggregation=None):
            return slim.model_variable(
                name, shape=[channels], dtype=inputs.dtype,
                initializer=initializers.get(name, default_initializer),
                collections=slim_layer_utils.get_variable_collections(
                    variables_collections, name),
                trainable=is_trainable,
                aggregation=aggregation or tf.VariableAggregation.NONE)

        # The fused kernel needs both offset and scale; absent ones are the identity.
        beta = (make_variable("beta", tf.zeros_initializer(), trainable) if center
                else tf.zeros([channels], dtype=inputs.dtype))
        gamma = (make_variable("gamma", tf.ones_initializer(), trainable) if scale
                 else tf.ones([channels], dtype=inputs.dtype))
        # Under tf.distribute (utils/distribute.py) every replica normalises with its own
        # batch's statistics, and the moving averages move by the mean of the replicas'
        # updates, so all copies stay equal.
        moving_mean = make_variable("moving_mean", tf.zeros_initializer(), False,
                                    tf.VariableAggregation.MEAN)
        moving_variance = make_variable("moving_variance", tf.ones_initializer(), False,
                                        tf.VariableAggregation.MEAN)

        if is_training:
            # The kernel returns the batch mean and the Bessel-corrected batch
            # variance, which is what the moving variance should track.
            outputs, batch_mean, batch_variance = tf.nn.fused_batch_norm(
                inputs, gamma, beta, epsilon=epsilon, is_training=True)
            for update in (_update_moving_average(moving_mean, batch_mean, decay),
                           _update_moving_average(moving_variance, batch_variance, decay)):
                tf.add_to_collections(updates_collections, update)
        else:
            outputs, _, _ = tf.nn.fused_batch_norm(
                inputs, gamma, beta, mean=moving_mean, variance=moving_variance,
                epsilon=epsilon, is_training=False)
        outputs.set_shape(inputs.shape)
        if activation_fn is not None:
            outputs = activation_fn(outputs)
        return slim.utils.collect_named_outputs(outputs_collections, sc.name, outputs)
