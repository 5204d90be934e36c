"""Fully convolutional segmentation networks: feature extractor + decoder.

`BaseFcnArch` is the decoder skeleton: decode the encoder output (stride 32,
or 16/8 with atrous encoders), then per tapped skip upsample and combine it
with the encoder's map at that stride, then a class head at the input size.
`FcnArch` fills the blocks in as the classic FCN32/16/8/4 of Long et al.
(2015); `LinkNetArch`, `UNetArch` and `DeepLabV3PlusArch` are decoders with
their own taps. All run over any feature extractor of the `FEATURE_EXTRACTORS`
registry. `ARCHS` maps `--extended_arch` names to classes.

Usage:
    arch = FcnArch(number_of_classes=21, is_training=True, net='mobilenet_v1', fcn16=True)
    arch = ARCHS['deeplabv3plus'](21, is_training=True, net='resnet_v1_18', output_stride=16)
    logits = arch.build_net(images)  # images: float32 [B, H, W, 3] RGB 0..255

This module knows nothing about files, flags or sessions, beyond turning a
slim checkpoint into a restore function. `python fcn_arch.py --stats` prints
parameters and multiply-accumulates of every network.
"""
import dataclasses
import os
import sys
from typing import Callable, Mapping

from nets import inception_v1, mobilenet_v1, mobilenet_v2, resnet_v1, vgg
from nets.preprocessing import (NORMALIZE_TORCHVISION, SCALE_TO_UNIT_RANGE,
                                SUBTRACT_IMAGENET_MEAN, Preprocessing)
from utils.cli import CheckedArgumentParser
from utils.errors import SegMentorError, run_main
from utils.tfcompat import slim, tf
from utils.upsampling import upsample_bilinear

# Every feature extractor reduces the input 32 times; inputs are padded to a
# multiple of this so each stride-s map is exactly (H/s, W/s) and skips align.
FEATURE_STRIDE = 32
DECODER_SCOPE = "decoder"


@dataclasses.dataclass(frozen=True)
class FeatureExtractor:
    """Everything the decoder and the training script need to know about one encoder.

    build: `fn(images, is_training, num_classes=None, reuse=None)` -> (stride-32
        features, end_points keyed relative to `checkpoint_scope`).
    arg_scope: `fn(is_training, **overrides)` -> slim arg scope (our batch norm).
    checkpoint_scope: top variable scope, as in the official slim checkpoint.
    skip_end_points: end point a decoder may tap at stride 16, 8, 4 and 2 (the
        deepest map at that stride; the FCN family uses 16, 8, 4).
    preprocess: float RGB 0..255 -> what the checkpoint was trained on
        (nets.preprocessing); its `zero_rgb` is the network's padding colour.
    checkpoint_file: file name of the official ImageNet checkpoint in --modelspath.
    has_batch_norm: False for nets without batch norm (a decay means nothing there).
    atrous: `build` takes `output_stride` (16 or 8): the strides after it become
        dilation rates, with the same variables.
    separable_decoder: decoders use depthwise-separable 3x3 convs over it (the
        MobileNets: a full 3x3 conv would cost more than the encoder).
    """
    build: Callable
    arg_scope: Callable
    checkpoint_scope: str
    skip_end_points: Mapping[int, str]
    preprocess: Preprocessing
    checkpoint_file: str
    has_batch_norm: bool = True
    atrous: bool = False
    separable_decoder: bool = False


FEATURE_EXTRACTORS = {
    "vgg_16": FeatureExtractor(
        build=vgg.vgg_16, arg_scope=vgg.arg_scope, checkpoint_scope="vgg_16",
        skip_end_points={16: "pool4", 8: "pool3", 4: "pool2", 2: "pool1"},
        preprocess=SUBTRACT_IMAGENET_MEAN, checkpoint_file="vgg_16.ckpt",
        has_batch_norm=False),
    "resnet_v1_18": FeatureExtractor(
        build=resnet_v1.resnet_v1_18, arg_scope=resnet_v1.arg_scope,
        checkpoint_scope="resnet_v1_18",
        skip_end_points={16: "block3/unit_2/res_block_v1",
                         8: "block2/unit_2/res_block_v1",
                         4: "block1/unit_2/res_block_v1", 2: "conv1"},
        preprocess=NORMALIZE_TORCHVISION, checkpoint_file="resnet_v1_18.ckpt", atrous=True),
    "resnet_v1_50": FeatureExtractor(
        build=resnet_v1.resnet_v1_50, arg_scope=resnet_v1.arg_scope,
        checkpoint_scope="resnet_v1_50",
        skip_end_points={16: "block3/unit_5/bottleneck_v1",
                         8: "block2/unit_3/bottleneck_v1",
                         4: "block1/unit_2/bottleneck_v1", 2: "conv1"},
        preprocess=SUBTRACT_IMAGENET_MEAN, checkpoint_file="resnet_v1_50.ckpt", atrous=True),
    "inception_v1": FeatureExtractor(
        build=inception_v1.inception_v1, arg_scope=inception_v1.arg_scope,
        checkpoint_scope="InceptionV1",
        skip_end_points={16: "Mixed_4f", 8: "Mixed_3c", 4: "Conv2d_2c_3x3",
                         2: "Conv2d_1a_7x7"},
        preprocess=SCALE_TO_UNIT_RANGE, checkpoint_file="inception_v1.ckpt"),
    "mobilenet_v1": FeatureExtractor(
        build=mobilenet_v1.mobilenet_v1, arg_scope=mobilenet_v1.arg_scope,
        checkpoint_scope="MobilenetV1",
        skip_end_points={16: "Conv2d_11_pointwise", 8: "Conv2d_5_pointwise",
                         4: "Conv2d_3_pointwise", 2: "Conv2d_1_pointwise"},
        preprocess=SCALE_TO_UNIT_RANGE, checkpoint_file="mobilenet_v1_1.0_224.ckpt",
        atrous=True, separable_decoder=True),
    "mobilenet_v2": FeatureExtractor(
        build=mobilenet_v2.mobilenet_v2, arg_scope=mobilenet_v2.arg_scope,
        checkpoint_scope="MobilenetV2",
        skip_end_points={16: "expanded_conv_12", 8: "expanded_conv_5",
                         4: "expanded_conv_2", 2: "expanded_conv"},
        preprocess=SCALE_TO_UNIT_RANGE, checkpoint_file="mobilenet_v2_1.0_224.ckpt",
        atrous=True, separable_decoder=True),
}

# FCN-family decoder name -> its finest skip stride (FCN16 = one skip, ...).
DECODERS = {"fcn32": 32, "fcn16": 16, "fcn8": 8, "fcn4": 4}

# Strides the encoder may end at: 32 is every extractor's own; the atrous ones
# also run at 16 or 8 (the later strides become dilation rates).
OUTPUT_STRIDES = (32, 16, 8)
ATROUS_NETS = tuple(name for name, extractor in FEATURE_EXTRACTORS.items() if extractor.atrous)


def decoder_name(fcn16=False, fcn8=False, fcn4=False):
    """'fcn4' if fcn4 else ... 'fcn32': a finer skip implies the coarser ones."""
    return "fcn4" if fcn4 else "fcn8" if fcn8 else "fcn16" if fcn16 else "fcn32"


def decoder_flags(decoder):
    """The inverse of `decoder_name`: 'fcn8' -> dict(fcn16=True, fcn8=True, fcn4=False)."""
    stride = DECODERS[decoder]
    return dict(fcn16=stride <= 16, fcn8=stride <= 8, fcn4=stride <= 4)


def get_feature_extractor(net):
    try:
        return FEATURE_EXTRACTORS[net]
    except KeyError:
        raise SegMentorError(
            f"unknown feature extractor '{net}'; choose one of: "
            f"{', '.join(FEATURE_EXTRACTORS)}") from None


def pad_rgb(net):
    """The RGB 0..255 colour to pad `net`'s inputs with: what its preprocessing turns
    into exactly 0.0, so padding adds no signal (feeder, test-time sizing, exports)."""
    return get_feature_extractor(net).preprocess.zero_rgb


@dataclasses.dataclass(frozen=True)
class DecoderTaps:
    """The encoder strides a decoder class combines.

    strides: skip strides it may tap, coarse to fine (where the encoder has them).
    from_fcn_flags: True for the FCN family, where --fcn16/--fcn8/--fcn4 pick the
        finest skip; False for decoders with fixed taps, where those flags are an
        error rather than a silent change of depth.
    A decoder taps only strides finer than the output stride: the encoder output
    already is the state at the output stride.
    """
    strides: tuple
    from_fcn_flags: bool = False


def _skip_strides(arch_class, net, output_stride, fcn16, fcn8, fcn4):
    """The skip strides `arch_class` taps over `net`, coarse to fine, or SegMentorError."""
    extractor = get_feature_extractor(net)
    if output_stride not in OUTPUT_STRIDES:
        raise SegMentorError(f"output stride {output_stride} is not one of "
                             f"{', '.join(map(str, OUTPUT_STRIDES))}")
    if output_stride != FEATURE_STRIDE and not extractor.atrous:
        raise SegMentorError(
            f"--output_stride {output_stride} needs atrous convolution, which {net} lacks: "
            f"use --output_stride {FEATURE_STRIDE} or one of {', '.join(ATROUS_NETS)}")
    taps = arch_class.TAPS
    decoder = decoder_name(fcn16, fcn8, fcn4)
    if not taps.from_fcn_flags:
        if decoder != "fcn32":
            raise SegMentorError(
                f"--extended_arch {arch_class.NAME} taps its own strides "
                f"({', '.join(map(str, taps.strides))}); --fcn16/--fcn8/--fcn4 choose the skips "
                f"of the FCN family ({', '.join(FCN_FAMILY)}) only: drop --{decoder}")
        return tuple(stride for stride in taps.strides
                     if stride < output_stride and stride in extractor.skip_end_points)
    finest = DECODERS[decoder]
    if finest < FEATURE_STRIDE and finest >= output_stride:
        raise SegMentorError(
            f"--{decoder} adds skips down to stride {finest}, but with --output_stride "
            f"{output_stride} the encoder output is already there: choose a skip finer "
            f"than {output_stride} or none")
    return tuple(stride for stride in taps.strides if output_stride > stride >= finest)


def _static_or_dynamic_dim(tensor, axis):
    """The static size of `axis` when the graph knows it, else a scalar tensor."""
    static = tensor.shape[axis]
    return static if static is not None else tf.shape(tensor)[axis]


def _pad_to_multiple(images, multiple, pad_rgb):
    """Pad RGB [B, H, W, 3] at the bottom/right so H and W are multiples of `multiple`.

    The padding is `pad_rgb`, the network's `pad_rgb(net)` as the feeder pads its
    batches: exactly zero after preprocessing, the most neutral input there is.
    """
    height = _static_or_dynamic_dim(images, 1)
    width = _static_or_dynamic_dim(images, 2)
    pad_h = (-height) % multiple
    pad_w = (-width) % multiple
    colour = tf.constant(pad_rgb, dtype=images.dtype)
    padded = tf.pad(images - colour, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]]) + colour
    return padded, height, width


# What a decoder's transposed convs copy from the encoder family's conv2d arg
# scope: the families scope slim.conv2d only, and a decoder block should get the
# same normalizer, activation and regularizer whichever op it uses.
_SHARED_CONV_ARGS = ("activation_fn", "normalizer_fn", "normalizer_params", "weights_initializer",
                     "weights_regularizer", "biases_initializer", "padding")


def _transposed_conv_arg_scope():
    conv_args = slim.current_arg_scope().get(slim.arg_scope_func_key(slim.conv2d), {})
    return slim.arg_scope([slim.conv2d_transpose], **{
        key: value for key, value in conv_args.items() if key in _SHARED_CONV_ARGS})


class BaseFcnArch:
    """Decoder skeleton over a registry feature extractor.

    `build_net` runs the encoder (to `output_stride`), then:
        net = decode_deepest(features, output_stride)
        for each tapped skip stride s, coarse to fine:
            net = combine(upsample(net, previous stride, s, skip), skip, s)
        logits = head(net, finest stride)   # at the padded input size
    The decoder state may be class scores (FCN) or features. A decoder is a
    subclass with a `NAME`, its `TAPS` and two to four of these blocks; the
    defaults: the encoder output is the state, upsampling is bilinear in x2
    steps, and the head is a 1x1 class layer followed by `final_upsample`.
    Decoder convs run in the encoder family's arg scope, so they get its batch
    norm (none for vgg_16), activation and weight decay.
    """
    NAME = None
    TAPS = DecoderTaps(strides=(16, 8, 4), from_fcn_flags=True)

    def __init__(self, number_of_classes, is_training, net="vgg_16", fcn16=False, fcn8=False,
                 fcn4=False, trainable_upsampling=False, weight_decay=None,
                 batch_norm_decay=None, output_stride=FEATURE_STRIDE):
        self.number_of_classes = number_of_classes
        self.is_training = is_training
        self.net = net
        self.feature_extractor = get_feature_extractor(net)
        self.output_stride = output_stride
        self.skip_strides = _skip_strides(type(self), net, output_stride, fcn16, fcn8, fcn4)
        self.decoder = decoder_name(fcn16, fcn8, fcn4) if self.TAPS.from_fcn_flags else self.NAME
        self.trainable_upsampling = trainable_upsampling
        if batch_norm_decay is not None and not self.feature_extractor.has_batch_norm:
            raise SegMentorError(f"{net} has no batch norm, so a batch-norm decay does not "
                                 f"apply to it; leave it unset")
        # None keeps the checkpoint family's own value (see nets/*.arg_scope).
        self.arg_scope_overrides = {
            key: value for key, value in
            (("weight_decay", weight_decay), ("batch_norm_decay", batch_norm_decay))
            if value is not None}
        self._variables = {}

    # --- blocks a subclass may override ---------------------------------------

    def decode_deepest(self, features, stride):
        """Encoder output [B, H/stride, W/stride, C] -> decoder state at `stride`."""
        return features

    def upsample(self, net, from_stride, to_stride, skip):
        """Decoder state at `from_stride` -> at `to_stride`, where `skip` joins next."""
        while from_stride > to_stride:
            net = self._upsample(net, 2, f"upsample_{from_stride}s_to_{from_stride // 2}s")
            from_stride //= 2
        return net

    def combine(self, upsampled, skip, stride):
        """Upsampled state and the encoder's map `skip`, both at `stride` -> state at `stride`."""
        raise NotImplementedError

    def head(self, net, stride):
        """Decoder state at `stride` -> logits at the padded input size."""
        return self.final_upsample(self._classify(net), stride)

    def final_upsample(self, net, stride):
        """Decoder state at `stride` -> logits at the (padded) input size, in x2 steps.

        Bilinear x2 twice is not bilinear x4 (the second step interpolates
        samples that miss the first one's knots), so a single x`stride` step
        would make FCN16 differ from FCN32 even with a zero skip. A chain of
        x2 steps keeps every decoder on one interpolation: FCN16/8/4 start
        exactly equal to FCN32.
        """
        while stride > 1:
            net = self._upsample(net, 2, f"upsample_final_{stride}s_to_{stride // 2}s")
            stride //= 2
        return net

    # --- helpers for the blocks ---------------------------------------------------

    def _upsample(self, net, factor, scope):
        return upsample_bilinear(net, factor, trainable=self.trainable_upsampling, scope=scope)

    def _classify(self, net, scope="logits"):
        """1x1 class scores: no normalizer, no activation."""
        return slim.conv2d(net, self.number_of_classes, [1, 1], activation_fn=None,
                           normalizer_fn=None, biases_initializer=tf.zeros_initializer(),
                           scope=scope)

    def _conv3x3(self, net, depth, scope, rate=1):
        """3x3 conv with the family's normalizer and activation; over the MobileNets
        (`separable_decoder`) a depthwise 3x3 + pointwise 1x1 pair, as their own layers."""
        if not self.feature_extractor.separable_decoder:
            return slim.conv2d(net, depth, [3, 3], rate=rate, scope=scope)
        net = slim.separable_conv2d(net, None, [3, 3], depth_multiplier=1, rate=rate,
                                    scope=scope + "_depthwise")
        return slim.conv2d(net, depth, [1, 1], scope=scope + "_pointwise")

    # --- the fixed skeleton -----------------------------------------------------

    def build_net(self, images):
        """float32 RGB [B, H, W, 3] in 0..255 -> logits [B, H, W, number_of_classes]."""
        extractor = self.feature_extractor
        atrous = ({} if self.output_stride == FEATURE_STRIDE
                  else {"output_stride": self.output_stride})
        with tf.variable_scope(tf.get_variable_scope(), custom_getter=self._record_variable):
            padded, height, width = _pad_to_multiple(images, FEATURE_STRIDE,
                                                       extractor.preprocess.zero_rgb)
            with slim.arg_scope(extractor.arg_scope(is_training=self.is_training,
                                                    **self.arg_scope_overrides)):
                features, end_points = extractor.build(extractor.preprocess(padded),
                                                       is_training=self.is_training, **atrous)
                with tf.variable_scope(DECODER_SCOPE), _transposed_conv_arg_scope():
                    logits = self._decode(features, end_points)
        return logits[:, :height, :width, :]

    def _decode(self, features, end_points):
        taps = self.feature_extractor.skip_end_points
        stride = self.output_stride
        net = self.decode_deepest(features, stride)
        for skip_stride in self.skip_strides:
            skip = end_points[taps[skip_stride]]
            net = self.combine(self.upsample(net, stride, skip_stride, skip), skip, skip_stride)
            stride = skip_stride
        return self.head(net, stride)

    def _record_variable(self, getter, name, *args, **kwargs):
        # A custom getter sees variables both when created and when reused by a
        # second tower, so every arch object knows exactly the variables it uses
        # (optimizer slots, made later, never show up here).
        variable = getter(name, *args, **kwargs)
        # The name without ":0", not `op.name`: under tf.distribute a replica's `op` is its
        # own copy's ("<name>/replica_1"), while `name` is the variable's in every replica.
        self._variables[variable.name.rsplit(":", 1)[0]] = variable
        return variable

    def get_pretrained_and_new_vars(self):
        """({checkpoint name: variable} of the feature extractor, [new decoder variables]).

        Call after `build_net`. Graph names equal the official checkpoint names,
        because the feature extractor is built at the top of the variable scope.
        """
        if not self._variables:
            raise RuntimeError("get_pretrained_and_new_vars() needs build_net() first")
        prefix = self.feature_extractor.checkpoint_scope + "/"
        pretrained = {name: var for name, var in self._variables.items()
                      if name.startswith(prefix)}
        new = [var for name, var in self._variables.items() if not name.startswith(prefix)]
        return pretrained, new


class FcnArch(BaseFcnArch):
    """Classic FCN: 1x1 class scores at the output stride, plus scored skips added in.

    Skip score layers start at zero, so at step 0 FCN16/8/4 compute exactly
    FCN32 and training only adds detail the coarse head cannot give; this is
    the "staged" FCN training of the paper done in one run.
    """
    NAME = "fcn"

    def decode_deepest(self, features, stride):
        # 'score_32s' at any output stride: the same variable as in every FCN run.
        return self._score(features, "score_32s", zero_init=False)

    def combine(self, upsampled, skip, stride):
        return upsampled + self._score(skip, f"score_{stride}s", zero_init=True)

    def head(self, net, stride):
        return self.final_upsample(net, stride)  # the state already is class scores

    def _score(self, features, scope, zero_init):
        initializer = (tf.zeros_initializer() if zero_init
                       else slim.xavier_initializer())
        return slim.conv2d(features, self.number_of_classes, [1, 1], activation_fn=None,
                           normalizer_fn=None, weights_initializer=initializer,
                           biases_initializer=tf.zeros_initializer(), scope=scope)


class RefineFcnArch(FcnArch):
    """FCN with a small convolutional head at each stage (an `--extended_arch` example).

    A 1x1 classifier on raw skip features can only weigh what the encoder
    already separates; a 3x3 conv (with the encoder's normalizer and
    activation, from its arg scope) before each score layer lets the decoder
    mix local context first, for a few percent more
    parameters. Score layers keep FcnArch's zero init, so FCN16 still starts
    as FCN32.
    """
    NAME = "fcn_refine"
    HEAD_DEPTH_32S = 256
    HEAD_DEPTH_SKIP = 64

    def decode_deepest(self, features, stride):
        net = slim.conv2d(features, self.HEAD_DEPTH_32S, [3, 3], scope="head_32s")
        return self._score(net, "score_32s", zero_init=False)

    def combine(self, upsampled, skip, stride):
        net = slim.conv2d(skip, self.HEAD_DEPTH_SKIP, [3, 3], scope=f"head_{stride}s")
        return upsampled + self._score(net, f"score_{stride}s", zero_init=True)


class LinkNetArch(BaseFcnArch):
    """LinkNet (Chaurasia & Culurciello, 2017, https://arxiv.org/abs/1707.03718).

    Each stage: 1x1 conv to depth/4, 3x3 transposed conv x2, 1x1 conv to the
    skip's depth, added to the skip (the encoder's features pass straight
    through, so the decoder stays thin). Head from stride 4, as the paper: 3x3
    transposed conv x2 to 32 channels, 3x3 conv, 2x2 transposed conv x2 to the
    classes.
    """
    NAME = "linknet"
    TAPS = DecoderTaps(strides=(16, 8, 4))
    # depth/4 capped per target stride, so wide encoders (VGG's 4096, ResNet-50's
    # 2048) stay cheap at high resolution; the caps are ResNet-18's own depth/4.
    MAX_MIDDLE_DEPTH = {16: 128, 8: 64, 4: 32}
    HEAD_DEPTH = 32

    def upsample(self, net, from_stride, to_stride, skip):
        middle = min(net.shape[-1] // 4, self.MAX_MIDDLE_DEPTH[to_stride])
        with tf.variable_scope(f"block_{to_stride}s"):
            net = slim.conv2d(net, middle, [1, 1], scope="reduce")
            net = slim.conv2d_transpose(net, middle, [3, 3], stride=from_stride // to_stride,
                                        scope="upsample")
            return slim.conv2d(net, skip.shape[-1], [1, 1], scope="expand")

    def combine(self, upsampled, skip, stride):
        return upsampled + skip

    def head(self, net, stride):
        with tf.variable_scope("head"):
            net = slim.conv2d_transpose(net, self.HEAD_DEPTH, [3, 3], stride=2, scope="upsample")
            net = self._conv3x3(net, self.HEAD_DEPTH, "conv")
            logits = slim.conv2d_transpose(net, self.number_of_classes, [2, 2], stride=2,
                                           activation_fn=None, normalizer_fn=None,
                                           biases_initializer=tf.zeros_initializer(),
                                           scope="logits")
        return self.final_upsample(logits, stride // 4)


class UNetArch(BaseFcnArch):
    """U-Net style decoder (Ronneberger et al., 2015, https://arxiv.org/abs/1505.04597).

    Each stage: bilinear x2, concatenate the skip, two 3x3 conv + normalizer +
    activation; down to stride 2 (every registered encoder has a stride-2 end
    point), then 1x1 class scores and a bilinear x2.
    """
    NAME = "unet"
    TAPS = DecoderTaps(strides=(16, 8, 4, 2))
    # 1x1 on the encoder output first: concatenated with VGG's 4096 channels the
    # first 3x3 conv would cost more than the whole rest of the decoder.
    BOTTLENECK_DEPTH = 256
    # Narrower at higher resolution: the MACs of each stage stay about equal.
    DEPTH = {16: 128, 8: 64, 4: 32, 2: 16}

    def decode_deepest(self, features, stride):
        return slim.conv2d(features, self.BOTTLENECK_DEPTH, [1, 1], scope="bottleneck")

    def combine(self, upsampled, skip, stride):
        net = tf.concat([upsampled, skip], axis=-1)
        net = self._conv3x3(net, self.DEPTH[stride], f"conv_{stride}s_1")
        return self._conv3x3(net, self.DEPTH[stride], f"conv_{stride}s_2")


class DeepLabV3PlusArch(BaseFcnArch):
    """DeepLabV3+ (Chen et al., 2018, https://arxiv.org/abs/1802.02611).

    ASPP on the encoder output: a 1x1 conv, three 3x3 atrous convs (rates
    6/12/18 at output stride 16, doubled at 8, halved at 32) and image-level
    pooling, concatenated and projected by a 1x1 conv. Decoder: bilinear up to
    stride 4, concatenated with the stride-4 skip reduced to 48 channels, two
    3x3 convs, class scores, bilinear to the input size. Widths are half the
    paper's (ASPP) and a quarter (decoder, at stride 4) for 2-core CPUs.
    """
    NAME = "deeplabv3plus"
    TAPS = DecoderTaps(strides=(4,))
    ASPP_DEPTH = 128
    ASPP_RATES_AT_16 = (6, 12, 18)
    SKIP_DEPTH = 48  # the paper's: few channels, so low-level detail does not outweigh ASPP
    DECODER_DEPTH = 64

    def decode_deepest(self, features, stride):
        rates = [rate * 16 // stride for rate in self.ASPP_RATES_AT_16]
        with tf.variable_scope("aspp"):
            branches = [slim.conv2d(features, self.ASPP_DEPTH, [1, 1], scope="conv_1x1")]
            branches += [self._conv3x3(features, self.ASPP_DEPTH, f"conv_3x3_{index}", rate=rate)
                         for index, rate in enumerate(rates, start=1)]
            pooled = tf.reduce_mean(features, [1, 2], keepdims=True)
            pooled = slim.conv2d(pooled, self.ASPP_DEPTH, [1, 1], scope="image_pooling")
            branches.append(tf.zeros_like(branches[0]) + pooled)  # broadcast over the map
            return slim.conv2d(tf.concat(branches, axis=-1), self.ASPP_DEPTH, [1, 1],
                               scope="project")

    def combine(self, upsampled, skip, stride):
        skip = slim.conv2d(skip, self.SKIP_DEPTH, [1, 1], scope="skip_reduce")
        net = tf.concat([upsampled, skip], axis=-1)
        net = self._conv3x3(net, self.DECODER_DEPTH, "decoder_conv_1")
        return self._conv3x3(net, self.DECODER_DEPTH, "decoder_conv_2")


ARCHS = {arch.NAME: arch for arch in (FcnArch, RefineFcnArch, LinkNetArch, UNetArch,
                                      DeepLabV3PlusArch)}
# Decoders whose skips --fcn16/--fcn8/--fcn4 choose.
FCN_FAMILY = tuple(name for name, arch in ARCHS.items() if arch.TAPS.from_fcn_flags)


def get_arch_class(name):
    try:
        return ARCHS[name]
    except KeyError:
        raise SegMentorError(
            f"unknown decoder '{name}'; choose one of: {', '.join(ARCHS)}") from None


def check_arch_settings(arch_name, net, output_stride=FEATURE_STRIDE, fcn16=False, fcn8=False,
                        fcn4=False):
    """SegMentorError (one line) if the decoder, encoder, output stride and FCN flags
    do not fit together; the scripts call it to reject flags before building."""
    _skip_strides(get_arch_class(arch_name), net, output_stride, fcn16, fcn8, fcn4)


def arch_from_settings(settings, number_of_classes, is_training):
    """The architecture a run was trained with, from its settings: a
    utils.run_settings.RunSettings (its basenet, extended_arch, fcn16, fcn8, fcn4,
    trainable_upsampling, weight_decay, batch_norm_decay, output_stride; runs saved
    before a key existed read it as that flag's default, e.g. output stride 32).
    """
    return get_arch_class(settings.extended_arch)(
        number_of_classes, is_training, net=settings.basenet, fcn16=settings.fcn16,
        fcn8=settings.fcn8, fcn4=settings.fcn4,
        trainable_upsampling=settings.trainable_upsampling,
        weight_decay=settings.weight_decay, batch_norm_decay=settings.batch_norm_decay,
        output_stride=settings.output_stride)


# --- Restoring a slim ImageNet checkpoint ---------------------------------------

def checkpoint_exists(path):
    """True for a checkpoint prefix with its .index (TF's V2 format) or a single-file V1 one."""
    return os.path.exists(path + ".index") or os.path.isfile(path)


def _stored_shapes(checkpoint_path):
    """{variable name: shape list} of a checkpoint; SegMentorError if unreadable."""
    try:
        return tf.train.NewCheckpointReader(checkpoint_path).get_variable_to_shape_map()
    except Exception as err:  # TF raises several error types for unreadable files
        raise SegMentorError(
            f"cannot read checkpoint {checkpoint_path}: {str(err).splitlines()[0]}") from None


def variable_mismatches(variables, stored_shapes):
    """What keeps a checkpoint from loading `variables` {name: variable}: at most three
    short phrases (the first misshaped variables, the count of missing ones); [] if none."""
    missing = [name for name in sorted(variables) if name not in stored_shapes]
    misshaped = [
        f"{name} has shape {stored_shapes[name]}, the network needs {var.shape.as_list()}"
        for name, var in sorted(variables.items())
        if name in stored_shapes and stored_shapes[name] != var.shape.as_list()]
    problems = misshaped[:2]
    if missing:
        problems.append(f"{len(missing)} of {len(variables)} variables missing, "
                        f"first {', '.join(missing[:2])}")
    return problems


def make_pretrained_restorer(arch, checkpoint_path):
    """Check `checkpoint_path` against `arch`'s feature extractor; return `restore(sess)`.

    Checks happen now, before any training starts: a missing file, an
    unreadable one, or one whose variables or shapes differ raise a
    SegMentorError naming the file and the first offending variables.
    `restore(sess)` loads the feature extractor (run it after the global
    initializer); decoder variables keep their initial values.
    """
    pretrained, _ = arch.get_pretrained_and_new_vars()
    if not checkpoint_exists(checkpoint_path):
        raise SegMentorError(
            f"pretrained checkpoint not found: {checkpoint_path} "
            f"(get it with `python -m utils.fetch_checkpoints {arch.net}`, point --modelspath "
            f"at its folder, or pass --scratch)")
    problems = variable_mismatches(pretrained, _stored_shapes(checkpoint_path))
    if problems:
        raise SegMentorError(
            f"checkpoint {checkpoint_path} does not fit {arch.net}: {'; '.join(problems)}; "
            f"is it the slim ImageNet checkpoint of {arch.net}?")
    saver = tf.train.Saver(var_list=pretrained)

    def restore(sess):
        saver.restore(sess, checkpoint_path)
    return restore


def make_run_restorer(arch, checkpoint_path):
    """Check a training run's checkpoint against `arch`; return (restore(sess), decoder_note).

    The encoder must be in it with the same shapes (else SegMentorError: a run of
    another encoder). The decoder is restored too when every one of its variables
    is there with the same shape (same decoder and class count); otherwise it keeps
    its initial values, and `decoder_note` says why. Only network weights are
    restored: no step counter, no optimizer state.
    """
    pretrained, new = arch.get_pretrained_and_new_vars()
    stored_shapes = _stored_shapes(checkpoint_path)
    problems = variable_mismatches(pretrained, stored_shapes)
    if problems:
        raise SegMentorError(f"{checkpoint_path} was not trained with --basenet {arch.net} "
                             f"({'; '.join(problems)}); start from a run of {arch.net}")
    decoder = {var.op.name: var for var in new}
    decoder_problems = variable_mismatches(decoder, stored_shapes)
    if decoder_problems:
        restored, note = pretrained, f"fresh ({'; '.join(decoder_problems)})"
    else:
        restored, note = {**pretrained, **decoder}, "restored"
    saver = tf.train.Saver(var_list=restored)

    def restore(sess):
        saver.restore(sess, checkpoint_path)
    return restore, note


# --- Statistics: parameters and multiply-accumulates ---------------------------

def _conv_macs(op):
    kernel_h, kernel_w, in_channels, _ = op.inputs[1].shape.as_list()
    return op.outputs[0].shape.num_elements() * kernel_h * kernel_w * in_channels


def _depthwise_macs(op):
    kernel_h, kernel_w, _, _ = op.inputs[1].shape.as_list()
    return op.outputs[0].shape.num_elements() * kernel_h * kernel_w


def _transposed_conv_macs(op):
    # Each input pixel scatters a whole [kh, kw, out_channels] kernel.
    kernel_h, kernel_w, out_channels, _ = op.inputs[1].shape.as_list()
    return op.inputs[2].shape.num_elements() * kernel_h * kernel_w * out_channels


def _matmul_macs(op):
    rows, inner = op.inputs[0].shape.as_list()
    return rows * inner * op.outputs[0].shape.as_list()[1]


# Multiply-accumulates per op type, from static shapes; other ops count as free.
_MACS_BY_OP_TYPE = {
    "Conv2D": _conv_macs,
    "DepthwiseConv2dNative": _depthwise_macs,
    "Conv2DBackpropInput": _transposed_conv_macs,
    "MatMul": _matmul_macs,
}


# Rows of the --stats table: the FCN depths (built with --extended_arch, an FCN-family
# class), then every decoder with its own taps.
STATS_DECODERS = tuple(DECODERS) + tuple(name for name in ARCHS if name not in FCN_FAMILY)


def network_stats(net, decoder, number_of_classes, pixels, arch_name="fcn",
                  output_stride=FEATURE_STRIDE):
    """(trainable parameters, multiply-accumulates) of one network on a pixels x pixels image.

    decoder: an FCN depth ('fcn16', built with the FCN-family class `arch_name`) or
    the name of a decoder with its own taps ('unet').
    """
    if decoder in DECODERS:
        arch_class, flags = get_arch_class(arch_name), decoder_flags(decoder)
    else:
        arch_class, flags = get_arch_class(decoder), {}
    with tf.Graph().as_default() as graph:
        images = tf.placeholder(tf.float32, [1, pixels, pixels, 3])
        arch = arch_class(number_of_classes, is_training=False, net=net,
                          output_stride=output_stride, **flags)
        arch.build_net(images)
        params = sum(v.shape.num_elements() for v in tf.trainable_variables())
        macs = sum(_MACS_BY_OP_TYPE[op.type](op) for op in graph.get_operations()
                   if op.type in _MACS_BY_OP_TYPE)
    return params, macs


def build_parser():
    parser = CheckedArgumentParser(
        description="Inspect the architectures. --stats prints parameters and "
                    "multiply-accumulates (GMACs) for every feature extractor x decoder.")
    parser.add_argument("--stats", action="store_true", help="print the statistics table")
    parser.add_argument("--nets", nargs="+", choices=list(FEATURE_EXTRACTORS),
                        default=list(FEATURE_EXTRACTORS), help="feature extractors to include")
    parser.add_argument("--decoders", nargs="+", choices=STATS_DECODERS,
                        default=list(STATS_DECODERS),
                        help="decoders to include: FCN depths and the decoders with their "
                             "own taps (default: all)")
    parser.add_argument("--extended_arch", choices=FCN_FAMILY, default="fcn",
                        help="FCN-family class of the fcn32..fcn4 rows (default: %(default)s)")
    parser.add_argument("--output_stride", type=int, choices=OUTPUT_STRIDES,
                        default=FEATURE_STRIDE,
                        help=f"encoder output stride; below {FEATURE_STRIDE} only for "
                             f"{', '.join(ATROUS_NETS)} (default: %(default)s)")
    parser.add_argument("--num_classes", type=int, default=21,
                        help="classes of the score layers (default: %(default)s, Pascal VOC)")
    parser.add_argument("--pixels", type=int, default=512,
                        help="side of the square input the MACs are counted on "
                             "(default: %(default)s)")
    return parser


def main(args):
    if not args.stats:
        build_parser().print_help()
        return
    if args.num_classes < 1 or args.pixels < FEATURE_STRIDE:
        raise SegMentorError(
            f"--num_classes must be >= 1 and --pixels >= {FEATURE_STRIDE} "
            f"(got {args.num_classes}, {args.pixels})")
    print(f"{'network':<14} {'decoder':<14} {'params (M)':>10} "
          f"{f'GMACs @{args.pixels}':>12} {'classes':>8}")
    for net in args.nets:
        for decoder in args.decoders:
            try:
                params, macs = network_stats(net, decoder, args.num_classes, args.pixels,
                                             args.extended_arch, args.output_stride)
            except SegMentorError as err:  # e.g. fcn16 at --output_stride 16: a row that
                # cannot exist says why, and the others are still printed
                print(f"{net:<14} {decoder:<14} {'-':>10} {'-':>12} {args.num_classes:>8}  "
                      f"({err})", flush=True)
                continue
            print(f"{net:<14} {decoder:<14} {params / 1e6:>10.2f} {macs / 1e9:>12.2f} "
                  f"{args.num_classes:>8}", flush=True)


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser()))
