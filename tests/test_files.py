"""utils/files.py: atomic writes with unique temporary names; a full disk as one line."""
import errno
import os
import stat

import pytest

from utils import files
from utils.errors import SegMentorError
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


def test_replacing_a_second_name_of_the_same_file_leaves_no_temporary(tmp_path):
    target, other = tmp_path / "a", tmp_path / "b"
    target.write_text("x")
    os.link(target, other)
    with atomic_path(str(target)) as tmp:
        os.link(other, tmp)  # rename() of two names of one file does nothing (POSIX)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_a_full_disk_is_one_line_naming_the_folder_and_its_free_space(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "free_bytes", lambda path: 3 * files.MB)
    with pytest.raises(SegMentorError) as error:
        with files.disk_full_errors(str(tmp_path), "the test outputs"):
            with atomic_path(str(tmp_path / "metrics.json")) as tmp:
                open(tmp, "w").write("{}")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert str(error.value) == (f"no space left on {tmp_path}: 3.0 MB free (writing the test "
                                f"outputs); free some space or use another folder")
    assert not list(tmp_path.iterdir())  # the temporary file went with the error
    with pytest.raises(SegMentorError, match=r"a checkpoint needs 4.0 MB"):
        files.require_free_space(str(tmp_path), 4 * files.MB, "a checkpoint")
    files.require_free_space(str(tmp_path), 2 * files.MB, "a checkpoint")


@pytest.mark.parametrize("err, disk_full", [
    (OSError(errno.ENOSPC, "No space left on device"), True),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), True),
    (OSError(errno.EFBIG, "File too large"), True),
    (OSError(errno.EACCES, "Permission denied"), False),
    (RuntimeError("/run/fcn.ckpt.data-00000-of-00001.tempstate1; No space left on device"), True),
    (RuntimeError("OOM when allocating tensor"), False),
])
def test_disk_full_errors_are_recognised_from_python_and_tensorflow(err, disk_full):
    assert files.is_disk_full(err) == disk_full
