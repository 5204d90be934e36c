"""FCN architectures over every registered feature extractor (fcn_arch.py)."""
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import fcn_arch
from fcn_arch import (ARCHS, DECODERS, FEATURE_EXTRACTORS, FcnArch, decoder_flags,
                      make_pretrained_restorer)
from everyday import everyday_or_slow
from reference_lists import feature_extractor_variables
from utils.errors import SegMentorError
from utils.run_settings import RunSettings
from utils.tfcompat import slim, tf

NUM_CLASSES = 5
SIZES = [(64, 64), (97, 131)]  # a square, and an odd size that is no multiple of 32


# Every encoder under the classic FCN; the rest of the FCN family over two encoders.
ARCH_CASES = [(net, "fcn") for net in FEATURE_EXTRACTORS] + [
    (net, arch) for arch in fcn_arch.FCN_FAMILY if arch != "fcn"
    for net in ("mobilenet_v1", "resnet_v1_18")]


# Everyday: the whole FCN family over mobilenet_v1 and the classic FCN over resnet_v1_18.
EVERYDAY_ARCH_CASES = [case for case in ARCH_CASES
                       if case[0] == "mobilenet_v1" or case == ("resnet_v1_18", "fcn")]


@pytest.mark.parametrize("net,arch_name", [
    pytest.param(*case, marks=() if case in EVERYDAY_ARCH_CASES else pytest.mark.slow)
    for case in ARCH_CASES])
def test_logits_keep_input_size_and_skips_start_at_zero(net, arch_name):
    """All decoders of one net in one graph: output sizes, and FCN16/8/4 == FCN32 at init.

    The towers share variables (AUTO_REUSE), so score_32s is the same layer in
    every decoder and only the zero-initialised skips differ.
    """
    rng = np.random.RandomState(0)
    with tf.Graph().as_default():
        # One tower per decoder on an input of unknown size, run at each size.
        images = tf.placeholder(tf.float32, [2, None, None, 3])
        logits = {}
        with tf.variable_scope(tf.get_variable_scope(), reuse=tf.AUTO_REUSE):
            for decoder in DECODERS:
                arch = ARCHS[arch_name](NUM_CLASSES, is_training=False, net=net,
                                        **decoder_flags(decoder))
                logits[decoder] = arch.build_net(images)
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            values = {}
            for size in SIZES:
                at_size = sess.run(logits, {images: rng.uniform(0, 255, (2,) + size + (3,))})
                values.update({(decoder, size): value for decoder, value in at_size.items()})
    for (decoder, size), value in values.items():
        assert value.shape == (2,) + size + (NUM_CLASSES,), (decoder, size)
        assert np.all(np.isfinite(value))
        np.testing.assert_allclose(value, values["fcn32", size], rtol=1e-5, atol=1e-4)


# resnet_v1_18's encoder variables are checked every day in test_nets (the same official list).
@pytest.mark.parametrize("net", everyday_or_slow(FEATURE_EXTRACTORS, everyday=["mobilenet_v1"]))
def test_feature_extractor_variables_equal_official_checkpoint(net):
    with tf.Graph().as_default():
        arch = FcnArch(NUM_CLASSES, is_training=True, net=net, fcn8=True)
        arch.build_net(tf.placeholder(tf.float32, [1, 64, 64, 3]))
        pretrained, new = arch.get_pretrained_and_new_vars()
    ours = {name: tuple(var.shape.as_list()) for name, var in pretrained.items()}
    assert ours == feature_extractor_variables(net)
    new_names = sorted(var.op.name for var in new)
    assert all(name.startswith(fcn_arch.DECODER_SCOPE + "/") for name in new_names)
    assert {"decoder/score_32s/weights", "decoder/score_16s/weights",
            "decoder/score_8s/weights"} <= set(new_names)


def _save_classifier_checkpoint(net, path, num_classes=1001):
    """Build the ImageNet classifier with the project's own definitions; save it."""
    extractor = FEATURE_EXTRACTORS[net]
    with tf.Graph().as_default():
        images = tf.placeholder(tf.float32, [1, 224, 224, 3])
        with slim.arg_scope(extractor.arg_scope(is_training=False)):
            extractor.build(images, is_training=False, num_classes=num_classes)
        variables = tf.global_variables()
        with tf.Session() as sess:
            # Random moving statistics too, so a restore that skipped them would show.
            sess.run(tf.global_variables_initializer())
            for var in variables:
                var.load(np.random.RandomState(len(var.op.name)).uniform(
                    0.5, 1.5, var.shape.as_list()).astype(np.float32), sess)
            tf.train.Saver(variables).save(sess, str(path))
            return {var.op.name: var.eval() for var in variables}


# The restore path is the same for every net (names are checked against the
# official lists above); four encoder families keep it honest without saving
# VGG's and ResNet-50's hundreds of megabytes.
@pytest.mark.parametrize("net", everyday_or_slow(
    ["mobilenet_v1", "mobilenet_v2", "resnet_v1_18", "inception_v1"], everyday=["resnet_v1_18"]))
def test_restore_feature_extractor_from_classifier_checkpoint(net, tmp_path):
    checkpoint = tmp_path / "classifier.ckpt"
    saved = _save_classifier_checkpoint(net, checkpoint)
    with tf.Graph().as_default():
        arch = FcnArch(NUM_CLASSES, is_training=True, net=net, fcn16=True)
        arch.build_net(tf.placeholder(tf.float32, [1, 64, 64, 3]))
        restore = make_pretrained_restorer(arch, str(checkpoint))
        pretrained, new = arch.get_pretrained_and_new_vars()
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            restore(sess)
            restored = sess.run(pretrained)
            new_values = sess.run({var.op.name: var for var in new})
    assert restored.keys() <= saved.keys()
    for name, value in restored.items():
        np.testing.assert_array_equal(value, saved[name], err_msg=name)
    assert not new_values.keys() & saved.keys()
    # Skip score layers keep their zero init: nothing leaked into the decoder.
    assert not np.any(new_values["decoder/score_16s/weights"])


def _fcn_graph(net="mobilenet_v1"):
    arch = FcnArch(NUM_CLASSES, is_training=True, net=net)
    arch.build_net(tf.placeholder(tf.float32, [1, 64, 64, 3]))
    return arch


def test_restore_error_names_missing_and_misshaped_variables(tmp_path):
    checkpoint = tmp_path / "wrong.ckpt"
    with tf.Graph().as_default():
        tf.get_variable("MobilenetV1/Conv2d_0/weights", [3, 3, 3, 16])
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            tf.train.Saver().save(sess, str(checkpoint))
    with tf.Graph().as_default():
        arch = _fcn_graph()
        with pytest.raises(SegMentorError) as err:
            make_pretrained_restorer(arch, str(checkpoint))
    message = str(err.value)
    assert str(checkpoint) in message and "\n" not in message
    assert "134 of 135 variables missing, first MobilenetV1/Conv2d_0/BatchNorm/beta" in message
    assert "MobilenetV1/Conv2d_0/weights has shape [3, 3, 3, 16]" in message


def test_restore_error_for_missing_file(tmp_path):
    with tf.Graph().as_default():
        arch = _fcn_graph()
        with pytest.raises(SegMentorError, match="not found: .*nothing.ckpt.*--scratch"):
            make_pretrained_restorer(arch, str(tmp_path / "nothing.ckpt"))


def test_unknown_feature_extractor_lists_the_choices():
    with pytest.raises(SegMentorError, match="unknown feature extractor 'vgg_17'.*mobilenet_v2"):
        FcnArch(NUM_CLASSES, is_training=False, net="vgg_17")


def test_finer_decoder_implies_the_coarser_skips():
    assert FcnArch(2, False, net="mobilenet_v1", fcn8=True).skip_strides == (16, 8)
    assert FcnArch(2, False, net="mobilenet_v1", fcn4=True).decoder == "fcn4"
    assert FcnArch(2, False, net="mobilenet_v1").decoder == "fcn32"


def test_decoder_flags_invert_decoder_name():
    for decoder in DECODERS:
        assert fcn_arch.decoder_name(**decoder_flags(decoder)) == decoder


def test_arch_from_settings_rebuilds_the_trained_architecture():
    runargs = {"basenet": "mobilenet_v2", "extended_arch": "fcn_refine", "fcn16": True,
               "fcn8": True, "batch_norm_decay": 0.95}
    arch = fcn_arch.arch_from_settings(RunSettings.from_runargs(runargs), 3, is_training=False)
    assert type(arch) is fcn_arch.RefineFcnArch
    assert (arch.net, arch.decoder, arch.number_of_classes) == ("mobilenet_v2", "fcn8", 3)
    assert arch.arg_scope_overrides == {"batch_norm_decay": 0.95}


def test_batch_norm_decay_is_refused_for_a_net_without_batch_norm():
    with pytest.raises(SegMentorError, match="vgg_16 has no batch norm"):
        FcnArch(NUM_CLASSES, is_training=True, net="vgg_16", batch_norm_decay=0.9)


def test_stats_agree_with_published_seg_mentor_figures():
    # seg-mentor's README: MobileNetV1-FCN16 3.12 M parameters, 2.9 G MACs at 512x512.
    params, macs = fcn_arch.network_stats("mobilenet_v1", "fcn16", 21, 512)
    assert params / 1e6 == pytest.approx(3.12, rel=0.1)
    assert macs / 1e9 == pytest.approx(2.9, rel=0.1)


@pytest.mark.slow  # a fresh interpreter, and graphs at 128 px
def test_stats_command_prints_a_row_per_network_and_decoder():
    result = subprocess.run(
        [sys.executable, "fcn_arch.py", "--stats", "--nets", "mobilenet_v1",
         "--decoders", "fcn32", "fcn16", "unet", "--pixels", "128"],
        cwd=pathlib.Path(fcn_arch.__file__).parent, capture_output=True, text=True, check=True)
    rows = result.stdout.strip().splitlines()
    assert rows[0].split()[:3] == ["network", "decoder", "params"]
    assert [row.split()[:2] for row in rows[1:]] == [
        ["mobilenet_v1", "fcn32"], ["mobilenet_v1", "fcn16"], ["mobilenet_v1", "unet"]]
    fcn16_params, unet_params = (float(row.split()[2]) for row in rows[2:])
    assert unet_params > fcn16_params  # the U-Net decoder's convs are counted


def test_stats_rows_that_cannot_exist_say_why_and_the_others_are_printed(capsys):
    args = fcn_arch.build_parser().parse_args(
        ["--stats", "--nets", "mobilenet_v1", "--decoders", "fcn16", "fcn8",
         "--output_stride", "16", "--pixels", "64"])
    fcn_arch.main(args)
    fcn16_row, fcn8_row = capsys.readouterr().out.strip().splitlines()[1:]
    assert fcn16_row.split()[:4] == ["mobilenet_v1", "fcn16", "-", "-"]
    assert "--output_stride 16" in fcn16_row
    assert fcn8_row.split()[:2] == ["mobilenet_v1", "fcn8"] and float(fcn8_row.split()[2]) > 0
