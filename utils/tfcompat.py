"""The one place that imports TensorFlow and fixes how the project uses it.

seg-mentor builds static graphs (`tf.compat.v1`): tf-slim networks, a feedable
iterator and a `Session` loop. Every module takes `tf` from here, so the
graph-mode switch and the log-noise setting happen once, before any op exists.
"""
import os

# TF prints several lines of CUDA/oneDNN chatter on import; keep errors only.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as _tf  # noqa: E402

tf = _tf.compat.v1
tf.disable_eager_execution()
tf.logging.set_verbosity(tf.logging.ERROR)
