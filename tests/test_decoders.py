"""Decoders with their own taps (linknet, unet, deeplabv3plus) and atrous output strides."""
import numpy as np
import pytest

import fcn_arch
from everyday import everyday_or_slow
from fcn_arch import ARCHS, ATROUS_NETS, FCN_FAMILY, FEATURE_EXTRACTORS
from nets.mobilenet_v1 import atrous_strides
from reference_lists import feature_extractor_variables
from utils.errors import SegMentorError
from utils.run_settings import RunSettings
from utils.tfcompat import tf

NUM_CLASSES = 3
SIZES = [(64, 64), (45, 67)]  # a square, and an odd size that is no multiple of 32
NEW_DECODERS = [name for name in ARCHS if name not in FCN_FAMILY]


def variable_shapes(variables):
    return {name: tuple(var.shape.as_list()) for name, var in variables.items()}


# Three graphs per encoder take 10-20 s of CPU (vgg_16, resnet_v1_50 and
# inception_v1 twice that): only mobilenet_v1 runs every day.
@pytest.mark.parametrize("net", everyday_or_slow(FEATURE_EXTRACTORS, everyday=["mobilenet_v1"]))
def test_every_decoder_keeps_input_size_and_the_checkpoint_variables(net):
    """Each new decoder over the encoder: logits keep H and W (also not a multiple of
    32), and the encoder still has exactly the official checkpoint's variables while
    everything new sits under the decoder scope."""
    rng = np.random.RandomState(0)
    archs, values = {}, {}
    for name in NEW_DECODERS:
        with tf.Graph().as_default():
            images = tf.placeholder(tf.float32, [1, None, None, 3])
            archs[name] = ARCHS[name](NUM_CLASSES, is_training=True, net=net)
            logits = archs[name].build_net(images)
            with tf.Session() as sess:
                sess.run(tf.global_variables_initializer())
                for size in SIZES:
                    values[name, size] = sess.run(
                        logits, {images: rng.uniform(0, 255, (1,) + size + (3,))})
    for (name, size), value in values.items():
        assert value.shape == (1,) + size + (NUM_CLASSES,), (name, size)
        assert np.all(np.isfinite(value)), (name, size)
    extractor = FEATURE_EXTRACTORS[net]
    for name, arch in archs.items():
        pretrained, new = arch.get_pretrained_and_new_vars()
        assert variable_shapes(pretrained) == feature_extractor_variables(net), name
        new_names = [var.op.name for var in new]
        assert new_names and all(n.startswith(fcn_arch.DECODER_SCOPE + "/") for n in new_names)
        # The family's normalizer reaches the decoder (vgg_16 has none), and the
        # MobileNets get depthwise-separable decoder convs.
        assert any("/BatchNorm/" in n for n in new_names) == extractor.has_batch_norm, name
        assert any("/depthwise_weights" in n for n in new_names) == (
            extractor.separable_decoder), name


# One atrous encoder a day (mobilenet_v1, with its own atrous_strides, checked below too);
# CI builds the residual and the other depthwise ones.
@pytest.mark.parametrize("net", everyday_or_slow(ATROUS_NETS, everyday=["mobilenet_v1"]))
def test_output_stride_16_and_8_keep_the_variables_and_refine_the_features(net):
    shapes, feature_sides = {}, {}
    for output_stride in fcn_arch.OUTPUT_STRIDES:
        with tf.Graph().as_default() as graph:
            arch = ARCHS["fcn"](NUM_CLASSES, is_training=True, net=net,
                                output_stride=output_stride)
            logits = arch.build_net(tf.placeholder(tf.float32, [1, 64, 64, 3]))
            assert logits.shape.as_list() == [1, 64, 64, NUM_CLASSES]
            shapes[output_stride] = variable_shapes(arch._variables)
            features = graph.get_operation_by_name("decoder/score_32s/Conv2D").inputs[0]
            feature_sides[output_stride] = features.shape.as_list()[1]
    assert shapes[16] == shapes[32] and shapes[8] == shapes[32]
    assert feature_sides == {32: 2, 16: 4, 8: 8}


def test_atrous_strides_turn_later_strides_into_rates():
    assert atrous_strides([2, 1, 2, 2, 1, 2], None) == [(2, 1), (1, 1), (2, 1), (2, 1), (1, 1),
                                                        (2, 1)]
    # Stride 4 reached after the third layer: its stride 2 becomes rate 2 for the
    # next layers, the last stride 2 doubles it again.
    assert atrous_strides([2, 1, 2, 2, 1, 2, 1], 4) == [(2, 1), (1, 1), (2, 1), (1, 1), (1, 2),
                                                        (1, 2), (1, 4)]


@pytest.mark.parametrize("arch_name, net, output_stride, flags, skip_strides", [
    ("linknet", "resnet_v1_18", 32, {}, (16, 8, 4)),
    ("linknet", "resnet_v1_18", 8, {}, (4,)),
    ("unet", "vgg_16", 32, {}, (16, 8, 4, 2)),
    ("unet", "mobilenet_v2", 16, {}, (8, 4, 2)),
    ("deeplabv3plus", "mobilenet_v1", 16, {}, (4,)),
    ("fcn", "mobilenet_v1", 32, {"fcn16": True, "fcn8": True}, (16, 8)),
    ("fcn", "mobilenet_v1", 16, {"fcn8": True}, (8,)),
    ("fcn", "resnet_v1_50", 8, {}, ()),
])
def test_decoders_tap_the_strides_finer_than_the_output_stride(arch_name, net, output_stride,
                                                              flags, skip_strides):
    arch = ARCHS[arch_name](NUM_CLASSES, False, net=net, output_stride=output_stride, **flags)
    assert arch.skip_strides == skip_strides


def test_every_registered_encoder_has_a_tap_at_each_decoder_stride():
    for net, extractor in FEATURE_EXTRACTORS.items():
        for arch in ARCHS.values():
            assert set(arch.TAPS.strides) <= set(extractor.skip_end_points), (net, arch.NAME)


@pytest.mark.parametrize("build, message", [
    (lambda: fcn_arch.get_arch_class("segnet"),
     "unknown decoder 'segnet'; choose one of: fcn, fcn_refine, linknet, unet, deeplabv3plus"),
    (lambda: ARCHS["deeplabv3plus"](NUM_CLASSES, False, net="vgg_16", output_stride=16),
     "--output_stride 16 needs atrous convolution, which vgg_16 lacks: use --output_stride 32 "
     "or one of resnet_v1_18, resnet_v1_50, mobilenet_v1, mobilenet_v2"),
    (lambda: ARCHS["fcn"](NUM_CLASSES, False, net="resnet_v1_18", output_stride=12),
     "output stride 12 is not one of 32, 16, 8"),
    (lambda: ARCHS["unet"](NUM_CLASSES, False, net="mobilenet_v1", fcn8=True),
     "--extended_arch unet taps its own strides (16, 8, 4, 2); --fcn16/--fcn8/--fcn4 choose "
     "the skips of the FCN family (fcn, fcn_refine) only: drop --fcn8"),
    (lambda: ARCHS["fcn"](NUM_CLASSES, False, net="mobilenet_v2", fcn16=True, output_stride=16),
     "--fcn16 adds skips down to stride 16, but with --output_stride 16 the encoder output is "
     "already there: choose a skip finer than 16 or none"),
])
def test_impossible_architectures_fail_with_one_line(build, message):
    with pytest.raises(SegMentorError) as err:
        build()
    assert str(err.value) == message


def test_arch_from_settings_reads_the_output_stride_with_32_for_older_runs():
    old = {"basenet": "mobilenet_v1", "extended_arch": "fcn", "fcn16": True}
    old_settings = RunSettings.from_runargs(old)
    assert fcn_arch.arch_from_settings(old_settings, NUM_CLASSES, False).output_stride == 32
    new = {"basenet": "resnet_v1_18", "extended_arch": "deeplabv3plus", "output_stride": 16}
    arch = fcn_arch.arch_from_settings(RunSettings.from_runargs(new), NUM_CLASSES, False)
    assert (type(arch), arch.output_stride, arch.decoder) == (
        fcn_arch.DeepLabV3PlusArch, 16, "deeplabv3plus")


def test_fcn_skips_below_the_output_stride_still_start_at_zero():
    """--fcn8 --output_stride 16 adds one zero-initialised stride-8 skip: at step 0 it
    computes exactly FCN32 at output stride 16."""
    with tf.Graph().as_default():
        images = tf.placeholder(tf.float32, [1, 45, 67, 3])
        with tf.variable_scope(tf.get_variable_scope(), reuse=tf.AUTO_REUSE):
            logits = {decoder: ARCHS["fcn"](NUM_CLASSES, False, net="mobilenet_v1",
                                            output_stride=16,
                                            **fcn_arch.decoder_flags(decoder)).build_net(images)
                      for decoder in ("fcn32", "fcn8")}
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            values = sess.run(logits, {images: np.random.RandomState(1).uniform(
                0, 255, (1, 45, 67, 3))})
    assert values["fcn8"].shape == (1, 45, 67, NUM_CLASSES)
    np.testing.assert_allclose(values["fcn8"], values["fcn32"], rtol=1e-5, atol=1e-4)
