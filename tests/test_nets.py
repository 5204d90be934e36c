"""Feature extractors (nets/) and our batch norm: checkpoint layout, strides, reuse, numbers."""
import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from fcn_arch import FEATURE_EXTRACTORS
from nets import inception_v1, mobilenet_v1, mobilenet_v2, resnet_v1, vgg
from nets.batch_norm import batch_norm
from utils.errors import SegMentorError
from utils.tfcompat import slim, tf
from everyday import everyday_or_slow
from reference_lists import feature_extractor_variables, reference_variables

CLASSIFIER_SIZE = 224  # the heads of VGG and Inception pool 7x7 VALID
HEIGHT, WIDTH = 64, 96  # small, multiples of 32, and not square so H and W cannot swap
EPSILON = 0.001  # batch_norm's default


@dataclasses.dataclass(frozen=True)
class NetCase:
    module: object        # its arg_scope and builder
    builder: object
    num_classes: int      # of the ImageNet checkpoint
    depth: int            # channels of the stride-32 features


NETS = {
    "vgg_16": NetCase(vgg, vgg.vgg_16, 1000, 4096),
    "resnet_v1_18": NetCase(resnet_v1, resnet_v1.resnet_v1_18, 1000, 512),
    "resnet_v1_50": NetCase(resnet_v1, resnet_v1.resnet_v1_50, 1000, 2048),
    "inception_v1": NetCase(inception_v1, inception_v1.inception_v1, 1001, 1024),
    "mobilenet_v1": NetCase(mobilenet_v1, mobilenet_v1.mobilenet_v1, 1001, 1024),
    "mobilenet_v2": NetCase(mobilenet_v2, mobilenet_v2.mobilenet_v2, 1001, 1280),
}


def taps(net):
    """Output stride -> end point, as the FCN decoder taps them (fcn_arch's registry)."""
    return FEATURE_EXTRACTORS[net].skip_end_points


def graph_variables():
    return {v.op.name: tuple(v.shape.as_list()) for v in tf.global_variables()}


def variable(name):
    (found,) = [v for v in tf.global_variables() if v.op.name == name]
    return found


def build(net, images, is_training=True, num_classes=None):
    case = NETS[net]
    with slim.arg_scope(case.module.arg_scope(is_training=is_training)):
        return case.builder(images, is_training=is_training, num_classes=num_classes)


@pytest.fixture(scope="module", params=everyday_or_slow(NETS))
def towers(request):
    """Per net, the graph fcn_train builds: a training tower on a static [1, 64, 96, 3]
    input, then an inference tower on [None, None, None, 3] reusing its variables."""
    net = request.param
    graph = tf.Graph()
    with graph.as_default():
        train_features, train_points = build(
            net, tf.placeholder(tf.float32, [1, HEIGHT, WIDTH, 3]), is_training=True)
        train_variables = tf.global_variables()
        train_update_ops = tf.get_collection(tf.GraphKeys.UPDATE_OPS)
        eval_images = tf.placeholder(tf.float32, [None, None, None, 3])
        with tf.variable_scope(tf.get_variable_scope(), reuse=tf.AUTO_REUSE):
            eval_features, eval_points = build(net, eval_images, is_training=False)
    return SimpleNamespace(net=net, graph=graph, train_features=train_features,
                           train_points=train_points, train_variables=train_variables,
                           train_update_ops=train_update_ops, eval_images=eval_images,
                           eval_features=eval_features, eval_points=eval_points)


@pytest.mark.parametrize("net", everyday_or_slow(NETS))
def test_classifier_variables_equal_the_checkpoint(net):
    num_classes = NETS[net].num_classes
    with tf.Graph().as_default():
        images = tf.placeholder(tf.float32, [1, CLASSIFIER_SIZE, CLASSIFIER_SIZE, 3])
        logits, _ = build(net, images, num_classes=num_classes)
        assert graph_variables() == reference_variables(net)
        assert logits.shape.num_elements() == num_classes


def test_fcn_variables_equal_the_checkpoint_without_its_head(towers):
    expected = feature_extractor_variables(towers.net)
    assert {v.op.name: tuple(v.shape.as_list()) for v in towers.train_variables} == expected


def test_fcn_features_are_at_stride_32(towers):
    depth = NETS[towers.net].depth
    assert towers.train_features.shape.as_list() == [1, HEIGHT // 32, WIDTH // 32, depth]


def test_end_point_taps_are_at_their_strides(towers):
    for stride, name in taps(towers.net).items():
        assert towers.train_points[name].shape.as_list()[1:3] == [HEIGHT // stride,
                                                                 WIDTH // stride], name


def test_training_tower_updates_every_batch_norm_through_update_ops(towers):
    batch_norms = sum(v.op.name.endswith("/BatchNorm/moving_mean")
                      for v in towers.train_variables)
    assert len(towers.train_update_ops) == 2 * batch_norms  # moving mean and variance each


def test_eval_tower_shares_every_variable_and_adds_no_update_ops(towers):
    with towers.graph.as_default():
        assert tf.global_variables() == towers.train_variables
        assert tf.get_collection(tf.GraphKeys.UPDATE_OPS) == towers.train_update_ops
    assert set(towers.eval_points) == set(towers.train_points)  # keys carry no tower suffix
    for name in taps(towers.net).values():
        assert towers.eval_points[name] is not towers.train_points[name]


def test_eval_tower_runs_on_a_dynamic_size_input(towers):
    end_points = taps(towers.net)
    images = np.zeros([2, HEIGHT, WIDTH, 3], np.float32)
    with towers.graph.as_default(), tf.Session() as sess:
        fetches = [tf.shape(towers.eval_features)] + [tf.shape(towers.eval_points[name])
                                                     for name in end_points.values()]
        sess.run(tf.global_variables_initializer())
        features_shape, *tap_shapes = sess.run(fetches, {towers.eval_images: images})
    assert list(features_shape) == [2, HEIGHT // 32, WIDTH // 32, NETS[towers.net].depth]
    for stride, shape in zip(end_points, tap_shapes):
        assert list(shape[1:3]) == [HEIGHT // stride, WIDTH // stride]


@pytest.mark.parametrize("module, has_gamma", [
    (inception_v1, False), (resnet_v1, True), (mobilenet_v1, True), (mobilenet_v2, True)])
@pytest.mark.parametrize("is_training", [True, False])
def test_arg_scope_puts_our_batch_norm_after_each_conv(module, has_gamma, is_training):
    with tf.Graph().as_default():
        with slim.arg_scope(module.arg_scope(is_training=is_training)):
            slim.conv2d(tf.zeros([1, 8, 8, 3]), 4, [3, 3], scope="conv")
        names = set(graph_variables())
        assert {"conv/weights", "conv/BatchNorm/beta", "conv/BatchNorm/moving_mean",
                "conv/BatchNorm/moving_variance"} <= names
        assert ("conv/BatchNorm/gamma" in names) == has_gamma
        assert bool(tf.get_collection(tf.GraphKeys.UPDATE_OPS)) == is_training


def test_vgg_arg_scope_refuses_a_batch_norm_decay():
    with pytest.raises(SegMentorError, match="no batch norm.*drop --batch_norm_decay"):
        vgg.arg_scope(batch_norm_decay=0.99)


# --- batch norm ---------------------------------------------------------------

def random_inputs(seed=0):
    return np.random.RandomState(seed).normal(3.0, 2.0, size=(2, 4, 5, 3)).astype(np.float32)


@pytest.mark.parametrize("center, scale, expected", [
    (True, False, {"beta"}),
    (True, True, {"beta", "gamma"}),
    (False, True, {"gamma"}),
])
def test_batch_norm_variables_follow_the_slim_layout(center, scale, expected):
    with tf.Graph().as_default():
        batch_norm(tf.zeros([1, 2, 2, 3]), center=center, scale=scale)
        stats = {"moving_mean", "moving_variance"}
        assert set(graph_variables()) == {f"BatchNorm/{name}" for name in expected | stats}
        assert {v.op.name for v in tf.model_variables()} == set(graph_variables())
        assert {v.op.name for v in tf.trainable_variables()} == {
            f"BatchNorm/{name}" for name in expected}


def test_batch_norm_training_normalises_by_the_batch_and_updates_only_via_update_ops():
    x = random_inputs()
    decay = 0.9
    with tf.Graph().as_default():
        outputs = batch_norm(tf.constant(x), decay=decay, is_training=True)
        update_ops = tf.get_collection(tf.GraphKeys.UPDATE_OPS)
        moving_mean, moving_variance = (variable("BatchNorm/moving_mean"),
                                        variable("BatchNorm/moving_variance"))
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            normalised = sess.run(outputs)
            untouched = sess.run(moving_mean)
            sess.run(update_ops)
            mean_after, variance_after = sess.run([moving_mean, moving_variance])
    pixels = x.reshape(-1, 3)
    np.testing.assert_allclose(
        normalised, (x - pixels.mean(0)) / np.sqrt(pixels.var(0) + EPSILON), atol=1e-4)
    np.testing.assert_array_equal(untouched, np.zeros(3))
    np.testing.assert_allclose(mean_after, (1 - decay) * pixels.mean(0), rtol=1e-5)
    # The moving variance tracks the unbiased batch variance, as slim's fused kernel did.
    np.testing.assert_allclose(variance_after,
                               decay + (1 - decay) * pixels.var(0, ddof=1), rtol=1e-5)


def test_batch_norm_inference_uses_the_moving_statistics_and_makes_no_update_ops():
    x = random_inputs(seed=1)
    mean, variance = np.array([1.0, 2.0, 3.0]), np.array([0.5, 4.0, 2.0])
    gamma, beta = np.array([2.0, 1.0, 0.5]), np.array([0.1, -0.2, 0.3])
    initial = {"moving_mean": mean, "moving_variance": variance, "gamma": gamma, "beta": beta}
    with tf.Graph().as_default():
        outputs = batch_norm(tf.constant(x), scale=True, is_training=False,
                             param_initializers={name: tf.constant_initializer(value)
                                                 for name, value in initial.items()})
        assert tf.get_collection(tf.GraphKeys.UPDATE_OPS) == []
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            normalised = sess.run(outputs)
    np.testing.assert_allclose(normalised, gamma * (x - mean) / np.sqrt(variance + EPSILON) + beta,
                               rtol=1e-5, atol=1e-5)


def test_batch_norm_collects_its_output_as_an_end_point():
    with tf.Graph().as_default():
        outputs = batch_norm(tf.zeros([1, 2, 2, 3]), outputs_collections="points", scope="bn")
        assert slim.utils.convert_collection_to_dict("points") == {"bn": outputs}


@pytest.mark.parametrize("kwargs, error", [
    ({"fused": True}, TypeError),                      # a slim option we do not implement
    ({"updates_collections": None}, ValueError),       # in-place updates
    ({"param_initializers": {"mean": None}}, ValueError),
])
def test_batch_norm_rejects_what_it_does_not_implement(kwargs, error):
    with tf.Graph().as_default(), pytest.raises(error):
        batch_norm(tf.zeros([1, 2, 2, 3]), **kwargs)


def test_batch_norm_rejects_non_4d_inputs():
    with tf.Graph().as_default(), pytest.raises(ValueError, match="4-D"):
        batch_norm(tf.zeros([2, 3]))
