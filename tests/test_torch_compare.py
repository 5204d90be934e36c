"""benchmarks/torch_compare.py: without PyTorch one line says so; with it (a Python named
by $SEGMENTOR_TORCH_PYTHON, skipped otherwise) a 1-step tiny comparison prints both sides."""
import os
import re
import subprocess

import pytest

from benchmarks import torch_compare
from printed_ratio import agrees_with_rounded_figures
from utils.errors import EXIT_USER_ERROR, run_main

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
def test_a_one_step_comparison_prints_both_rates_and_their_ratio(capsys):
    argv = ["--nets", "mobilenet_v2", "--pixels", "64", "--batch_size", "1", "--steps", "1",
            "--rounds", "1"]
    assert run_main(torch_compare.main, torch_compare.build_parser(), argv) == 0
    out = capsys.readouterr().out
    match = re.search(r"round 1 mobilenet_v2 +TensorFlow +([\d.]+) img/s +PyTorch \S+ eager +"
                      r"([\d.]+) img/s \(\d+ threads\) +TensorFlow / PyTorch ([\d.]+)x", out)
    assert match, out
    tf_rate, torch_rate, ratio = map(float, match.groups())
    assert tf_rate > 0 and torch_rate > 0
    assert agrees_with_rounded_figures(tf_rate, torch_rate, ratio, figure_places=2), match.groups()
