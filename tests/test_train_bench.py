"""utils/train_bench.py: the peak is the best of its kernels, whose FLOPs are counted right,
and a tiny run prints the table against it."""
import re

import pytest

from utils import train_bench
from utils.errors import run_main
from utils.tfcompat import tf

TINY_KERNELS = {"matmul 64^2": train_bench.matmul_kernel(64),
                "conv 3x3 8->16, 2x16x16": train_bench.conv_kernel(2, 16, 8, 16, 3)}


@pytest.fixture
def quick_peak(monkeypatch):
    monkeypatch.setattr(train_bench, "MIN_PEAK_SECS", 0.01)
    monkeypatch.setattr(train_bench, "WARMUP_STEPS", 1)


@pytest.mark.parametrize("build, shape, flops", [
    (train_bench.matmul_kernel(64), [64, 64], 2 * 64 ** 3),
    (train_bench.conv_kernel(2, 16, 8, 16, 3), [2, 16, 16, 16], 2 * 2 * 16 * 16 * 9 * 8 * 16)])
def test_each_peak_kernel_counts_its_flops(build, shape, flops):
    with tf.Graph().as_default():
        output, counted = build()
    assert output.shape.as_list() == shape and counted == flops


def test_the_peak_is_the_best_kernel(quick_peak):
    peak, best, rates = train_bench.peak_gflops(TINY_KERNELS)
    assert set(rates) == set(TINY_KERNELS) and all(rate > 0 for rate in rates.values())
    assert peak == max(rates.values()) and rates[best] == peak


@pytest.mark.slow  # builds and steps a network
def test_a_tiny_benchmark_prints_the_peak_and_a_row_per_net(quick_peak, monkeypatch, capsys):
    monkeypatch.setattr(train_bench, "PEAK_KERNELS", TINY_KERNELS)
    argv = ["--nets", "mobilenet_v1", "--pixels", "32", "--batch_size", "1", "--steps", "1",
            "--datapath", "/nonexistent"]
    assert run_main(train_bench.main, train_bench.build_parser(), argv) == 0
    out = capsys.readouterr().out
    assert re.search(r"float32 peak: \d+ GFLOP/s \((matmul 64\^2|conv 3x3 8->16, 2x16x16); "
                     r"best of matmul 64\^2 \d+, conv 3x3 8->16, 2x16x16 \d+\)", out), out
    assert re.search(r"^mobilenet_v1 +[\d.]+ +[\d.]+ +\d+ +\d+% +[\d.]+ +\d+ +\d+%$", out,
                     re.MULTILINE), out
    assert "input pipeline: skipped" in out
