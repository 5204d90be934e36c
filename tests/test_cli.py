"""The seed's command lines: switches written `--flag=True`/`--flag=False` in every entry
point, `--g 0`, and the three ways of running tboards/createlinks."""
import argparse
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from test_help import ENTRY_POINTS
from utils.cli import BooleanSwitch, CheckedArgumentParser, Switch

REPO_ROOT = Path(__file__).resolve().parents[1]
CREATELINKS = REPO_ROOT / "tboards" / "createlinks"


def required_args(parser):
    """The least a parser accepts: a placeholder value for each required flag and a
    valid one for each positional argument (the first choice where there are choices)."""
    args = []
    for action in parser._actions:
        value = next(iter(action.choices or ["x"]))
        if action.required and action.option_strings:
            args += [action.option_strings[0], value]
        elif action.required:
            args.append(value)
    return args


def switches(parser):
    return [action for action in parser._actions
            if action.nargs == 0 and not isinstance(action, argparse._HelpAction)
            or isinstance(action, (Switch, BooleanSwitch))]


@pytest.mark.parametrize("module_name", ENTRY_POINTS)
def test_every_switch_takes_an_explicit_true_or_false(module_name):
    parser = importlib.import_module(module_name).build_parser()
    base = required_args(parser)

    def parsed(*argv):  # each switch alone: without the cross-flag checks, tested elsewhere
        namespace, unknown = parser.parse_known_args(base + list(argv))
        assert not unknown
        return namespace

    for action in switches(parser):
        assert isinstance(action, (Switch, BooleanSwitch)), action.option_strings
        flag, default = action.option_strings[0], action.default
        assert getattr(parsed(flag), action.dest) is True
        assert getattr(parsed(f"{flag}=True"), action.dest) is True
        assert getattr(parsed(f"{flag}=False"), action.dest) is False
        assert getattr(parsed(), action.dest) is default


def test_seed_command_line_decaylr_true_and_g_0():
    import fcn_train
    parser = fcn_train.build_parser()
    args = parser.parse_args(["--decaylr=True", "--g", "0"])
    assert args.decaylr is True and args.gpu == 0
    # False means off: it does not count as a second learning-rate schedule
    assert parser.parse_args(["--decaylr=False", "--constantlr"]).decaylr is False


@pytest.mark.parametrize("argv, flip", [
    (["--flip"], True), (["--flip=false"], False), (["--no-flip"], False),
    (["--no-flip=True"], False), (["--no-flip=False"], True), (["--flip", "no"], False)])
def test_negatable_switch_means_what_the_words_say(argv, flip):
    parser = CheckedArgumentParser()
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True, help="h")
    assert parser.parse_args(argv).flip is flip


def test_a_switch_value_that_is_not_a_truth_value_is_one_error_line(capsys):
    parser = CheckedArgumentParser(prog="prog")
    parser.add_argument("--decaylr", action="store_true", help="h")
    for word, value in (("TRUE", True), ("yes", True), ("1", True), ("off", False)):
        assert parser.parse_args([f"--decaylr={word}"]).decaylr is value
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--decaylr=maybe"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == ("prog: error: argument --decaylr: takes True or False, "
                                       "got 'maybe' (see --help)\n")


@pytest.mark.parametrize("command, cwd", [
    (["bash", "createlinks"], CREATELINKS.parent),      # the seed's: cd tboards && bash createlinks
    (["./createlinks"], CREATELINKS.parent),
    ([sys.executable, "tboards/createlinks"], REPO_ROOT),
    (["sh", str(CREATELINKS)], None),
], ids=["bash", "executable", "python", "sh"])
def test_createlinks_runs_as_shell_script_executable_and_python(command, cwd, tmp_path):
    runs, links = tmp_path / "tmp", tmp_path / "tboards"
    for name in ("20260101_mobilenet_v1__1", "20260102_vgg_16__1"):
        (runs / name).mkdir(parents=True)
        (runs / name / "runargs").write_text("{}\n")
    (runs / "not_a_run").mkdir()
    links.mkdir()
    done = subprocess.run(command + ["--runs_dir", str(runs), "--links_dir", str(links)],
                          cwd=cwd or tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "2 runs linked (2 new, 0 stale removed)" in done.stdout
    assert sorted(link.name for link in links.iterdir()) == ["20260101_mobilenet_v1__1",
                                                             "20260102_vgg_16__1"]
    assert all(link.is_symlink() and link.resolve() == (runs / link.name).resolve()
               for link in links.iterdir())
