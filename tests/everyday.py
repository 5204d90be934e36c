"""Which parametrized cases everyday runs keep (`python -m pytest -m "not slow"`).

Per-network cases run for the two thinnest feature extractors, one depthwise and one
residual (a test passes `everyday` to keep one where the second checks nothing more); the
others are marked slow, so CI (which runs everything) still covers every registered network.
"""
import pytest

EVERYDAY_NETS = ("mobilenet_v1", "resnet_v1_18")


def everyday_or_slow(cases, everyday=EVERYDAY_NETS):
    """`cases` (network names, or tuples starting with one) as pytest params; those whose
    network is not in `everyday` are marked slow."""
    params = []
    for case in cases:
        values = case if isinstance(case, tuple) else (case,)
        marks = () if values[0] in everyday else pytest.mark.slow
        params.append(pytest.param(*values, marks=marks))
    return params
