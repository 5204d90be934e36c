"""Every command-line entry point explains all its flags with --help, and runs both as a
file (`python utils/x.py`) and as a module (`python -m utils.x`).

argparse expands `%` in help strings when --help is printed, not when the parser
is built, so a stray `%` only shows up here.
"""
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# module name -> the file `python FILE` runs
ENTRY_POINTS = {
    "fcn_train": "fcn_train.py",
    "fcn_test": "fcn_test.py",
    "fcn_export": "fcn_export.py",
    "fcn_arch": "fcn_arch.py",
    "utils.camvid_to_records": "utils/camvid_to_records.py",
    "utils.pascal_voc_augmented_to_records": "utils/pascal_voc_augmented_to_records.py",
    "utils.coco_stuff_to_records": "utils/coco_stuff_to_records.py",
    "utils.folder_to_records": "utils/folder_to_records.py",
    "utils.shapes.__main__": "utils/shapes",  # `python -m utils.shapes`
    "utils.data_bench": "utils/data_bench.py",
    "utils.train_bench": "utils/train_bench.py",
    "utils.compare_runs": "utils/compare_runs.py",
    "utils.check_dataset": "utils/check_dataset.py",
    "utils.fetch_checkpoints": "utils/fetch_checkpoints.py",
    "utils.convert_torchvision": "utils/convert_torchvision.py",
    "utils.infer_bench": "utils/infer_bench.py",
    "benchmarks.torch_compare": "benchmarks/torch_compare.py",
    "benchmarks.onednn_compare": "benchmarks/onednn_compare.py",
}


def test_every_entry_point_in_utils_is_listed():
    """A new script in utils/ (a file with a __main__ block) is picked up by these tests."""
    scripts = {path.relative_to(REPO_ROOT).as_posix()
               for path in (REPO_ROOT / "utils").rglob("*.py")
               if 'if __name__ == "__main__":' in path.read_text()}
    listed = {file if file.endswith(".py") else f"{file}/__main__.py"
              for file in ENTRY_POINTS.values()}
    assert scripts <= listed


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


@pytest.mark.slow  # two fresh interpreters (TensorFlow imports) per entry point
@pytest.mark.parametrize("module_name", ENTRY_POINTS)
def test_runs_as_a_file_and_as_a_module(module_name, tmp_path):
    """From another folder as a file, and as `python -m` from the repo root (where `-m`
    finds `utils`): both print the same help."""
    module = module_name.removesuffix(".__main__")
    as_file = subprocess.run([sys.executable, str(REPO_ROOT / ENTRY_POINTS[module_name]), "--help"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
    as_module = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=300)
    assert as_file.returncode == 0, as_file.stderr[-1000:]
    assert as_module.returncode == 0, as_module.stderr[-1000:]
    assert as_file.stdout.startswith("usage: ")
    assert as_file.stdout == as_module.stdout
