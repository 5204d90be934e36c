"""benchmarks/torch_compare.py: without PyTorch one line says so; with it (a Python named
by $SEGMENTOR_TORCH_PYTHON, skipped otherwise) a 1-step tiny comparison prints both sides,
each doing the same multiply-accumulates."""
import os
import re
import subprocess

import pytest

import fcn_arch
from benchmarks import torch_compare
from benchmarks.torch_fcn16 import BACKBONES
from printed_ratio import agrees_with_rounded_figures
from utils.datasets import DATASETS
from utils.errors import EXIT_USER_ERROR, run_main
from utils.train_bench import BENCH_DATASET, DECODER

TORCH_PYTHON = os.environ.get(torch_compare.TORCH_PYTHON_ENV)


def has_torch(python):
    return bool(python) and subprocess.run(
        [python, "-c", "import torch, torchvision"], capture_output=True).returncode == 0


def test_without_a_pytorch_python_it_fails_in_one_line(monkeypatch, capsys):
    monkeypatch.delenv(torch_compare.TORCH_PYTHON_ENV, raising=False)
    assert run_main(torch_compare.main, torch_compare.build_parser(), []) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "PyTorch unavailable: set SEGMENTOR_TORCH_PYTHON" in err


@pytest.mark.parametrize("python, reason", [
    ("/nonexistent/python", "cannot run"),
    ("false", "cannot import torch and torchvision")])  # a program that fails the probe
def test_a_python_without_torch_fails_in_one_line(monkeypatch, capsys, python, reason):
    monkeypatch.setenv(torch_compare.TORCH_PYTHON_ENV, python)
    assert run_main(torch_compare.main, torch_compare.build_parser(), []) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{python} {reason}" in err


@pytest.mark.slow  # builds both frameworks' networks
@pytest.mark.skipif(not has_torch(TORCH_PYTHON),
                    reason="no PyTorch: set SEGMENTOR_TORCH_PYTHON to a Python with torch")
def test_a_one_step_comparison_prints_both_rates_their_ratio_and_equal_work(capsys):
    nets = ["mobilenet_v2", "resnet_v1_50"]
    argv = ["--nets", *nets, "--pixels", "64", "--batch_size", "1", "--steps", "1",
            "--rounds", "1"]
    assert run_main(torch_compare.main, torch_compare.build_parser(), argv) == 0
    out = capsys.readouterr().out
    for net in nets:
        match = re.search(rf"round 1 {net} +TensorFlow +([\d.]+) img/s \(([\d.]+) GMACs/img\) +"
                          rf"PyTorch \S+ eager +([\d.]+) img/s \(([\d.]+) GMACs/img, \d+ threads\) +"
                          rf"TensorFlow / PyTorch ([\d.]+)x", out)
        assert match, out
        tf_rate, tf_gmacs, torch_rate, torch_gmacs, ratio = map(float, match.groups())
        assert tf_rate > 0 and torch_rate > 0
        assert agrees_with_rounded_figures(tf_rate, torch_rate, ratio, figure_places=2), \
            match.groups()
        assert tf_gmacs == torch_gmacs > 0, match.groups()


@pytest.mark.slow  # builds both frameworks' networks
@pytest.mark.skipif(not has_torch(TORCH_PYTHON),
                    reason="no PyTorch: set SEGMENTOR_TORCH_PYTHON to a Python with torch")
@pytest.mark.parametrize("net", list(BACKBONES))
def test_both_sides_run_the_same_network_to_the_multiply_accumulate(net):
    # For ResNet-50 only once torchvision's strides sit where slim's do (its own layout
    # does 17% more at 256 px), and with the stride-16 tap after the same unit: the
    # score layer there changes the count by a little, the exact count sees it.
    num_classes = DATASETS[BENCH_DATASET].num_classes
    worker = torch_compare.TorchWorker(TORCH_PYTHON, 64, 1, num_classes)
    try:
        torch_macs = worker.images_per_sec(net, 1)["macs"]
    finally:
        worker.close()
    assert torch_macs == fcn_arch.network_stats(net, DECODER, num_classes, 64)[1]
