"""Shared test setup: the repo root on sys.path, TF in graph mode, quiet logs."""
import pathlib
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import utils.tfcompat  # noqa: E402,F401  (graph mode before any test builds ops)
