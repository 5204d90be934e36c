"""Files on disk: atomic writes, and which image files seg-mentor reads.

Atomic writes: readers see the old file or the whole new one, never half.
Every writer in the project (run folders, dataset.json, tfrecords, pictures,
metrics, links) goes through `atomic_path`. The temporary file sits in the same
folder as the target, so the final `os.replace` is a rename on one file system,
and its name is unique, so two processes writing the same target never share a
temp file: the last rename wins and each rename installs a complete file.

Image files: `IMAGE_EXTENSIONS` is what the converters and fcn_test accept as
images, and `IMAGE_READ_ERRORS` what PIL raises for a file it cannot read
(damaged, not an image, or a "decompression bomb" of absurd size), so every
reader reports all of them as one line rather than a traceback.

A full disk: every writer runs inside `disk_full_errors(folder, what)`, which
turns the "no space" errors of Python and TensorFlow (ENOSPC, a quota, a file
size limit) into one SegMentorError line naming the folder and its free space;
`require_free_space` refuses a write that cannot fit before it starts.
"""
import contextlib
import errno
import os
import secrets
import shutil

from utils.errors import SegMentorError

from PIL import Image

PARTIAL_SUFFIX = ".partial"

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# OSError covers UnidentifiedImageError and truncated files; some decoders raise
# SyntaxError or ValueError on broken headers; DecompressionBombError is PIL's
# refusal of images above twice its pixel limit (it is not an OSError).
IMAGE_READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


@contextlib.contextmanager
def atomic_path(path, suffix=PARTIAL_SUFFIX):
    """Yield a unique temporary path in the same folder (e.g. '.<name>.<random>.partial');
    os.replace it onto `path` on clean exit, remove it on exception. Two writers never
    share a temp file.

    `suffix` ends the temporary name; a writer that picks its format from the
    extension (OpenCV's VideoWriter) passes one that keeps it, e.g. '.partial.mp4'.
    The yielded path does not exist yet: the caller creates it (a file, or a
    folder to rename into place), so it gets the usual umask permissions.
    """
    directory, name = os.path.split(os.path.abspath(path))
    # 64 random bits: two writers picking the same name is not a practical concern.
    tmp_path = os.path.join(directory, f".{name}.{secrets.token_hex(8)}{suffix}")
    try:
        yield tmp_path
    except BaseException:
        remove_quietly(tmp_path)
        raise
    try:
        os.replace(tmp_path, path)
    except BaseException:
        remove_quietly(tmp_path)
        raise
    # Renaming a hard link onto another name of the same file does nothing
    # (POSIX), so the temporary name would stay behind.
    if os.path.lexists(tmp_path):
        remove_quietly(tmp_path)


def write_text_atomic(path, text):
    """Write `text` to `path` atomically (see `atomic_path`)."""
    with atomic_path(path) as tmp_path:
        with open(tmp_path, "w", newline="") as f:
            f.write(text)


def remove_quietly(path):
    """Delete a file or folder; nothing when it is already gone."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


# --- A full disk -----------------------------------------------------------------------

MB = 1 << 20  # the unit of free space in messages, as `du -m` and `df -m` count
# ENOSPC: the file system is full; EDQUOT: the user's quota; EFBIG: a file size limit
# (ulimit -f, or the file system's largest file).
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# How TensorFlow's file writers report the same errors: strerror in the message
# (ENOSPC comes out as a ResourceExhaustedError, which otherwise means out of memory).
_DISK_FULL_PHRASES = tuple(os.strerror(number) for number in DISK_FULL_ERRNOS)


def free_bytes(path):
    """Free bytes (for this user) on the file system holding `path` (or its nearest
    existing parent)."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return shutil.disk_usage(path).free


def _error_text(err):
    return getattr(err, "message", None) or str(err)


def is_disk_full(err):
    """True for an error that says the disk (or quota, or file size limit) is full."""
    if isinstance(err, OSError) and err.errno is not None:
        return err.errno in DISK_FULL_ERRNOS
    return any(phrase in _error_text(err) for phrase in _DISK_FULL_PHRASES)


def disk_full_error(path, what, needed_bytes=None, err=None):
    """The one-line error for `what` (e.g. 'a checkpoint') not fitting on `path`;
    `err` the error that said so (a file size limit is named as such)."""
    if err is not None and (getattr(err, "errno", None) == errno.EFBIG or
                            os.strerror(errno.EFBIG) in _error_text(err)):
        return SegMentorError(f"file size limit reached writing {what} in {path} (ulimit -f, "
                              f"or the file system's largest file); raise the limit or use "
                              f"another folder")
    needed = f", {what} needs {needed_bytes / MB:.1f} MB" if needed_bytes else f" (writing {what})"
    return SegMentorError(f"no space left on {path}: {free_bytes(path) / MB:.1f} MB free{needed}; "
                          f"free some space or use another folder")


def require_free_space(path, needed_bytes, what):
    """SegMentorError (nothing written) when `needed_bytes` do not fit on `path`."""
    if free_bytes(path) < needed_bytes:
        raise disk_full_error(path, what, needed_bytes)


@contextlib.contextmanager
def disk_full_errors(path, what, needed_bytes=None):
    """Turn a full-disk error of any writer inside the block into one SegMentorError line."""
    try:
        yield
    except Exception as err:
        if is_disk_full(err):
            raise disk_full_error(path, what, needed_bytes, err) from None
        raise
