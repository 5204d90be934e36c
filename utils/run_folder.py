"""The training run folder: its name, its saved flags (`runargs`) and its log (`runlog`).

    run_dir = create_run_dir(RUNS_DIR, 'mobilenet_v1')   # tmp/20240131_mobilenet_v1__3
    write_runargs(run_dir, settings)  ...  settings = read_runargs(run_dir)
    log = RunLog(run_dir); log.write(step=300, loss=0.412)  # "step=300 loss=0.412"
    lines = parse_runlog(os.path.join(run_dir, RUNLOG_FILE))  # [{'step': 300, ...}, ...]
    with RunFolderLock(run_dir): ...                      # one trainer per folder at a time

No TensorFlow here, so tools such as `tboards/createlinks` start instantly.
Checkpoints are `utils/checkpoints.py`'s business.
"""
import datetime
import fcntl
import json
import numbers
import os
import pathlib
import re
import shlex

from utils.errors import SegMentorError
from utils.files import disk_full_errors, write_text_atomic

# tmp/ in the repository root (its contents are ignored by git).
RUNS_DIR = str(pathlib.Path(__file__).resolve().parents[1] / "tmp")
RUNARGS_FILE = "runargs"
RUNLOG_FILE = "runlog"
LOCK_FILE = ".lock"
RUN_NAME_PATTERN = re.compile(r"^(?P<date>\d{8})_(?P<basenet>.+)__(?P<number>\d+)$")
FIRST_RUN_NUMBER = 1
# Significant digits of floats in the runlog: enough to see a trend, short enough to read.
LOG_FLOAT_DIGITS = 4


def create_run_dir(root, basenet, date=None):
    """Create and return `<root>/<YYYYMMDD>_<basenet>__<N>`, N the next free number.

    `os.mkdir` either creates the folder or fails because it exists, so two
    runs started at the same moment can never claim the same N: the loser
    just tries the next number. An unusable `root` is a SegMentorError naming
    --runs_dir.
    """
    date = date or datetime.date.today()
    prefix = f"{date:%Y%m%d}_{basenet}__"
    try:
        os.makedirs(root, exist_ok=True)
        taken = [int(match["number"]) for match in map(RUN_NAME_PATTERN.match, os.listdir(root))
                 if match and f"{match['date']}_{match['basenet']}__" == prefix]
        number = max(taken, default=FIRST_RUN_NUMBER - 1) + 1
        while True:
            path = os.path.join(root, f"{prefix}{number}")
            try:
                os.mkdir(path)
                return path
            except FileExistsError:
                number += 1
    except OSError as err:
        raise SegMentorError(f"cannot create a run folder in {root} ({err.strerror}); pass a "
                             f"writable folder as --runs_dir") from None


def is_run_dir(path):
    """True for a folder that holds a `runargs` file."""
    return os.path.isfile(os.path.join(path, RUNARGS_FILE))


def write_runargs(run_dir, settings):
    """Write `settings` (a dict of JSON values) as sorted JSON, atomically."""
    with disk_full_errors(run_dir, RUNARGS_FILE):
        write_text_atomic(os.path.join(run_dir, RUNARGS_FILE),
                          json.dumps(settings, indent=1, sort_keys=True) + "\n")


class RunFolderLock:
    """An exclusive lock on a run folder while a trainer works in it.

    A second trainer (`--resume` of a run still going) is refused at once
    instead of interleaving saves, and the holder knows that temporary files
    in the folder belong to no live save, so it may sweep them. The kernel
    drops the lock when the process dies, however it dies.
    """

    def __init__(self, run_dir):
        self.run_dir = run_dir
        self._file = None

    def __enter__(self):
        self._file = open(os.path.join(self.run_dir, LOCK_FILE), "a")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise SegMentorError(f"{self.run_dir} is in use by another fcn_train.py still "
                                 f"training there; wait for it to end or stop it first") from None
        return self

    def __exit__(self, *exc):
        self._file.close()  # releases the lock
        return False


class HeldRunFolder:
    """The run folder a trainer works in, once it has one: its path, and its lock held
    until the end of the `with` block.

        with HeldRunFolder() as held:
            ...; held.hold(run_dir); ...        # held.path: None until then
    """

    def __init__(self):
        self.path = None
        self._lock = None

    def hold(self, run_dir):
        lock = RunFolderLock(run_dir)
        lock.__enter__()
        self.path, self._lock = run_dir, lock

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._lock:
            self._lock.__exit__(*exc)
        return False


def read_runargs(run_dir):
    """The settings dict saved by `write_runargs`; SegMentorError if missing or unreadable."""
    path = os.path.join(run_dir, RUNARGS_FILE)
    if not os.path.isfile(path):
        raise SegMentorError(f"{path} not found: {run_dir} is not a training run folder "
                             f"(one made by fcn_train.py, e.g. tmp/20240131_mobilenet_v1__1)")
    try:
        with open(path) as f:
            settings = json.load(f)
    except (OSError, ValueError) as err:
        raise SegMentorError(f"cannot read {path} ({err}); the run folder is damaged") from None
    if not isinstance(settings, dict):
        raise SegMentorError(f"{path} does not hold a JSON object; the run folder is damaged")
    return settings


def _format_value(value):
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return f"{value:.{LOG_FLOAT_DIGITS}g}"
    text = str(value)
    if text and not any(c.isspace() or c in "'\"" for c in text):
        return text
    # Free text (an error message) is shell-quoted, on one line, so the line
    # still splits into key=value tokens.
    return shlex.quote(" ".join(text.split()))


def format_log_line(**fields):
    """'k1=v1 k2=v2 ...' in the given order; floats with LOG_FLOAT_DIGITS digits."""
    return " ".join(f"{key}={_format_value(value)}" for key, value in fields.items())


def _parse_value(text):
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def parse_log_line(line):
    """{key: value} of one runlog line; numbers come back as int or float."""
    fields = {}
    for token in shlex.split(line):
        key, _, value = token.partition("=")
        fields[key] = _parse_value(value)
    return fields


def parse_runlog(path):
    """Every line of a runlog as a dict, in order (blank lines skipped)."""
    with open(path) as f:
        return [parse_log_line(line) for line in f if line.strip()]


class RunLog:
    """Appends `key=value` lines to <run_dir>/runlog, each flushed at once.

    A killed run therefore keeps every line up to its last step, and a
    resumed run appends to the same file.
    """

    def __init__(self, run_dir):
        self.path = os.path.join(run_dir, RUNLOG_FILE)
        self._file = open(self.path, "a")

    def write(self, **fields):
        """Append one line and return it (for the console)."""
        line = format_log_line(**fields)
        with disk_full_errors(os.path.dirname(self.path), RUNLOG_FILE):
            self._file.write(line + "\n")
            self._file.flush()
        return line

    def event(self, event, **fields):
        """A start/resume/stop/error/done line, stamped with the local time."""
        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        return self.write(event=event, time=stamp, **fields)

    def close(self):
        try:
            self._file.close()
        except OSError:
            pass  # a line that did not fit was reported when written; closing adds nothing

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def describe_start_weights(runargs):
    """One line saying where a run's weights started (runargs' init_* keys, written by
    fcn_train.py); None for runs made before they were recorded."""
    if "init_checkpoint" not in runargs:
        return None
    checkpoint = runargs["init_checkpoint"]
    if checkpoint is None:
        return "weights started from scratch (random)"
    step = runargs.get("init_step")
    at_step = f" at step {step}" if step is not None else ""
    return (f"weights started from {checkpoint}{at_step}; decoder "
            f"{runargs.get('init_decoder', 'fresh')}")
