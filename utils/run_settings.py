"""The settings of one training run as one typed, frozen object, and its step plan.

fcn_train.py builds a `RunSettings` once (from its flags, or from the runargs of
the run it resumes) and saves it as the run's `runargs` (sorted JSON, one key
per field, the step plan's keys flat beside them: `as_runargs`). Everything
that rebuilds a run reads it back through `RunSettings.from_runargs` /
`read_run_settings`: fcn_test.py and exports (the network, its size and
padding), --resume, --init_from, the benchmarks. A key that an older run
folder lacks takes its field's default here, which is what fcn_train.py
does without the flag (fcn_train's ADDED_WITH_OLD_BEHAVIOUR says where an old
run did something else).

    settings = RunSettings(basenet='resnet_v1_18', fcn8=True, learnrate=3e-4)
    settings = read_run_settings('tmp/20240131_mobilenet_v1__1')   # REQUIRED_RUNARGS checked
    write_runargs(run_dir, settings.as_runargs())
"""
import dataclasses
import os

from fcn_arch import FEATURE_STRIDE
from utils import distribute, training
from utils.augmentation import AugmentParams
from utils.checkpoints import DEFAULT_KEEP_SNAPSHOTS
from utils.datasets import DEFAULT_DATAPATH
from utils.errors import SegMentorError
from utils.fetch_checkpoints import MODELS_DIR
from utils.run_folder import RUNARGS_FILE, RUNS_DIR, read_runargs

# runargs keys without a default: what the network and the data are.
REQUIRED_RUNARGS = ("basenet", "dataset", "pixels")
# Saved as absolute paths, so a run folder means the same from any working directory.
PATH_SETTINGS = ("datapath", "modelspath", "runs_dir", "init_from")
# Settings of this invocation only, never saved in runargs.
UNSAVED_SETTINGS = ("resume", "plan")
_AUGMENT = AugmentParams()  # the flip, scale and stretch of training batches


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """Step counts of a run. Fixed when the run starts and saved in its runargs
    (under these names), so a resumed run keeps its length and lr schedule."""
    train_images: int           # training images the plan was made for
    batch_size: int
    steps_per_epoch: int
    total_steps: int
    lr_drop_steps: tuple        # global steps from which the learning rate is lower
    log_every: int
    val_every: int
    save_every: int
    snapshot_every: int

    def as_runargs(self):
        return dict(dataclasses.asdict(self), lr_drop_steps=list(self.lr_drop_steps))


PLAN_KEYS = tuple(field.name for field in dataclasses.fields(StepPlan))


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """Every setting of a training run; the defaults are fcn_train.py's flag defaults
    (its --help explains each one). None means "resolved later": pixels (the dataset's
    own), learnrate (by --scratch), val/save/snapshot_every (by the step plan)."""
    # The network (fcn_arch.arch_from_settings rebuilds it from these).
    basenet: str = "mobilenet_v1"      # thin enough to train on a laptop CPU
    extended_arch: str = "fcn"
    fcn16: bool = False
    fcn8: bool = False
    fcn4: bool = False
    trainable_upsampling: bool = False
    output_stride: int = FEATURE_STRIDE
    weight_decay: float | None = None  # None: the encoder family's own
    batch_norm_decay: float | None = None
    # The data.
    dataset: str = "shapes"            # generated on first use: works with no download
    datapath: str = DEFAULT_DATAPATH
    pixels: int | None = None          # 0: native size (--crop runs)
    crop: tuple | None = None          # (height, width)
    crop_pad: bool = True
    batch_size: int = 16
    class_weighting: str = "none"
    flip: bool = _AUGMENT.flip
    scale_range: tuple = _AUGMENT.scale_range
    stretch_range: tuple = _AUGMENT.stretch_range
    photometric: bool = _AUGMENT.photometric
    debug_overfit: int = 0
    # Where the weights start.
    modelspath: str = MODELS_DIR
    scratch: bool = False
    init_from: str | None = None
    afteriter: int | None = None
    resume: str | None = None          # never saved: the run folder itself
    # Optimisation.
    epochs: int = 13                   # shapes: val mIoU 0.84 from scratch in 7.3 min on 2 AVX2 cores
    optimizer: str = training.DEFAULT_OPTIMIZER
    learnrate: float | None = None
    momentum: float = training.DEFAULT_MOMENTUM
    epsilon: float = training.DEFAULT_EPSILON
    difflr: bool = False
    lr_policy: str = "step"
    warmup_steps: int = 0
    constantlr: bool = False
    decaylr: bool = False
    lr_schedule: tuple | None = None   # epochs
    # The run's bookkeeping.
    log_every: int = 10
    val_every: int | None = None
    # A trend, quickly; 1 scores the whole val split, as fcn_test.py does.
    val_fraction: float = 0.25
    keep_best: bool = False
    save_every: int | None = None
    snapshot_every: int | None = None
    keep_snapshots: int | None = DEFAULT_KEEP_SNAPSHOTS  # None: every snapshot kept
    runs_dir: str = RUNS_DIR
    seed: int = 0
    gpu: int | None = None
    xla: bool | None = None            # None: fcn_train's DEFAULT_XLA
    # Scale out (utils/distribute.py): local replicas (per worker with TF_CONFIG), and how
    # long a worker waits for the others. Where the run trains, not what: --resume may change them.
    replicas: int = 1
    connect_timeout: float = distribute.DEFAULT_CONNECT_TIMEOUT_SECS
    plan: StepPlan | None = None       # saved flat, under PLAN_KEYS

    @classmethod
    def from_runargs(cls, runargs):
        """From a runargs dict (or the dict of parsed flags): missing keys take the
        defaults, JSON lists become tuples, the PLAN_KEYS (when all there) make `plan`,
        and keys that are no setting (init_*: where the weights came from) are left out."""
        names = {field.name for field in dataclasses.fields(cls)} - {"plan"}
        values = {name: _frozen(value) for name, value in runargs.items() if name in names}
        if all(key in runargs for key in PLAN_KEYS):
            values["plan"] = StepPlan(**{key: _frozen(runargs[key]) for key in PLAN_KEYS})
        return cls(**values)

    def as_runargs(self):
        """What runargs holds: every setting but the UNSAVED_SETTINGS, paths absolute,
        lists for tuples, and the step plan's keys."""
        saved = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)
                 if field.name not in UNSAVED_SETTINGS}
        saved.update({name: os.path.abspath(saved[name])
                      for name in PATH_SETTINGS if saved[name]})
        saved = {name: list(value) if isinstance(value, tuple) else value
                 for name, value in saved.items()}
        if self.plan is not None:
            saved.update(self.plan.as_runargs())
        return saved

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


def _frozen(value):
    return tuple(value) if isinstance(value, list) else value


def read_run_settings(run_dir):
    """The RunSettings saved in `run_dir`; SegMentorError for a missing or damaged
    runargs, or one that lacks what the network and data are (REQUIRED_RUNARGS)."""
    return saved_run_settings(read_runargs(run_dir), run_dir)


def saved_run_settings(runargs, run_dir):
    """RunSettings of the runargs dict read from `run_dir`, checked as read_run_settings."""
    missing = [key for key in REQUIRED_RUNARGS if key not in runargs]
    if missing:
        raise SegMentorError(f"{os.path.join(run_dir, RUNARGS_FILE)} lacks {', '.join(missing)}; "
                             f"the run folder is damaged or not made by fcn_train.py")
    return RunSettings.from_runargs(runargs)
