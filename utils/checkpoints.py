"""Checkpoints of a training run: save the latest and snapshots, resume from the newest intact one.

In the run folder:
    fcn.ckpt.{index,data-*}           the latest state, replaced at every save
    fcn.ckpt_prev.{index,data-*}      the state before it (hard links, no copy)
    fcn.ckpt_<step>.{index,data-*}    snapshots, kept (hard links to that save's latest)
    fcn.ckpt_best.{index,data-*}      with --keep_best: the state of the best val mIoU so far
    checkpoint                        TF's state file (tf.train.latest_checkpoint finds fcn.ckpt)
Each holds every global variable: weights, batch-norm averages, optimizer
slots and the global step (GLOBAL_STEP_NAME), so a resumed run continues
from the same state.

    keeper = CheckpointKeeper(run_dir)          # after the whole graph is built
    keeper.save(sess, step, snapshot=True)
    resume_from = newest_intact(run_dir)        # before the graph: Checkpoint(prefix, step) or None
    start_from = pick_checkpoint(run_dir, step)  # newest intact or snapshot <step>; error if none
    keeper.restore(sess, resume_from.prefix)
"""
import dataclasses
import glob
import os
import re
import shutil

from utils.errors import SegMentorError, first_line
from utils.files import PARTIAL_SUFFIX, atomic_path
from utils.tfcompat import tf

LATEST_NAME = "fcn.ckpt"
PREVIOUS_NAME = LATEST_NAME + "_prev"
SNAPSHOT_NAME = LATEST_NAME + "_{step}"
BEST_NAME = LATEST_NAME + "_best"
# Name of the step counter variable (tf.train.get_or_create_global_step) in every checkpoint.
GLOBAL_STEP_NAME = "global_step"
_SNAPSHOT_INDEX = re.compile(re.escape(LATEST_NAME) + r"_(\d+)\.index$")
# TF writes each checkpoint file under this infix and renames it when complete;
# a save killed midway leaves such a file behind.
_UNFINISHED_INFIX = ".tempstate"


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    prefix: str          # path without .index / .data-*
    step: int | None     # training step it was saved at (None if unknown)


def snapshot_steps(run_dir):
    """Steps of the snapshots in `run_dir`, ascending."""
    matches = (_SNAPSHOT_INDEX.match(name) for name in os.listdir(run_dir))
    return sorted(int(match.group(1)) for match in matches if match)


def checkpoint_candidates(run_dir):
    """Checkpoint prefixes in `run_dir`, newest first: the latest, the previous one,
    then the snapshots by step."""
    names = [LATEST_NAME, PREVIOUS_NAME] + [SNAPSHOT_NAME.format(step=step)
                                            for step in reversed(snapshot_steps(run_dir))]
    prefixes = [os.path.join(run_dir, name) for name in names]
    return [prefix for prefix in prefixes if os.path.exists(prefix + ".index")]


def saved_step(prefix):
    """The global step stored in a checkpoint (None when it has none)."""
    try:
        reader = tf.train.NewCheckpointReader(prefix)
    except Exception as err:  # TF raises several error types for unreadable files
        raise SegMentorError(f"cannot read checkpoint {prefix}: {first_line(err)}") from None
    if reader.has_tensor(GLOBAL_STEP_NAME):
        return int(reader.get_tensor(GLOBAL_STEP_NAME))
    return None


def _read_every_tensor(prefix):
    """The checkpoint's global step, after reading each of its tensors once.

    Reading checks every tensor's checksum, as a restore does, so a pair of
    files from two different saves (same layout, other bytes) or a truncated
    data file fails here. One tensor is in memory at a time.
    """
    reader = tf.train.NewCheckpointReader(prefix)
    for name in reader.get_variable_to_shape_map():
        reader.get_tensor(name)
    return (int(reader.get_tensor(GLOBAL_STEP_NAME)) if reader.has_tensor(GLOBAL_STEP_NAME)
            else None)


def newest_intact(run_dir, on_skip=None):
    """The newest checkpoint of `run_dir` whose files all read back: Checkpoint(prefix, step).

    Works without a graph, so the step is known before the input pipeline is
    built. Returns None when there is no checkpoint at all; calls
    `on_skip(prefix, reason)` for each damaged one passed over, and raises
    SegMentorError when there are checkpoints but none is intact. Read-only,
    so fcn_test can use it on a run that is still training.
    """
    candidates = checkpoint_candidates(run_dir)
    for prefix in candidates:
        try:
            return Checkpoint(prefix, _read_every_tensor(prefix))
        except Exception as err:  # TF raises several error types for damaged files
            if on_skip:
                on_skip(prefix, first_line(err))
    if candidates:
        raise SegMentorError(f"none of the {len(candidates)} checkpoints in {run_dir} is "
                             f"intact; start a new run instead")
    return None


def pick_checkpoint(run_dir, step=None, on_skip=None):
    """The newest intact checkpoint of `run_dir`, or its snapshot fcn.ckpt_<step>.

    SegMentorError when there is none, or when the requested snapshot is
    absent (listing the steps there are).
    """
    if not os.path.isdir(run_dir):
        raise SegMentorError(f"run folder {run_dir} not found; give a folder made by "
                             f"fcn_train.py, e.g. tmp/20240131_mobilenet_v1__1")
    if step is None:
        checkpoint = newest_intact(run_dir, on_skip=on_skip)
        if checkpoint is None:
            raise SegMentorError(f"no checkpoint ({LATEST_NAME}*) in {run_dir}: train it first "
                                 f"with fcn_train.py, or pick another run")
        return checkpoint
    prefix = os.path.join(run_dir, SNAPSHOT_NAME.format(step=step))
    if not os.path.isfile(prefix + ".index"):
        available = ", ".join(map(str, snapshot_steps(run_dir))) or "none"
        raise SegMentorError(f"no snapshot {os.path.basename(prefix)} in {run_dir}; "
                             f"available --afteriter values: {available}")
    return Checkpoint(prefix, saved_step(prefix))


def remove_unfinished_saves(run_dir):
    """Delete the leftovers of a save that was killed midway (resume only: a
    running trainer's save in progress looks the same)."""
    patterns = (f"*{_UNFINISHED_INFIX}*", f".{LATEST_NAME}*{PARTIAL_SUFFIX}")
    for pattern in patterns:
        for path in glob.glob(os.path.join(run_dir, pattern)):
            os.remove(path)


def _checkpoint_files(prefix):
    """The files of a checkpoint, data first: a copy is only found once its index exists."""
    return sorted(glob.glob(glob.escape(prefix) + ".data-*")) + [prefix + ".index"]


def _link_checkpoint(source_prefix, target_prefix):
    """Make `target_prefix` a second name of the checkpoint `source_prefix`, file by file.

    A hard link costs no disk space and no copy time; where the file system
    has none, the files are copied. TF never rewrites a checkpoint file in
    place (it writes a new file and renames it over the old name), so the
    second name keeps the old contents when the source is saved again.
    """
    for source in _checkpoint_files(source_prefix):
        target = target_prefix + source[len(source_prefix):]
        with atomic_path(target) as partial:
            try:
                os.link(source, partial)
            except OSError:
                shutil.copyfile(source, partial)


class CheckpointKeeper:
    """Saves and restores all global variables of the current graph in `run_dir`.

    TF writes each file of a checkpoint to a temporary name and renames it
    when complete, but the data and index files are renamed one after the
    other, so a kill between the two leaves a latest checkpoint whose files do
    not match. Before replacing the latest, a save therefore keeps it as
    fcn.ckpt_prev: whatever moment a kill hits, the latest or the previous
    state is intact, and `newest_intact` (which reads every tensor back) picks
    it, so a resumed run loses at most the steps since the last save.
    """

    def __init__(self, run_dir):
        self.run_dir = run_dir
        self._saver = tf.train.Saver(max_to_keep=None, save_relative_paths=True)

    def _prefix(self, name):
        return os.path.join(self.run_dir, name)

    def save(self, sess, step, snapshot=False):
        """Write the latest checkpoint and, with `snapshot`, fcn.ckpt_<step> too."""
        latest = self._prefix(LATEST_NAME)
        if os.path.exists(latest + ".index"):
            _link_checkpoint(latest, self._prefix(PREVIOUS_NAME))
        self._saver.save(sess, latest, write_meta_graph=False, write_state=False)
        if snapshot:
            _link_checkpoint(latest, self._prefix(SNAPSHOT_NAME.format(step=step)))
        snapshots = [SNAPSHOT_NAME.format(step=s) for s in snapshot_steps(self.run_dir)]
        # Relative names keep the run folder movable.
        tf.train.update_checkpoint_state(self.run_dir, LATEST_NAME,
                                         all_model_checkpoint_paths=snapshots + [LATEST_NAME])

    def save_best(self, sess):
        """Replace fcn.ckpt_best with the current state.

        Written complete under a staging name first. The old index goes before
        the new files are renamed in, index last, so a kill at any moment
        leaves the old best, no best, or the new best, never a mixed pair. It
        is not one of `checkpoint_candidates`: resume continues from the
        latest state, not the best.
        """
        best, staging = self._prefix(BEST_NAME), self._prefix("." + BEST_NAME + PARTIAL_SUFFIX)
        self._saver.save(sess, staging, write_meta_graph=False, write_state=False)
        if os.path.exists(best + ".index"):
            os.remove(best + ".index")
        for old in glob.glob(glob.escape(best) + ".data-*"):
            os.remove(old)
        for source in _checkpoint_files(staging):
            os.replace(source, best + source[len(staging):])

    def restore(self, sess, prefix):
        """Restore every global variable from `prefix` (one found by `newest_intact`)."""
        try:
            self._saver.restore(sess, prefix)
        except (tf.errors.OpError, ValueError) as err:
            raise SegMentorError(f"cannot restore {prefix} ({first_line(err)}): it was saved by a "
                                 f"different network; start a new run instead") from None

