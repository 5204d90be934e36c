"""Convert torchvision ImageNet weights into a slim checkpoint of a seg-mentor network.

    python -m utils.convert_torchvision --net resnet_v1_18 --src resnet18.safetensors \
        --out models/resnet_v1_18.ckpt

torchvision's ResNet-18 (`resnet18-f37072fd.pth`, or the same tensors saved as
.safetensors) becomes `nets/resnet_v1.py`'s resnet_v1_18: parameter names
mapped by `TORCHVISION_NAMES[net]`, convolution kernels from PyTorch's
[out, in, h, w] to TensorFlow's [h, w, in, out], batch-norm weight / bias /
running_mean / running_var to gamma / beta / moving_mean / moving_variance,
the classifier `fc` and `num_batches_tracked` dropped. resnet_v1_18 pads like
torchvision and its preprocessing is torchvision's, so the converted network
computes torchvision's features (tests/test_convert_torchvision.py).

.safetensors is read with numpy alone (`read_safetensors`); .pth needs PyTorch,
which seg-mentor never installs. The checkpoint is written to a hidden staging
folder and moved into place with its `.index` last, so a killed conversion
leaves no file that looks complete.
"""
if __package__ in (None, ""):  # run as `python utils/...`: find `utils` at the repo root,
    # as `python -m` does, not in this file's folder (sys.path[0]), whose modules shadow others
    import pathlib, sys; sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])

import json
import os
import re
import shutil
import struct
import sys
import tempfile

import numpy as np

from utils.tfcompat import tf  # first: it quiets TensorFlow's import-time logging
import fcn_arch  # noqa: E402
from utils.cli import CheckedArgumentParser  # noqa: E402
from utils.errors import SegMentorError, first_line, run_main  # noqa: E402
from utils.fetch_checkpoints import CHECK_PIXELS, MODELS_DIR, install_order  # noqa: E402
from utils.files import PARTIAL_SUFFIX  # noqa: E402

# --- Reading a state dict ---------------------------------------------------------------

# safetensors dtype names -> numpy (little-endian); BF16 is widened to float32 by hand.
_SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4",
                       "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}
_HEADER_LENGTH_BYTES = 8


def read_safetensors(path):
    """{name: numpy array} of a .safetensors file, without PyTorch.

    The format: an 8-byte little-endian header length, a JSON header
    {name: {dtype, shape, data_offsets: [begin, end]}} (plus '__metadata__'),
    then the raw buffer the offsets point into.
    """
    try:
        with open(path, "rb") as f:
            (header_length,) = struct.unpack("<Q", f.read(_HEADER_LENGTH_BYTES))
            header = json.loads(f.read(header_length))
            buffer = f.read()
    except (OSError, struct.error, ValueError) as err:
        raise SegMentorError(f"cannot read {path} as .safetensors ({first_line(err)})") from None
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        raw = buffer[begin:end]
        if entry["dtype"] == "BF16":  # the top half of a float32
            value = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        elif entry["dtype"] in _SAFETENSORS_DTYPES:
            value = np.frombuffer(raw, _SAFETENSORS_DTYPES[entry["dtype"]])
        else:
            raise SegMentorError(f"{path}: tensor {name} has dtype {entry['dtype']}, which "
                                 f"seg-mentor cannot read")
        tensors[name] = value.reshape(entry["shape"])
    return tensors


def read_pth(path):
    """{name: numpy array} of a PyTorch state dict file (needs PyTorch)."""
    try:
        import torch
    except ImportError:
        raise SegMentorError(
            f"reading {path} needs PyTorch, which seg-mentor does not install: pip install "
            f"torch, or pass the same weights as .safetensors (read without PyTorch)") from None
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file
        raise SegMentorError(f"cannot read {path} as a PyTorch state dict "
                             f"({first_line(err)})") from None
    return {name: value.detach().float().numpy() if value.is_floating_point()
            else value.numpy() for name, value in state_dict.items()}


READERS = {".safetensors": read_safetensors, ".pth": read_pth, ".pt": read_pth}


def read_state_dict(path):
    extension = os.path.splitext(path)[1].lower()
    if extension not in READERS:
        raise SegMentorError(f"{path}: unknown weights format '{extension}'; give a "
                             f"{' or '.join(READERS)} file")
    if not os.path.isfile(path):
        raise SegMentorError(f"{path} not found")
    return READERS[extension](path)


# --- Names and layouts --------------------------------------------------------------------

_BATCH_NORM_NAMES = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
                     "running_var": "moving_variance"}
# Parameters torchvision has and the FCN feature extractor does not.
_DROPPED = re.compile(r"^fc\.|\.num_batches_tracked$")


def _resnet_v1_18_name(name):
    """torchvision ResNet-18 parameter name -> resnet_v1_18 variable name (None: unknown).

    conv1 / bn1 -> conv1/weights, conv1/BatchNorm/*; layerL.i.convK / bnK ->
    blockL/unit_<i+1>/res_block_v1/convK/...; layerL.i.downsample.0 / .1 -> .../shortcut/...
    """
    unit = r"layer(?P<block>[1-4])\.(?P<unit>\d+)\."
    patterns = (
        (r"conv1\.weight", lambda m: "conv1/weights"),
        (r"bn1\.(?P<bn>\w+)", lambda m: f"conv1/BatchNorm/{_BATCH_NORM_NAMES[m['bn']]}"),
        (unit + r"conv(?P<k>[12])\.weight", lambda m: _unit(m) + f"conv{m['k']}/weights"),
        (unit + r"bn(?P<k>[12])\.(?P<bn>\w+)",
         lambda m: _unit(m) + f"conv{m['k']}/BatchNorm/{_BATCH_NORM_NAMES[m['bn']]}"),
        (unit + r"downsample\.0\.weight", lambda m: _unit(m) + "shortcut/weights"),
        (unit + r"downsample\.1\.(?P<bn>\w+)",
         lambda m: _unit(m) + f"shortcut/BatchNorm/{_BATCH_NORM_NAMES[m['bn']]}"),
    )
    for pattern, slim_name in patterns:
        match = re.fullmatch(pattern, name)
        if match and match.groupdict().get("bn", "weight") in _BATCH_NORM_NAMES:
            return "resnet_v1_18/" + slim_name(match)
    return None


def _unit(match):
    return f"block{match['block']}/unit_{int(match['unit']) + 1}/res_block_v1/"


# Network -> its torchvision parameter-name mapping.
TORCHVISION_NAMES = {"resnet_v1_18": _resnet_v1_18_name}


def to_tensorflow_layout(value):
    """PyTorch conv kernel [out, in, h, w] -> TensorFlow [h, w, in, out]; vectors unchanged."""
    return np.transpose(value, (2, 3, 1, 0)) if value.ndim == 4 else value


def slim_variables(net, state_dict, source="the weights"):
    """{slim variable name: float32 array in TF layout} from a torchvision state dict;
    SegMentorError naming the first parameters that have no place."""
    to_slim_name = TORCHVISION_NAMES[net]
    converted, unknown = {}, []
    for name, value in state_dict.items():
        if _DROPPED.search(name):
            continue
        slim_name = to_slim_name(name)
        if slim_name is None:
            unknown.append(name)
        else:
            converted[slim_name] = to_tensorflow_layout(np.asarray(value, np.float32))
    if unknown:
        raise SegMentorError(f"{source} has {len(unknown)} parameters that torchvision's "
                             f"{net} does not, first {', '.join(unknown[:2])}: is it that "
                             f"network's state dict?")
    return converted


# --- Writing the checkpoint ---------------------------------------------------------------

def write_checkpoint(net, variables, out, source="the weights"):
    """Save `variables` {slim name: value} as `net`'s feature-extractor checkpoint `out`,
    after checking that they are exactly the network's variables with its shapes."""
    with tf.Graph().as_default():
        arch = fcn_arch.FcnArch(number_of_classes=2, is_training=False, net=net)
        arch.build_net(tf.placeholder(tf.float32, [1, CHECK_PIXELS, CHECK_PIXELS, 3]))
        pretrained, _ = arch.get_pretrained_and_new_vars()
        missing = sorted(set(pretrained) - set(variables))
        misshaped = [f"{name} has shape {list(variables[name].shape)}, the network needs "
                     f"{var.shape.as_list()}" for name, var in sorted(pretrained.items())
                     if name in variables and list(variables[name].shape) != var.shape.as_list()]
        if missing or misshaped:
            problems = misshaped[:2] + ([f"{len(missing)} of {len(pretrained)} variables "
                                         f"missing, first {', '.join(missing[:2])}"]
                                        if missing else [])
            raise SegMentorError(f"{source} does not fit {net}: {'; '.join(problems)}")
        out_dir = os.path.dirname(os.path.abspath(out))
        os.makedirs(out_dir, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", suffix=PARTIAL_SUFFIX,
                                   dir=out_dir)
        try:
            with tf.Session() as sess:
                for name, var in pretrained.items():
                    var.load(variables[name], sess)
                tf.train.Saver(var_list=pretrained).save(
                    sess, os.path.join(staging, os.path.basename(out)), write_meta_graph=False,
                    write_state=False)
            for name in install_order(os.listdir(staging)):
                os.replace(os.path.join(staging, name), os.path.join(out_dir, name))
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def convert(net, src, out):
    write_checkpoint(net, slim_variables(net, read_state_dict(src), src), out, src)


def build_parser():
    parser = CheckedArgumentParser(
        prog="python -m utils.convert_torchvision",
        description="Convert torchvision ImageNet weights (.safetensors without PyTorch, .pth "
                    "with it) into the slim checkpoint fcn_train.py starts from.")
    parser.add_argument("--net", choices=list(TORCHVISION_NAMES), default="resnet_v1_18",
                        help="seg-mentor network to convert to (default: %(default)s)")
    parser.add_argument("--src", required=True,
                        help="torchvision state dict: .safetensors, or .pth (needs PyTorch)")
    parser.add_argument("--out", default=None,
                        help="checkpoint prefix to write (default: the file fcn_train.py looks "
                             "for in models/, e.g. models/resnet_v1_18.ckpt)")
    return parser


def main(args):
    out = args.out or os.path.join(MODELS_DIR,
                                   fcn_arch.FEATURE_EXTRACTORS[args.net].checkpoint_file)
    convert(args.net, args.src, out)
    print(f"{args.src} -> {out} ({args.net})")


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser()))
