"""benchmarks/onednn_compare.py: the step timed with oneDNN off and on, in child processes."""
import re

import pytest

from benchmarks import onednn_compare
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
    assert off > 0 and on > 0
    # The times print rounded to 1 ms and the ratio comes from the unrounded times, so at
    # tens of milliseconds a step the printed ratio may sit a few percent off off/on.
    half_ms, half_hundredth = 0.0005, 0.005
    lowest = (off - half_ms) / (on + half_ms) - half_hundredth
    highest = (off + half_ms) / (on - half_ms) + half_hundredth
    assert lowest <= ratio <= highest, (off, on, ratio)
