"""The FCN16 training step of utils/train_bench.py, written in PyTorch eager (torchvision
backbones), in a process of its own: benchmarks/torch_compare.py drives it.

    $SEGMENTOR_TORCH_PYTHON benchmarks/torch_fcn16.py --pixels 256 --batch_size 8 --num_classes 11
    stdin:  NET STEPS WARMUP        e.g. "mobilenet_v2 20 3"   (one request per line)
    stdout: {"net": ..., "img_s": ..., "macs": ..., ...}      (one JSON line per request)

Same work as the TensorFlow graph (the same multiply-accumulates, which both report):
the backbone (ResNet-50 with slim's strides) through its last stride-32 layer, a
1x1 score layer there and one on the stride-16 features (zero at start, as ours),
bilinear x2, sum, bilinear to the input size, pixel cross-entropy ignoring label 255,
Adam; a constant random batch in memory. torch is imported only in main(), so the
comparison script can read BACKBONES without it (seg-mentor never imports PyTorch).
"""
if __package__ in (None, ""):  # run as `python benchmarks/...`: find `utils` at the repo root
    import pathlib, sys; sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])

import argparse
import json
import sys
import time

from utils.labels import IGNORE_LABEL  # plain Python: no TensorFlow in PyTorch's process
LEARNRATE = 1e-4  # as utils/train_bench.py: small, so timed steps never diverge


def _mobilenet_v2(torchvision):
    """Up to features[13] (expanded_conv_12 in slim names, 96 ch at stride 16), then the rest
    through the 1280-channel Conv_1 at stride 32: our mobilenet_v2 FCN16's taps."""
    features = torchvision.models.mobilenet_v2(weights=None).features
    return features[:14], features[14:], 96, 1280


def _resnet50(torchvision):
    """With slim's strides (below): through layer3's fifth unit (1024 ch at stride 16, slim
    block3/unit_5's output), then layer3's strided last unit and layer4 (2048 ch at stride
    32): our resnet_v1_50 FCN16's taps."""
    import torch.nn as nn
    net = _strides_as_slim(torchvision.models.resnet50(weights=None))
    to_16 = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2,
                          net.layer3[:-1])
    return to_16, nn.Sequential(net.layer3[-1], net.layer4), 1024, 2048


def _strides_as_slim(resnet):
    """torchvision's ResNet-50 halves the resolution in the first unit of layer2-4 (its 3x3
    conv and projection shortcut strided); slim's resnet_v1_50 does it in the last unit of
    block1-3 (the 3x3 conv strided, the identity subsampled by a 1x1 max pool), so fewer
    units run at the larger size: 4.55 GMACs at 256 px against torchvision's 5.34. Moved
    to slim's places, both sides do the same work (torch_compare prints both counts)."""
    import torch.nn as nn
    layers = (resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4)
    for layer in layers[1:]:
        layer[0].conv2.stride = (1, 1)
        layer[0].downsample[0].stride = (1, 1)
    for layer in layers[:-1]:
        layer[-1].conv2.stride = (2, 2)
        layer[-1].downsample = nn.MaxPool2d(kernel_size=1, stride=2)
    return resnet


def conv_macs(model, pixels):
    """Multiply-accumulates of the convolutions in one forward pass of one image, counted
    from the output shapes as fcn_arch.network_stats counts the TensorFlow graph's."""
    import torch
    total = 0

    def count(conv, _inputs, output):
        nonlocal total
        total += (output[0].numel() * conv.in_channels // conv.groups
                  * conv.kernel_size[0] * conv.kernel_size[1])

    hooks = [module.register_forward_hook(count) for module in model.modules()
             if isinstance(module, torch.nn.Conv2d)]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, pixels, pixels))
    model.train()
    for hook in hooks:
        hook.remove()
    return total


# seg-mentor's --basenet name -> fn(torchvision) -> (to stride 16, 16 to 32, channels at 16, at 32)
BACKBONES = {"mobilenet_v2": _mobilenet_v2, "resnet_v1_50": _resnet50}


def fcn16(net, num_classes):
    import torch.nn as nn
    import torch.nn.functional as F
    import torchvision

    class FCN16(nn.Module):
        def __init__(self):
            super().__init__()
            self.to_16, self.to_32, channels_16, channels_32 = BACKBONES[net](torchvision)
            self.score_32 = nn.Conv2d(channels_32, num_classes, 1)
            self.score_16 = nn.Conv2d(channels_16, num_classes, 1)
            nn.init.zeros_(self.score_16.weight)  # FCN16 starts equal to FCN32, as ours
            nn.init.zeros_(self.score_16.bias)

        def forward(self, images):
            features_16 = self.to_16(images)
            scores = self.score_32(self.to_32(features_16))
            scores = F.interpolate(scores, size=features_16.shape[-2:], mode="bilinear",
                                   align_corners=False) + self.score_16(features_16)
            return F.interpolate(scores, size=images.shape[-2:], mode="bilinear",
                                 align_corners=False)

    return FCN16()


def main():
    parser = argparse.ArgumentParser(description="PyTorch FCN16 training-step worker "
                                                 "(driven by benchmarks/torch_compare.py)")
    parser.add_argument("--pixels", type=int, required=True, help="square input side")
    parser.add_argument("--batch_size", type=int, required=True, help="images per step")
    parser.add_argument("--num_classes", type=int, required=True, help="score channels")
    args = parser.parse_args()
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    images = torch.rand(args.batch_size, 3, args.pixels, args.pixels) * 255
    labels = torch.randint(0, args.num_classes, (args.batch_size, args.pixels, args.pixels))
    models = {}
    for line in sys.stdin:
        net, steps, warmup = line.split()
        if net not in models:
            model = fcn16(net, args.num_classes).train()
            models[net] = (model, torch.optim.Adam(model.parameters(), lr=LEARNRATE),
                           conv_macs(model, args.pixels))
        model, optimizer, macs = models[net]

        def step():
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(images), labels, ignore_index=IGNORE_LABEL)
            loss.backward()
            optimizer.step()
            return loss.item()

        for _ in range(int(warmup)):
            step()
        started = time.perf_counter()
        for _ in range(int(steps)):
            loss = step()
        secs = (time.perf_counter() - started) / int(steps)
        print(json.dumps(dict(net=net, img_s=args.batch_size / secs, loss=loss, macs=macs,
                              threads=torch.get_num_threads(), torch=torch.__version__)),
              flush=True)


if __name__ == "__main__":
    main()
