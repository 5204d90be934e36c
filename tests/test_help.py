"""Every command-line entry point explains all its flags with --help.

argparse expands `%` in help strings when --help is printed, not when the parser
is built, so a stray `%` only shows up here.
"""
import importlib

import pytest

ENTRY_POINTS = ["fcn_train", "fcn_test", "fcn_arch", "utils.camvid_to_records",
                "utils.pascal_voc_augmented_to_records", "utils.coco_stuff_to_records",
                "utils.folder_to_records", "utils.shapes", "utils.data_bench",
                "utils.train_bench"]


@pytest.mark.parametrize("module_name", ENTRY_POINTS)
def test_help_lists_and_explains_every_flag(module_name, capsys):
    parser = importlib.import_module(module_name).build_parser()
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--help"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert printed.startswith("usage: ")
    for action in parser._actions:
        for option in action.option_strings:
            assert option in printed, option
        assert action.help, f"{action.option_strings or action.dest} has no help text"
