"""Shared test setup: the repo root on sys.path, TF in graph mode, quiet logs, and the
fresh-interpreter import probe started as soon as the tests are chosen."""
import pathlib
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import utils.tfcompat  # noqa: E402,F401  (graph mode before any test builds ops)

PROBE_FIXTURE = "fresh_interpreter_imports"


def _probe_module():
    return sys.modules.get("test_imports")


def pytest_collection_finish(session):
    """Start test_imports' fresh interpreter now when a chosen test needs it: it then imports
    on the idle core while the tests collected before it run (~5 s off an everyday run)."""
    if hasattr(session.config, "workerinput"):
        return  # a pytest-xdist worker: only the one that runs the probe's tests starts it
    if any(PROBE_FIXTURE in getattr(item, "fixturenames", ()) for item in session.items):
        _probe_module().fresh_interpreter_probe()


def pytest_sessionfinish(session):
    if _probe_module() is not None:
        _probe_module().stop_fresh_interpreter_probe()
