"""The one place that imports TensorFlow and fixes how the project uses it.

seg-mentor builds static graphs (`tf.compat.v1`): tf-slim networks, a feedable
iterator and a `Session` loop. Every module takes `tf` (compat.v1), `tf2` (the
TF2 namespace, for ops whose v1 forms differ, e.g. half-pixel resize) and
`slim` from here, so the graph-mode switch and the log-noise settings happen
once, before TensorFlow prints anything or builds any op.
"""
import contextlib
import os
import sys
import warnings


def _has_nvidia_device():
    return os.path.exists("/dev/nvidia0") or os.path.exists("/dev/nvidiactl")


# TF's C++ side prints warnings for every graph; keep errors only. On a machine
# without an NVIDIA device, its CUDA probe only ever reports "no GPU" as an
# error, so silence that level too there.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if _has_nvidia_device() else "3")

# TensorFlow's x86 CPU kernels come in two sets: Eigen's and oneDNN's. It turns oneDNN on
# only for CPUs with AVX-512 VNNI/BF16 or AMX, yet oneDNN's batch norm and convolutions
# also win on AVX2-only CPUs: fcn_train's MobileNetV2 FCN16 step took 1.3x less time
# with them on a 2-core AVX2-only EPYC (see the README's Speed section). A user's own
# TF_ENABLE_ONEDNN_OPTS (0 or 1) still decides; it must be set before TensorFlow loads.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


@contextlib.contextmanager
def stderr_silenced():
    """Hide what C++ code writes to fd 2 while inside (Python exceptions still raise).

    Importing TF logs oneDNN/CUDA notices before absl logging is initialised,
    which TF_CPP_MIN_LOG_LEVEL cannot reach; the TFLite converter logs every
    pass it runs.
    """
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


# TensorFlow (>= 2.16) imports Keras 3 eagerly, and Keras' visualization helpers import
# OpenCV and matplotlib.pyplot (which picks a GUI backend) whenever they are installed.
# seg-mentor uses neither helper, so both stay hidden while TensorFlow loads (Keras then does
# without them): training and scoring never load them, and utils/visualization.py imports
# them itself when it draws.
_NOT_FOR_KERAS = ("cv2", "matplotlib")


@contextlib.contextmanager
def _modules_hidden(names):
    """Inside, `import name` raises ImportError for each of `names` not imported yet."""
    hidden = [name for name in names if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # the import system's "not importable" marker
    try:
        yield
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


with stderr_silenced(), _modules_hidden(_NOT_FOR_KERAS):
    import tensorflow as tf2
    import tf_slim as slim  # noqa: F401  (re-exported)

# tf_slim layers call the deprecated `layer.apply` on every layer of every
# graph; the warning says nothing a user can act on.
warnings.filterwarnings("ignore", message="`layer.apply` is deprecated")

tf = tf2.compat.v1
tf.disable_eager_execution()
tf.logging.set_verbosity(tf.logging.ERROR)


def session_config(num_threads=None):
    """Session options every script uses: grow GPU memory as needed rather than taking
    it all at start, so a training run and an evaluation can share one GPU.
    num_threads: CPU threads per op and ops at once (None: TensorFlow's default, the
    cores this process may run on, for both pools; tf.data's pool is sized the same).
    The default stays because nothing else measured better: on 2 cores (AVX2-only EPYC,
    the README job's step) one op at a time (inter-op 1) took 0.95x and 1.03x the
    default's step time in two alternating runs, within their noise."""
    config = tf.ConfigProto()
    config.gpu_options.allow_growth = True
    if num_threads:
        config.intra_op_parallelism_threads = num_threads
        config.inter_op_parallelism_threads = num_threads
    return config


def onednn_enabled():
    """Whether TensorFlow runs its oneDNN CPU kernels in this process (benchmarks print it
    beside their figures). Asks TensorFlow where it can, else reads the setting."""
    try:
        from tensorflow.python.util import _pywrap_util_port
        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return os.environ.get("TF_ENABLE_ONEDNN_OPTS", "0").lower() in ("1", "true")
