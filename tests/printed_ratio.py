"""Checks a ratio a benchmark printed against the two figures it printed beside it."""


def agrees_with_rounded_figures(numerator, denominator, ratio, figure_places, ratio_places=2):
    """True if `ratio` (printed to `ratio_places` decimals) can be the quotient of the two
    unrounded figures behind `numerator` and `denominator` (printed to `figure_places`).
    Benchmarks divide the unrounded figures, so at small values the printed ratio may sit
    several percent away from numerator / denominator: test within what rounding allows."""
    half_figure, half_ratio = 0.5 * 10 ** -figure_places, 0.5 * 10 ** -ratio_places
    lowest = (numerator - half_figure) / (denominator + half_figure) - half_ratio
    highest = (numerator + half_figure) / (denominator - half_figure) + half_ratio
    return lowest <= ratio <= highest
