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
"""
import contextlib
import os
import secrets
import shutil

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
        _remove_quietly(tmp_path)
        raise
    try:
        os.replace(tmp_path, path)
    except BaseException:
        _remove_quietly(tmp_path)
        raise


def write_text_atomic(path, text):
    """Write `text` to `path` atomically (see `atomic_path`)."""
    with atomic_path(path) as tmp_path:
        with open(tmp_path, "w", newline="") as f:
            f.write(text)


def _remove_quietly(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
