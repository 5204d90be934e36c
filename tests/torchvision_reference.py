"""torchvision's ResNet-18 stride-32 features, in a process of its own.

Run by tests/test_convert_torchvision.py with a Python that has PyTorch and
torchvision (and no TensorFlow imported: both in one process can crash):

    python tests/torchvision_reference.py IN.npz OUT.npy

IN.npz holds the state dict's arrays under their torchvision names, plus
`image__` (RGB 0..255, [1, H, W, 3]) and `mean__` / `std__` (per channel,
0..255 scale). OUT.npy gets the output of layer4 as [1, H/32, W/32, 512].
"""
import sys

import numpy as np
import torch
import torchvision

EXTRA_KEYS = ("image__", "mean__", "std__")


def main(in_path, out_path):
    arrays = dict(np.load(in_path))
    image, mean, std = (arrays.pop(key) for key in EXTRA_KEYS)
    model = torchvision.models.resnet18(weights=None).eval()
    model.load_state_dict({name: torch.from_numpy(value) for name, value in arrays.items()})
    with torch.no_grad():
        x = torch.from_numpy(((image - mean) / std).transpose(0, 3, 1, 2).copy())
        for layer in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            x = getattr(model, layer)(x)
    np.save(out_path, x.numpy().transpose(0, 2, 3, 1))


if __name__ == "__main__":
    main(*sys.argv[1:])
