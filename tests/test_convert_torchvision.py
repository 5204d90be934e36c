"""utils/convert_torchvision.py: torchvision ResNet-18 weights -> resnet_v1_18's slim checkpoint.

A torchvision-layout state dict of random values, made here and written as
.safetensors (no PyTorch needed), must land in the right variables with the
right layout. Where PyTorch and torchvision are installed, the converted
network must also compute torchvision's features (skipped otherwise; PyTorch
is never a dependency of seg-mentor; tests/torchvision_reference.py computes
torchvision's side in its own process, with the Python named by
$SEGMENTOR_TORCH_PYTHON, default this one).
"""
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fcn_arch
from nets import preprocessing
from reference_lists import feature_extractor_variables
from utils import convert_torchvision
from utils.errors import EXIT_USER_ERROR, run_main
from utils.tfcompat import tf

NET = "resnet_v1_18"
# torchvision's ResNet-18: (layer, output channels, stride of its first unit); 2 units each.
TORCHVISION_LAYERS = ((1, 64, 1), (2, 128, 2), (3, 256, 2), (4, 512, 2))
BN_STATS = ("weight", "bias", "running_mean", "running_var")
# The torchvision side runs in a process of its own (PyTorch beside TensorFlow can crash),
# by this Python: one with PyTorch and torchvision (PyTorch is never a seg-mentor dependency).
TORCH_PYTHON_ENV = "SEGMENTOR_TORCH_PYTHON"
TORCH_PYTHON = os.environ.get(TORCH_PYTHON_ENV, sys.executable)


def torchvision_resnet18_state_dict(rng):
    """A state dict with torchvision's resnet18 names and shapes ([out, in, h, w] kernels),
    random values, positive running variances; fc and num_batches_tracked included."""
    shapes = {"conv1.weight": (64, 3, 7, 7), **{f"bn1.{s}": (64,) for s in BN_STATS}}
    depth_in = 64
    for layer, depth, stride in TORCHVISION_LAYERS:
        for unit in range(2):
            prefix = f"layer{layer}.{unit}."
            shapes[prefix + "conv1.weight"] = (depth, depth_in if unit == 0 else depth, 3, 3)
            shapes[prefix + "conv2.weight"] = (depth, depth, 3, 3)
            for k in (1, 2):
                shapes.update({f"{prefix}bn{k}.{s}": (depth,) for s in BN_STATS})
            if unit == 0 and (stride != 1 or depth_in != depth):
                shapes[prefix + "downsample.0.weight"] = (depth, depth_in, 1, 1)
                shapes.update({f"{prefix}downsample.1.{s}": (depth,) for s in BN_STATS})
        depth_in = depth
    shapes.update({"fc.weight": (1000, 512), "fc.bias": (1000,)})
    state_dict = {name: rng.standard_normal(shape).astype(np.float32)
                  for name, shape in shapes.items()}
    for name in state_dict:
        if name.endswith("running_var"):
            state_dict[name] = rng.uniform(0.5, 2.0, shapes[name]).astype(np.float32)
        if name.endswith("bn1.weight") or "bn2.weight" in name:
            state_dict[name] = rng.uniform(0.5, 1.5, shapes[name]).astype(np.float32)
    state_dict.update({name[:-len("running_var")] + "num_batches_tracked": np.array(7, np.int64)
                       for name in shapes if name.endswith("running_var")})
    return state_dict


def write_safetensors(path, tensors):
    """The .safetensors layout, by hand: 8-byte little-endian header length, JSON, buffer."""
    dtypes = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64"}
    header, chunks, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, value in tensors.items():
        data = np.ascontiguousarray(value).tobytes()
        header[name] = {"dtype": dtypes[value.dtype], "shape": list(value.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    header_bytes = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(header_bytes)) + header_bytes + b"".join(chunks))


def convert(capsys, *argv):
    code = run_main(convert_torchvision.main, convert_torchvision.build_parser(), list(argv))
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.fixture(scope="module")
def state_dict():
    return torchvision_resnet18_state_dict(np.random.default_rng(0))


def test_safetensors_lands_in_the_right_variables_with_the_right_layout(tmp_path, state_dict,
                                                                        capsys):
    src = tmp_path / "resnet18.safetensors"
    write_safetensors(src, state_dict)
    out = tmp_path / "models" / "resnet_v1_18.ckpt"
    code, err = convert(capsys, "--net", NET, "--src", str(src), "--out", str(out))
    assert code == 0, err
    reader = tf.train.NewCheckpointReader(str(out))
    stored = reader.get_variable_to_shape_map()
    assert {name: tuple(shape) for name, shape in stored.items()} == \
        feature_extractor_variables(NET)  # fc dropped, every variable there
    unit = "resnet_v1_18/block2/unit_1/res_block_v1/"
    expected = {  # torchvision name -> (slim name, layout)
        "conv1.weight": ("resnet_v1_18/conv1/weights", (2, 3, 1, 0)),
        "bn1.running_var": ("resnet_v1_18/conv1/BatchNorm/moving_variance", None),
        "layer2.0.conv1.weight": (unit + "conv1/weights", (2, 3, 1, 0)),
        "layer2.0.bn2.weight": (unit + "conv2/BatchNorm/gamma", None),
        "layer2.0.bn2.bias": (unit + "conv2/BatchNorm/beta", None),
        "layer2.0.bn1.running_mean": (unit + "conv1/BatchNorm/moving_mean", None),
        "layer2.0.downsample.0.weight": (unit + "shortcut/weights", (2, 3, 1, 0)),
        "layer2.0.downsample.1.running_var": (unit + "shortcut/BatchNorm/moving_variance",
                                              None),
        "layer4.1.conv2.weight": ("resnet_v1_18/block4/unit_2/res_block_v1/conv2/weights",
                                  (2, 3, 1, 0)),
    }
    for torch_name, (slim_name, layout) in expected.items():
        value = state_dict[torch_name]
        np.testing.assert_array_equal(
            reader.get_tensor(slim_name), np.transpose(value, layout) if layout else value)
    assert not list(out.parent.glob(".*"))  # no staging folder left


def test_bad_sources_get_one_line(tmp_path, state_dict, capsys):
    out = str(tmp_path / "out.ckpt")
    partial = dict(state_dict)
    del partial["layer3.1.bn2.running_mean"]
    write_safetensors(tmp_path / "partial.safetensors", partial)
    extra = dict(state_dict, **{"layer5.0.conv1.weight": np.zeros((1, 1, 1, 1), np.float32)})
    write_safetensors(tmp_path / "extra.safetensors", extra)
    (tmp_path / "weights.npz").write_bytes(b"")
    (tmp_path / "broken.safetensors").write_bytes(b"\x01\x02")
    cases = {
        "partial.safetensors": "1 of 100 variables missing, first "
                               "resnet_v1_18/block3/unit_2/res_block_v1/conv2/BatchNorm/moving_mean",
        "extra.safetensors": "parameters that torchvision's resnet_v1_18 does not, first "
                             "layer5.0.conv1.weight",
        "weights.npz": "unknown weights format '.npz'",
        "broken.safetensors": "cannot read",
        "absent.safetensors": "not found",
    }
    for name, message in cases.items():
        code, err = convert(capsys, "--src", str(tmp_path / name), "--out", out)
        assert code == EXIT_USER_ERROR and len(err) == 1, (name, err)
        assert message in err[0], (name, err[0])
    assert list(tmp_path.glob("out.ckpt*")) == []


def test_pth_without_pytorch_is_one_line(tmp_path, capsys):
    try:
        import torch  # noqa: F401
        pytest.skip("PyTorch is installed here")
    except ImportError:
        pass
    (tmp_path / "resnet18.pth").write_bytes(b"not read")
    code, err = convert(capsys, "--src", str(tmp_path / "resnet18.pth"))
    assert code == EXIT_USER_ERROR and len(err) == 1
    assert "needs PyTorch" in err[0] and ".safetensors" in err[0]


def seg_mentor_features(variables, image):
    """resnet_v1_18 stride-32 features [1, H/32, W/32, 512] (inference mode) of an RGB
    0..255 image [1, H, W, 3], preprocessed as fcn_arch does, with `variables` loaded."""
    extractor = fcn_arch.FEATURE_EXTRACTORS[NET]
    with tf.Graph().as_default():
        images = tf.placeholder(tf.float32, image.shape)
        with fcn_arch.slim.arg_scope(extractor.arg_scope(is_training=False)):
            features, _ = extractor.build(extractor.preprocess(images), is_training=False)
        with tf.Session() as sess:
            for var in tf.global_variables():
                var.load(variables[var.op.name], sess)
            return sess.run(features, {images: image})


def test_pool1_pads_one_pixel_on_every_side_as_torchvision():
    """Without PyTorch: pool1 = 3x3/2 max-pool of conv1 padded by 1 on every side (TF's
    SAME would pad the bottom/right only, shifting every later map by one pixel)."""
    extractor = fcn_arch.FEATURE_EXTRACTORS[NET]
    image = np.random.default_rng(2).uniform(-2, 2, (1, 64, 96, 3)).astype(np.float32)
    with tf.Graph().as_default():
        with fcn_arch.slim.arg_scope(extractor.arg_scope(is_training=False)):
            _, end_points = extractor.build(tf.constant(image), is_training=False)
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            conv1, pool1 = sess.run([end_points["conv1"], end_points["pool1"]])
    padded = np.pad(conv1, [(0, 0), (1, 1), (1, 1), (0, 0)], constant_values=-np.inf)
    expected = np.stack([np.stack([padded[0, 2 * i:2 * i + 3, 2 * j:2 * j + 3].max(axis=(0, 1))
                                   for j in range(conv1.shape[2] // 2)])
                         for i in range(conv1.shape[1] // 2)])[None]
    assert pool1.shape == (1, 16, 24, 64)
    np.testing.assert_array_equal(pool1, expected)


@pytest.mark.slow
def test_converted_network_computes_torchvision_features(state_dict, tmp_path):
    """Random weights with non-trivial batch-norm statistics, one 224x288 image."""
    if subprocess.run([TORCH_PYTHON, "-c", "import torch, torchvision"],
                      capture_output=True).returncode != 0:
        pytest.skip(f"no PyTorch and torchvision for {TORCH_PYTHON} (set {TORCH_PYTHON_ENV})")
    image = np.random.default_rng(1).uniform(0, 255, (1, 224, 288, 3)).astype(np.float32)
    np.savez(tmp_path / "in.npz", image__=image,
             mean__=np.array(preprocessing.TORCHVISION_MEAN_RGB, np.float32),
             std__=np.array(preprocessing.TORCHVISION_STD_RGB, np.float32), **state_dict)
    subprocess.run([TORCH_PYTHON, str(Path(__file__).with_name("torchvision_reference.py")),
                    str(tmp_path / "in.npz"), str(tmp_path / "out.npy")], check=True)
    expected = np.load(tmp_path / "out.npy")
    ours = seg_mentor_features(convert_torchvision.slim_variables(NET, state_dict), image)
    assert ours.shape == expected.shape == (1, 7, 9, 512)
    relative = np.abs(ours - expected).max() / np.abs(expected).max()
    print(f"max |seg-mentor - torchvision| / max |torchvision| = {relative:.2e}")
    assert relative < 1e-4, relative
