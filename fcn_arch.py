"""Fully convolutional segmentation networks: feature extractor + decoder.

`BaseFcnArch` is the decoder skeleton: decode the stride-32 features, then
(optionally) upsample x2 and combine with the stride-16, 8 and 4 feature maps,
then upsample to the input size. `FcnArch` fills the blocks in as the classic
FCN32/16/8/4 of Long et al. (2015), over any feature extractor of the
`FEATURE_EXTRACTORS` registry. `ARCHS` maps `--extended_arch` names to classes.

Usage:
    arch = FcnArch(number_of_classes=21, is_training=True, net='mobilenet_v1', fcn16=True)
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
from utils.augmentation import IMAGENET_MEAN_RGB
from utils.cli import CheckedArgumentParser
from utils.errors import SegMentorError, run_main
from utils.tfcompat import slim, tf
from utils.upsampling import upsample_bilinear

# Every feature extractor reduces the input 32 times; inputs are padded to a
# multiple of this so each stride-s map is exactly (H/s, W/s) and skips align.
FEATURE_STRIDE = 32
DECODER_SCOPE = "decoder"


# --- Preprocessing: what each family was trained on (RGB 0..255 in) ----------

def subtract_imagenet_mean(images):
    """VGG / ResNet-v1 slim checkpoints: mean-subtracted RGB in 0..255."""
    return images - tf.constant(IMAGENET_MEAN_RGB, dtype=images.dtype)


# torchvision's ImageNet statistics (RGB, 0..255 scale): the resnet_v1_18
# checkpoint is converted from PyTorch weights trained on inputs normalised so.
TORCHVISION_MEAN_RGB = (123.675, 116.28, 103.53)
TORCHVISION_STD_RGB = (58.395, 57.12, 57.375)


def normalize_per_channel(images):
    """resnet_v1_18 (converted from torchvision): per-channel mean / std."""
    return ((images - tf.constant(TORCHVISION_MEAN_RGB, dtype=images.dtype))
            / tf.constant(TORCHVISION_STD_RGB, dtype=images.dtype))


def scale_to_unit_range(images):
    """Inception / MobileNet slim checkpoints: RGB scaled to [-1, 1]."""
    return images / 127.5 - 1.0


@dataclasses.dataclass(frozen=True)
class FeatureExtractor:
    """Everything the decoder and the training script need to know about one encoder.

    build: `fn(images, is_training, num_classes=None, reuse=None)` -> (stride-32
        features, end_points keyed relative to `checkpoint_scope`).
    arg_scope: `fn(is_training, **overrides)` -> slim arg scope (our batch norm).
    checkpoint_scope: top variable scope, as in the official slim checkpoint.
    skip_end_points: end point tapped by the decoder at output stride 16, 8, 4.
    preprocess: float RGB 0..255 -> what the checkpoint was trained on.
    checkpoint_file: file name of the official ImageNet checkpoint in --modelspath.
    has_batch_norm: False for nets without batch norm (a decay means nothing there).
    """
    build: Callable
    arg_scope: Callable
    checkpoint_scope: str
    skip_end_points: Mapping[int, str]
    preprocess: Callable
    checkpoint_file: str
    has_batch_norm: bool = True


FEATURE_EXTRACTORS = {
    "vgg_16": FeatureExtractor(
        build=vgg.vgg_16, arg_scope=vgg.arg_scope, checkpoint_scope="vgg_16",
        skip_end_points={16: "pool4", 8: "pool3", 4: "pool2"},
        preprocess=subtract_imagenet_mean, checkpoint_file="vgg_16.ckpt",
        has_batch_norm=False),
    "resnet_v1_18": FeatureExtractor(
        build=resnet_v1.resnet_v1_18, arg_scope=resnet_v1.arg_scope,
        checkpoint_scope="resnet_v1_18",
        skip_end_points={16: "block3/unit_2/res_block_v1",
                         8: "block2/unit_2/res_block_v1",
                         4: "block1/unit_2/res_block_v1"},
        preprocess=normalize_per_channel, checkpoint_file="resnet_v1_18.ckpt"),
    "resnet_v1_50": FeatureExtractor(
        build=resnet_v1.resnet_v1_50, arg_scope=resnet_v1.arg_scope,
        checkpoint_scope="resnet_v1_50",
        skip_end_points={16: "block3/unit_5/bottleneck_v1",
                         8: "block2/unit_3/bottleneck_v1",
                         4: "block1/unit_2/bottleneck_v1"},
        preprocess=subtract_imagenet_mean, checkpoint_file="resnet_v1_50.ckpt"),
    "inception_v1": FeatureExtractor(
        build=inception_v1.inception_v1, arg_scope=inception_v1.arg_scope,
        checkpoint_scope="InceptionV1",
        skip_end_points={16: "Mixed_4f", 8: "Mixed_3c", 4: "Conv2d_2c_3x3"},
        preprocess=scale_to_unit_range, checkpoint_file="inception_v1.ckpt"),
    "mobilenet_v1": FeatureExtractor(
        build=mobilenet_v1.mobilenet_v1, arg_scope=mobilenet_v1.arg_scope,
        checkpoint_scope="MobilenetV1",
        skip_end_points={16: "Conv2d_11_pointwise", 8: "Conv2d_5_pointwise",
                         4: "Conv2d_3_pointwise"},
        preprocess=scale_to_unit_range, checkpoint_file="mobilenet_v1_1.0_224.ckpt"),
    "mobilenet_v2": FeatureExtractor(
        build=mobilenet_v2.mobilenet_v2, arg_scope=mobilenet_v2.arg_scope,
        checkpoint_scope="MobilenetV2",
        skip_end_points={16: "expanded_conv_12", 8: "expanded_conv_5",
                         4: "expanded_conv_2"},
        preprocess=scale_to_unit_range, checkpoint_file="mobilenet_v2_1.0_224.ckpt"),
}

# Decoder name -> output stride of its last combine (FCN16 = one skip, ...).
DECODERS = {"fcn32": 32, "fcn16": 16, "fcn8": 8, "fcn4": 4}


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


def _static_or_dynamic_dim(tensor, axis):
    """The static size of `axis` when the graph knows it, else a scalar tensor."""
    static = tensor.shape[axis]
    return static if static is not None else tf.shape(tensor)[axis]


def _pad_to_multiple(images, multiple):
    """Pad RGB [B, H, W, 3] at the bottom/right so H and W are multiples of `multiple`.

    The padding is the ImageNet mean colour, as the feeder pads its batches:
    the most neutral input for every checkpoint (zero after mean subtraction,
    close to zero after the other preprocessings).
    """
    height = _static_or_dynamic_dim(images, 1)
    width = _static_or_dynamic_dim(images, 2)
    pad_h = (-height) % multiple
    pad_w = (-width) % multiple
    mean = tf.constant(IMAGENET_MEAN_RGB, dtype=images.dtype)
    padded = tf.pad(images - mean, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]]) + mean
    return padded, height, width


class BaseFcnArch:
    """Decoder skeleton over a registry feature extractor.

    `build_net` calls, in order: `decode_32s`, then for FCN16 and finer
    `upsample_x2_32s` + `combine_16s`, for FCN8 and finer `upsample_x2_16s` +
    `combine_8s`, for FCN4 `upsample_x2_8s` + `combine_4s`, and finally
    `final_upsample`. A subclass changes the decoder by overriding two or three
    of these; the upsampling blocks default to bilinear transposed convolutions.
    """

    def __init__(self, number_of_classes, is_training, net="vgg_16", fcn16=False, fcn8=False,
                 fcn4=False, trainable_upsampling=False, weight_decay=None,
                 batch_norm_decay=None):
        self.number_of_classes = number_of_classes
        self.is_training = is_training
        self.net = net
        self.feature_extractor = get_feature_extractor(net)
        self.decoder = decoder_name(fcn16, fcn8, fcn4)
        self.output_stride = DECODERS[self.decoder]
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

    def decode_32s(self, features_32s):
        """Stride-32 features -> decoder state at stride 32."""
        raise NotImplementedError

    def combine_16s(self, upsampled, skip_16s):
        raise NotImplementedError

    def combine_8s(self, upsampled, skip_8s):
        raise NotImplementedError

    def combine_4s(self, upsampled, skip_4s):
        raise NotImplementedError

    def upsample_x2_32s(self, net):
        return self._upsample(net, 2, "upsample_32s_to_16s")

    def upsample_x2_16s(self, net):
        return self._upsample(net, 2, "upsample_16s_to_8s")

    def upsample_x2_8s(self, net):
        return self._upsample(net, 2, "upsample_8s_to_4s")

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

    def _upsample(self, net, factor, scope):
        return upsample_bilinear(net, factor, trainable=self.trainable_upsampling, scope=scope)

    # --- the fixed skeleton -----------------------------------------------------

    def build_net(self, images):
        """float32 RGB [B, H, W, 3] in 0..255 -> logits [B, H, W, number_of_classes]."""
        extractor = self.feature_extractor
        with tf.variable_scope(tf.get_variable_scope(), custom_getter=self._record_variable):
            padded, height, width = _pad_to_multiple(images, FEATURE_STRIDE)
            with slim.arg_scope(extractor.arg_scope(is_training=self.is_training,
                                                    **self.arg_scope_overrides)):
                features, end_points = extractor.build(extractor.preprocess(padded),
                                                       is_training=self.is_training)
                with tf.variable_scope(DECODER_SCOPE):
                    logits = self._decode(features, end_points)
        return logits[:, :height, :width, :]

    def _decode(self, features, end_points):
        taps = self.feature_extractor.skip_end_points
        net = self.decode_32s(features)
        if self.output_stride <= 16:
            net = self.combine_16s(self.upsample_x2_32s(net), end_points[taps[16]])
        if self.output_stride <= 8:
            net = self.combine_8s(self.upsample_x2_16s(net), end_points[taps[8]])
        if self.output_stride <= 4:
            net = self.combine_4s(self.upsample_x2_8s(net), end_points[taps[4]])
        return self.final_upsample(net, self.output_stride)

    def _record_variable(self, getter, name, *args, **kwargs):
        # A custom getter sees variables both when created and when reused by a
        # second tower, so every arch object knows exactly the variables it uses
        # (optimizer slots, made later, never show up here).
        variable = getter(name, *args, **kwargs)
        self._variables[variable.op.name] = variable
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
    """Classic FCN: 1x1 class scores at stride 32, plus scored skips added in.

    Skip score layers start at zero, so at step 0 FCN16/8/4 compute exactly
    FCN32 and training only adds detail the coarse head cannot give; this is
    the "staged" FCN training of the paper done in one run.
    """

    def decode_32s(self, features_32s):
        return self._score(features_32s, "score_32s", zero_init=False)

    def combine_16s(self, upsampled, skip_16s):
        return upsampled + self._score(skip_16s, "score_16s", zero_init=True)

    def combine_8s(self, upsampled, skip_8s):
        return upsampled + self._score(skip_8s, "score_8s", zero_init=True)

    def combine_4s(self, upsampled, skip_4s):
        return upsampled + self._score(skip_4s, "score_4s", zero_init=True)

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
    HEAD_DEPTH_32S = 256
    HEAD_DEPTH_SKIP = 64

    def decode_32s(self, features_32s):
        net = slim.conv2d(features_32s, self.HEAD_DEPTH_32S, [3, 3], scope="head_32s")
        return self._score(net, "score_32s", zero_init=False)

    def combine_16s(self, upsampled, skip_16s):
        return upsampled + self._refined_score(skip_16s, "16s")

    def combine_8s(self, upsampled, skip_8s):
        return upsampled + self._refined_score(skip_8s, "8s")

    def combine_4s(self, upsampled, skip_4s):
        return upsampled + self._refined_score(skip_4s, "4s")

    def _refined_score(self, skip, stride_name):
        net = slim.conv2d(skip, self.HEAD_DEPTH_SKIP, [3, 3], scope="head_" + stride_name)
        return self._score(net, "score_" + stride_name, zero_init=True)


ARCHS = {"fcn": FcnArch, "fcn_refine": RefineFcnArch}


def get_arch_class(name):
    try:
        return ARCHS[name]
    except KeyError:
        raise SegMentorError(
            f"unknown architecture '{name}'; choose one of: {', '.join(ARCHS)}") from None


def arch_from_runargs(runargs, number_of_classes, is_training):
    """The architecture a run was trained with, from its saved settings (runargs).

    Keys: basenet, extended_arch, fcn16, fcn8, fcn4, trainable_upsampling,
    weight_decay, batch_norm_decay; missing ones take the class defaults.
    """
    return get_arch_class(runargs.get("extended_arch", "fcn"))(
        number_of_classes, is_training, net=runargs["basenet"],
        fcn16=runargs.get("fcn16", False), fcn8=runargs.get("fcn8", False),
        fcn4=runargs.get("fcn4", False),
        trainable_upsampling=runargs.get("trainable_upsampling", False),
        weight_decay=runargs.get("weight_decay"),
        batch_norm_decay=runargs.get("batch_norm_decay"))


# --- Restoring a slim ImageNet checkpoint ---------------------------------------

def _checkpoint_exists(path):
    return os.path.exists(path + ".index") or os.path.isfile(path)


def make_pretrained_restorer(arch, checkpoint_path):
    """Check `checkpoint_path` against `arch`'s feature extractor; return `restore(sess)`.

    Checks happen now, before any training starts: a missing file, an
    unreadable one, or one whose variables or shapes differ raise a
    SegMentorError naming the file and the first offending variables.
    `restore(sess)` loads the feature extractor (run it after the global
    initializer); decoder variables keep their initial values.
    """
    pretrained, _ = arch.get_pretrained_and_new_vars()
    if not _checkpoint_exists(checkpoint_path):
        raise SegMentorError(
            f"pretrained checkpoint not found: {checkpoint_path} "
            f"(put the slim ImageNet checkpoint there, point --modelspath at its folder, "
            f"or pass --scratch)")
    try:
        reader = tf.train.NewCheckpointReader(checkpoint_path)
    except Exception as err:  # TF raises several error types for unreadable files
        raise SegMentorError(
            f"cannot read checkpoint {checkpoint_path}: {str(err).splitlines()[0]}") from None
    stored_shapes = reader.get_variable_to_shape_map()
    missing = [name for name in sorted(pretrained) if name not in stored_shapes]
    misshaped = [
        f"{name} has shape {stored_shapes[name]}, the network needs {var.shape.as_list()}"
        for name, var in sorted(pretrained.items())
        if name in stored_shapes and stored_shapes[name] != var.shape.as_list()]
    if missing or misshaped:
        problems = misshaped[:2]
        if missing:
            problems.append(f"{len(missing)} of {len(pretrained)} variables missing, "
                            f"first {', '.join(missing[:2])}")
        raise SegMentorError(
            f"checkpoint {checkpoint_path} does not fit {arch.net}: {'; '.join(problems)}; "
            f"is it the slim ImageNet checkpoint of {arch.net}?")
    saver = tf.train.Saver(var_list=pretrained)

    def restore(sess):
        saver.restore(sess, checkpoint_path)
    return restore


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


def network_stats(net, decoder, number_of_classes, pixels, arch_name="fcn"):
    """(trainable parameters, multiply-accumulates) of one network on a pixels x pixels image."""
    with tf.Graph().as_default() as graph:
        images = tf.placeholder(tf.float32, [1, pixels, pixels, 3])
        arch = get_arch_class(arch_name)(number_of_classes, is_training=False, net=net,
                                         **decoder_flags(decoder))
        arch.build_net(images)
        params = sum(v.shape.num_elements() for v in tf.trainable_variables())
        macs = sum(_MACS_BY_OP_TYPE[op.type](op) for op in graph.get_operations()
                   if op.type in _MACS_BY_OP_TYPE)
    return params, macs


def build_parser():
    parser = CheckedArgumentParser(
        description="Inspect the FCN architectures. --stats prints parameters and "
                    "multiply-accumulates (GMACs) for every feature extractor x decoder.")
    parser.add_argument("--stats", action="store_true", help="print the statistics table")
    parser.add_argument("--nets", nargs="+", choices=list(FEATURE_EXTRACTORS),
                        default=list(FEATURE_EXTRACTORS), help="feature extractors to include")
    parser.add_argument("--decoders", nargs="+", choices=list(DECODERS),
                        default=list(DECODERS), help="decoders to include")
    parser.add_argument("--extended_arch", choices=list(ARCHS), default="fcn",
                        help="architecture class (default: %(default)s)")
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
    print(f"{'network':<14} {'decoder':<8} {'params (M)':>10} "
          f"{f'GMACs @{args.pixels}':>12} {'classes':>8}")
    for net in args.nets:
        for decoder in args.decoders:
            params, macs = network_stats(net, decoder, args.num_classes, args.pixels,
                                         args.extended_arch)
            print(f"{net:<14} {decoder:<8} {params / 1e6:>10.2f} {macs / 1e9:>12.2f} "
                  f"{args.num_classes:>8}", flush=True)


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser()))
