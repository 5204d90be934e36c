"""The official slim checkpoints' variable lists (tests/reference/<net>.tsv).

Made from the official definitions (see /shared/reference in the project
brief): name and shape of every variable of the ImageNet classifier.
"""
import pathlib

REFERENCE_DIR = pathlib.Path(__file__).resolve().parent / "reference"

# The classifier head of each checkpoint: absent from the FCN feature extractors.
HEAD_PREFIXES = {
    "vgg_16": "vgg_16/fc8/",
    "resnet_v1_18": "resnet_v1_18/logits/",
    "resnet_v1_50": "resnet_v1_50/logits/",
    "inception_v1": "InceptionV1/Logits/",
    "mobilenet_v1": "MobilenetV1/Logits/",
    "mobilenet_v2": "MobilenetV2/Logits/",
}


def reference_variables(net):
    """{name: shape tuple} of the official checkpoint, head included."""
    lines = (REFERENCE_DIR / f"{net}.tsv").read_text().splitlines()
    assert lines[0] == "name\tshape"
    rows = (line.split("\t") for line in lines[1:] if line)
    return {name: tuple(int(d) for d in shape.split(",")) for name, shape in rows}


def feature_extractor_variables(net):
    """{name: shape tuple} of the official checkpoint without its classifier head."""
    return {name: shape for name, shape in reference_variables(net).items()
            if not name.startswith(HEAD_PREFIXES[net])}
