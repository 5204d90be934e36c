"""Command-line pieces shared by every entry point (fcn_train.py, fcn_test.py, fcn_arch.py,
the converters and benchmarks in utils/, tboards/createlinks).

The project's parser (`CheckedArgumentParser`: cross-flag checks, one-line errors, switches
that also take an explicit `=True`/`=False`), typed argparse values with one-line errors
(`bounded`), the one definition of `-g/--gpu` and the device selection it drives. Only entry
points call these; nothing below them sees argparse.
"""
import argparse
import os

from utils.errors import EXIT_USER_ERROR

CPU_ONLY = -1  # --gpu value that hides every GPU


# Words an explicit switch value may be (any case): `--decaylr=True`, `--flip=no`, ...
SWITCH_WORDS = {"true": True, "yes": True, "on": True, "1": True,
                "false": False, "no": False, "off": False, "0": False}


def switch_value(text):
    """An argparse `type=` for the explicit value of a switch: 'True' -> True, 'False' -> False."""
    try:
        return SWITCH_WORDS[text.strip().lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"takes True or False, got {text!r}") from None


class Switch(argparse.Action):
    """`store_true` that also takes an explicit value, as the seed's command lines do:
    `--decaylr` and `--decaylr=True` set True, `--decaylr=False` leaves it False."""

    def __init__(self, option_strings, dest, default=False, required=False, help=None):
        super().__init__(option_strings, dest, nargs="?", const=True, default=default,
                         type=switch_value, required=required, help=help, metavar="BOOL")

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)  # const (True) when the switch is bare


class BooleanSwitch(argparse.BooleanOptionalAction):
    """`--flag/--no-flag` that also takes an explicit value, with the meaning the words say:
    `--flip=False` and `--no-flip=True` both turn flipping off."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.nargs, self.const, self.type, self.metavar = "?", True, switch_value, "BOOL"

    def __call__(self, parser, namespace, values, option_string=None):
        negated = option_string.startswith("--no-")
        setattr(namespace, self.dest, values != negated)


class CheckedArgumentParser(argparse.ArgumentParser):
    """The parser of every entry point. It also runs `check(parser, args)` on the parsed
    flags, so a combination that cannot work fails at once; keeps every flag error to one
    line; and lets every switch take an explicit `=True`/`=False` (`Switch`, `BooleanSwitch`)."""

    def __init__(self, *args, check=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._check = check
        # Argument groups share these registries, so `action="store_true"` and
        # `action=argparse.BooleanOptionalAction` anywhere in the parser build the
        # value-taking forms, with no change to the flag definitions.
        self.register("action", "store_true", Switch)
        self.register("action", argparse.BooleanOptionalAction, BooleanSwitch)

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


def add_checkpoint_flags(parser, best=True):
    """--afteriter N (and --best): which checkpoint of a run folder a script reads, the
    same in every script that reads one (utils.prediction.TrainedRun.checkpoint takes
    both). Pair with `check_checkpoint_flags` in the parser's check."""
    parser.add_argument("--afteriter", type=bounded(int, low=0), default=None,
                        help="use snapshot fcn.ckpt_<N> (default: the newest intact checkpoint)")
    if best:
        parser.add_argument("--best", action="store_true",
                            help="use fcn.ckpt_best, the best val mIoU of a run trained with "
                                 "--keep_best")


def check_checkpoint_flags(parser, args):
    if getattr(args, "best", False) and args.afteriter is not None:
        parser.error("--best and --afteriter each pick the checkpoint: give one")


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
