"""Checkpoints of a training run: save the latest and snapshots, resume from the newest good one.

In the run folder:
    fcn.ckpt.{index,data-*}           the latest state, overwritten at every save
    fcn.ckpt_<step>.{index,data-*}    snapshots, kept
    checkpoint                        TF's state file (tf.train.latest_checkpoint finds fcn.ckpt)
Each holds every global variable: weights, batch-norm averages, optimizer
slots and the global step, so a resumed run continues exactly.

    keeper = CheckpointKeeper(run_dir)          # after the whole graph is built
    keeper.save(sess, step, snapshot=True)
    restored = keeper.restore_newest(sess)      # a path, or None when nothing was saved
"""
import glob
import os
import re

from utils.errors import SegMentorError
from utils.tfcompat import tf

LATEST_NAME = "fcn.ckpt"
SNAPSHOT_NAME = LATEST_NAME + "_{step}"
STATE_FILE = "checkpoint"
_SNAPSHOT_INDEX = re.compile(re.escape(LATEST_NAME) + r"_(\d+)\.index$")
# TF writes each checkpoint file under this infix and renames it when complete;
# a save killed midway leaves such a file behind.
_UNFINISHED_INFIX = ".tempstate"


def snapshot_steps(run_dir):
    """Steps of the snapshots in `run_dir`, ascending."""
    matches = (_SNAPSHOT_INDEX.match(name) for name in os.listdir(run_dir))
    return sorted(int(match.group(1)) for match in matches if match)


def checkpoint_candidates(run_dir):
    """Checkpoint prefixes in `run_dir`, newest first: the latest, then snapshots by step."""
    latest = os.path.join(run_dir, LATEST_NAME)
    snapshots = [os.path.join(run_dir, SNAPSHOT_NAME.format(step=step))
                 for step in reversed(snapshot_steps(run_dir))]
    return ([latest] if os.path.exists(latest + ".index") else []) + snapshots


class CheckpointKeeper:
    """Saves and restores all global variables of the current graph in `run_dir`.

    TF writes each file of a checkpoint to a temporary name and renames it
    when complete, but the data and index files are renamed one after the
    other, so a kill between the two leaves a pair that does not match.
    Restoring checks every tensor's checksum, so such a pair fails to
    restore: `restore_newest` then falls back to the next older checkpoint,
    and a half-written state is never used. The latest checkpoint is always
    written before a snapshot, so it is also the newest one.
    """

    def __init__(self, run_dir):
        self.run_dir = run_dir
        self._saver = tf.train.Saver(max_to_keep=None, save_relative_paths=True)

    def _prefix(self, name):
        return os.path.join(self.run_dir, name)


    def save(self, sess, step, snapshot=False):
        """Write the latest checkpoint and, with `snapshot`, fcn.ckpt_<step> too."""
        names = [LATEST_NAME] + ([SNAPSHOT_NAME.format(step=step)] if snapshot else [])
        for name in names:
            self._saver.save(sess, self._prefix(name), write_meta_graph=False,
                             write_state=False)
        snapshots = [SNAPSHOT_NAME.format(step=s) for s in snapshot_steps(self.run_dir)]
        # Relative names keep the run folder movable.
        tf.train.update_checkpoint_state(self.run_dir, LATEST_NAME,
                                         all_model_checkpoint_paths=snapshots + [LATEST_NAME])

    def restore_newest(self, sess, on_skip=None):
        """Restore the newest checkpoint that restores cleanly; return its prefix.

        Returns None when the folder has no checkpoint at all. Calls
        `on_skip(prefix, reason)` for each damaged one passed over, and raises
        SegMentorError when there are checkpoints but none restores.
        """
        self._remove_unfinished_files()
        candidates = checkpoint_candidates(self.run_dir)
        for prefix in candidates:
            try:
                self._saver.restore(sess, prefix)
                return prefix
            except (tf.errors.OpError, ValueError) as err:
                if on_skip:
                    on_skip(prefix, _reason(err))
        if candidates:
            raise SegMentorError(
                f"none of the {len(candidates)} checkpoints in {self.run_dir} restores "
                f"(damaged, or saved by a different network); start a new run instead")
        return None

    def _remove_unfinished_files(self):
        for path in glob.glob(os.path.join(self.run_dir, f"*{_UNFINISHED_INFIX}*")):
            os.remove(path)


def _reason(err):
    """The line of a TF error that says what is wrong (the last, before the node tag)."""
    message = getattr(err, "message", None) or str(err)
    lines = [line.strip() for line in message.splitlines()
             if line.strip() and not line.strip().startswith("[[")]
    return lines[-1] if lines else type(err).__name__
