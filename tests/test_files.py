"""utils/files.py: atomic writes with unique temporary names."""
import os
import stat

import pytest

from utils.files import atomic_path, write_text_atomic


def test_two_writers_get_distinct_temporary_files_in_the_same_folder(tmp_path):
    target = tmp_path / "out.json"
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second
        assert os.path.dirname(first) == os.path.dirname(second) == str(tmp_path)
        assert os.path.basename(first).startswith(".out.json.") and first.endswith(".partial")
        open(first, "w").write("first")
        open(second, "w").write("second")
    assert target.read_text() == "first"  # the last rename wins, and it is whole
    assert os.listdir(tmp_path) == ["out.json"]


def test_an_exception_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            open(tmp, "w").write("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["out.txt"]


def test_suffix_keeps_an_extension_and_files_get_the_usual_permissions(tmp_path):
    with atomic_path(tmp_path / "clip.mp4", suffix=".partial.mp4") as tmp:
        assert tmp.endswith(".partial.mp4")
        open(tmp, "w").write("frames")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(tmp_path / "clip.mp4").st_mode) == 0o666 & ~umask
