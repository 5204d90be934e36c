"""benchmarks/onednn_compare.py: the step timed with oneDNN off and on, in child processes."""
import re

import pytest

from benchmarks import onednn_compare
from printed_ratio import agrees_with_rounded_figures
from utils.errors import run_main


@pytest.mark.slow  # two child processes, each importing TensorFlow and building a graph
def test_a_tiny_comparison_prints_both_step_times_and_their_ratio(capsys):
    args = ["--nets", "mobilenet_v1", "--pixels", "32", "--batch_size", "2", "--steps", "1",
            "--rounds", "1"]
    assert run_main(onednn_compare.main, onednn_compare.build_parser(), args) == 0
    out = capsys.readouterr().out
    line = re.search(r"mobilenet_v1 +round 1: oneDNN off ([\d.]+) s/step, on ([\d.]+) s/step, "
                     r"([\d.]+)x", out)
    assert line, out
    off, on, ratio = map(float, line.groups())
    assert off > 0 and on > 0 and agrees_with_rounded_figures(off, on, ratio, figure_places=3), (
        off, on, ratio)
