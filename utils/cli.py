"""Command-line pieces shared by fcn_train.py and fcn_test.py.

Typed argparse values with one-line errors (`bounded`), the one definition of
`-g/--gpu` and the device selection it drives. Only the scripts call these;
nothing below the scripts sees argparse.
"""
import argparse
import os

from utils.errors import EXIT_USER_ERROR

CPU_ONLY = -1  # --gpu value that hides every GPU


class CheckedArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser that also runs `check(parser, args)` on the parsed flags, so a
    combination that cannot work fails at once, and keeps every flag error to one line."""

    def __init__(self, *args, check=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._check = check

    def parse_args(self, args=None, namespace=None):
        parsed = super().parse_args(args, namespace)
        if self._check:
            self._check(self, parsed)
        return parsed

    def error(self, message):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see --help)\n")


def bounded(type_, low=None, high=None, low_inclusive=True, high_inclusive=True, what=None):
    """An argparse `type=`: convert with `type_`, then insist on the bounds.

    `what` names the requirement in the error ("a fraction in (0, 1)"); by
    default the bounds are spelled out (">= 0", "> 0 and < 1").
    """
    requirements = []
    if low is not None:
        requirements.append(f"{'>=' if low_inclusive else '>'} {low}")
    if high is not None:
        requirements.append(f"{'<=' if high_inclusive else '<'} {high}")
    requirement = what or " and ".join(requirements) or f"a {type_.__name__}"

    def parse(text):
        value = type_(text)  # ValueError -> argparse's own "invalid int value: 'x'"
        too_low = low is not None and (value < low if low_inclusive else value <= low)
        too_high = high is not None and (value > high if high_inclusive else value >= high)
        if too_low or too_high:
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
        return value
    parse.__name__ = type_.__name__  # argparse names it in "invalid int value"
    return parse


def add_gpu_flag(parser):
    """-g/--gpu INDEX, the same in every script."""
    parser.add_argument("-g", "--gpu", type=bounded(int, low=CPU_ONLY), default=None,
                        metavar="INDEX",
                        help=f"GPU to use (sets CUDA_VISIBLE_DEVICES); {CPU_ONLY} = CPU only "
                             f"(default: TensorFlow's choice, the first GPU if any)")


def select_gpu(index):
    """Show TensorFlow only GPU `index` (none for CPU_ONLY; all for None).

    Must run before the first session: that is when TensorFlow claims devices.
    """
    if index is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = "" if index == CPU_ONLY else str(index)
