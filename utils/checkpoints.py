"""Checkpoints of a training run: save the latest and snapshots, resume from the newest intact one.

In the run folder:
    fcn.ckpt.{index,data-*}           the latest state, replaced at every save
    fcn.ckpt_prev.{index,data-*}      the state before a save in progress (hard links, no copy)
    fcn.ckpt_<step>.{index,data-*}    snapshots: the model only, the newest `keep_snapshots` kept
    fcn.ckpt_best.{index,data-*}      with --keep_best: the model of the best val mIoU so far
    checkpoint                        TF's state file (tf.train.latest_checkpoint finds fcn.ckpt)
fcn.ckpt and fcn.ckpt_prev hold every global variable: weights, batch-norm
averages, optimizer slots and the global step (GLOBAL_STEP_NAME), so a resumed
run continues from the same state. Snapshots and fcn.ckpt_best hold the model
variables (weights, batch-norm averages, global step) without the optimizer
slots, a third of Adam's size; a run resumed from a snapshot starts with a
fresh optimizer state. Rotation never deletes fcn.ckpt_best.

Disk: between saves fcn.ckpt_prev is a second name of fcn.ckpt, so a run
folder holds one full state plus the snapshots; a save needs room for one more
full state (and a snapshot), checked before it starts.

    keeper = CheckpointKeeper(run_dir, model_variables, keep_snapshots=5)  # after the graph
    keeper.save(sess, step, snapshot=True)
    resume_from = newest_intact(run_dir)        # before the graph: Checkpoint(prefix, step) or None
    start_from = pick_checkpoint(run_dir, step)  # newest intact or snapshot <step>; error if none
    keeper.restore(sess, resume_from.prefix)    # False: model only, fresh optimizer state
"""
import dataclasses
import glob
import os
import re
import shutil

from utils.errors import SegMentorError, first_line
from utils.files import (PARTIAL_SUFFIX, atomic_path, disk_full_errors, remove_quietly,
                         require_free_space)
from utils.tfcompat import tf

LATEST_NAME = "fcn.ckpt"
PREVIOUS_NAME = LATEST_NAME + "_prev"
SNAPSHOT_NAME = LATEST_NAME + "_{step}"
BEST_NAME = LATEST_NAME + "_best"
# Name of the step counter variable (tf.train.get_or_create_global_step) in every checkpoint.
GLOBAL_STEP_NAME = "global_step"
_SNAPSHOT_INDEX = re.compile(re.escape(LATEST_NAME) + r"_(\d+)\.index$")
DEFAULT_KEEP_SNAPSHOTS = 5
# TF writes each checkpoint file under this infix and renames it when complete;
# a save killed midway leaves such a file behind.
_UNFINISHED_INFIX = ".tempstate"
# TF's state file `checkpoint` is written as checkpoint.tmp<random>, then renamed.
_UNFINISHED_STATE = "checkpoint.tmp*"
# Room a checkpoint needs beyond its tensors: the index (one entry per variable, a
# few hundred bytes each in ours) and the file system's block rounding.
_CHECKPOINT_OVERHEAD_BYTES = 1 << 20


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
    """Delete the leftovers of writes killed midway: TF's temporary checkpoint and state
    files and our `.partial` files. Only while holding the run folder's lock
    (utils.run_folder.RunFolderLock): a live trainer's save in progress looks the same."""
    patterns = (f"*{_UNFINISHED_INFIX}*", _UNFINISHED_STATE, f".*{PARTIAL_SUFFIX}*")
    for pattern in patterns:
        for path in glob.glob(os.path.join(glob.escape(run_dir), pattern)):
            remove_quietly(path)


def _remove_temporaries(prefix):
    """Delete what a failed TF save of `prefix` left (its .tempstate files)."""
    for path in glob.glob(glob.escape(prefix) + f"*{_UNFINISHED_INFIX}*"):
        remove_quietly(path)


def _remove_checkpoint(prefix):
    """Delete a checkpoint's files, index first: a half-deleted one is no candidate."""
    for path in reversed(_checkpoint_files(prefix)):
        remove_quietly(path)


def variables_bytes(variables):
    """Bytes the tensors of `variables` take in a checkpoint."""
    return sum(v.shape.num_elements() * v.dtype.base_dtype.size for v in variables)


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
        if os.path.exists(target) and os.path.samefile(source, target):
            continue  # already a second name of it
        with atomic_path(target) as partial:
            try:
                os.link(source, partial)
            except OSError:
                shutil.copyfile(source, partial)


class CheckpointKeeper:
    """Saves and restores the variables of the current graph in `run_dir`.

    TF writes each file of a checkpoint to a temporary name and renames it
    when complete, but the data and index files are renamed one after the
    other, so a kill between the two leaves a latest checkpoint whose files do
    not match. A save therefore keeps the intact state as fcn.ckpt_prev until
    the new fcn.ckpt has been written and read back; only then does
    fcn.ckpt_prev become a second name of it again. Whatever moment a kill
    hits, one of the two is intact, and `newest_intact` (which reads every
    tensor back) picks it, so a resumed run loses at most the steps since the
    last save. A latest checkpoint this keeper has not verified (a damaged one
    that resume passed over) never replaces fcn.ckpt_prev.

    `model_variables`: what snapshots hold (default: every global variable);
    `keep_snapshots`: how many of the newest to keep (None: all);
    `verified`: the prefix `newest_intact` returned, known intact.
    """

    def __init__(self, run_dir, model_variables=None, keep_snapshots=DEFAULT_KEEP_SNAPSHOTS,
                 verified=None):
        self.run_dir = run_dir
        self.keep_snapshots = keep_snapshots
        all_variables = tf.global_variables()
        model_variables = list(model_variables or all_variables)
        self._saver = tf.train.Saver(all_variables, max_to_keep=None, save_relative_paths=True)
        self._model_saver = tf.train.Saver(model_variables, max_to_keep=None,
                                           save_relative_paths=True)
        self._model_names = {v.op.name for v in model_variables}
        self.full_bytes = variables_bytes(all_variables) + _CHECKPOINT_OVERHEAD_BYTES
        self.snapshot_bytes = variables_bytes(model_variables) + _CHECKPOINT_OVERHEAD_BYTES
        self._latest_verified = verified == self._prefix(LATEST_NAME)

    def _prefix(self, name):
        return os.path.join(self.run_dir, name)

    def save(self, sess, step, snapshot=False):
        """Write the latest checkpoint and, with `snapshot`, fcn.ckpt_<step> too.

        A full disk is a SegMentorError before anything is written; a save that
        fails midway removes its temporary files and leaves the intact state.
        """
        snapshot = snapshot and self.keep_snapshots != 0
        needed = self.full_bytes + (self.snapshot_bytes if snapshot else 0)
        require_free_space(self.run_dir, needed, "a checkpoint")
        latest, previous = self._prefix(LATEST_NAME), self._prefix(PREVIOUS_NAME)
        with disk_full_errors(self.run_dir, "a checkpoint", needed):
            if self._latest_verified:
                _link_checkpoint(latest, previous)
            # else: fcn.ckpt is damaged or unverified, and fcn.ckpt_prev (or a snapshot)
            # holds the state resumed from; it stays until the new save reads back.
            self._latest_verified = False
            self._write(self._saver, sess, latest)
            _verify_save(latest)
            self._latest_verified = True
            _link_checkpoint(latest, previous)
            if snapshot:
                self._write(self._model_saver, sess, self._prefix(SNAPSHOT_NAME.format(step=step)))
                self._drop_old_snapshots()
            snapshots = [SNAPSHOT_NAME.format(step=s) for s in snapshot_steps(self.run_dir)]
            # Relative names keep the run folder movable.
            tf.train.update_checkpoint_state(self.run_dir, LATEST_NAME,
                                             all_model_checkpoint_paths=snapshots + [LATEST_NAME])

    @staticmethod
    def _write(saver, sess, prefix):
        try:
            saver.save(sess, prefix, write_meta_graph=False, write_state=False)
        except BaseException:  # a second Ctrl-C too: leave no half file behind
            _remove_temporaries(prefix)
            raise

    def _drop_old_snapshots(self):
        if self.keep_snapshots is None:  # a run of an older version: it kept every snapshot
            return
        for step in snapshot_steps(self.run_dir)[:-self.keep_snapshots]:
            _remove_checkpoint(self._prefix(SNAPSHOT_NAME.format(step=step)))

    def save_best(self, sess):
        """Replace fcn.ckpt_best with the current model (no optimizer state).

        Written complete under a staging name first. The old index goes before
        the new files are renamed in, index last, so a kill at any moment
        leaves the old best, no best, or the new best, never a mixed pair. It
        is not one of `checkpoint_candidates`: resume continues from the
        latest state, not the best. A full disk is refused before writing.
        """
        require_free_space(self.run_dir, self.snapshot_bytes, "the best checkpoint")
        best, staging = self._prefix(BEST_NAME), self._prefix("." + BEST_NAME + PARTIAL_SUFFIX)
        with disk_full_errors(self.run_dir, "the best checkpoint", self.snapshot_bytes):
            try:
                self._write(self._model_saver, sess, staging)
            except BaseException:
                _remove_checkpoint(staging)
                raise
            if os.path.exists(best + ".index"):
                os.remove(best + ".index")
            for old in glob.glob(glob.escape(best) + ".data-*"):
                os.remove(old)
            for source in _checkpoint_files(staging):
                os.replace(source, best + source[len(staging):])

    def restore(self, sess, prefix):
        """Restore from `prefix` (one found by `newest_intact`). Returns True when it held
        the optimizer state too, False for a snapshot (model only: the optimizer starts fresh)."""
        try:
            stored = set(tf.train.NewCheckpointReader(prefix).get_variable_to_shape_map())
            full = {v.op.name for v in tf.global_variables()} <= stored
            saver = self._saver if full or not self._model_names <= stored else self._model_saver
            saver.restore(sess, prefix)
        except (tf.errors.OpError, ValueError) as err:
            raise SegMentorError(f"cannot restore {prefix} ({first_line(err)}): it was saved by a "
                                 f"different network; start a new run instead") from None
        return saver is self._saver


def _verify_save(prefix):
    """SegMentorError when the checkpoint just written does not read back whole."""
    try:
        _read_every_tensor(prefix)
    except Exception as err:  # TF raises several error types for damaged files
        raise SegMentorError(f"the checkpoint just written to {prefix} does not read back "
                             f"({first_line(err)}); the disk may be failing; "
                             f"{os.path.basename(prefix)}_prev keeps the state before it") from None
