"""How the modules import each other: no cycle, every module imports alone, training
and scoring do not load the drawing libraries (OpenCV, matplotlib), and the networks
(fcn_arch, nets/) know nothing of the data side.
"""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("nets", "utils", "benchmarks")
# Modules of the training, scoring and export paths, which never draw a figure or read a video.
NON_DRAWING_MODULES = ("fcn_train", "utils.training_loop", "utils.prediction", "utils.export")
DRAWING_LIBRARIES = ("cv2", "matplotlib")
# The networks: what they need (preprocessing, ImageNet statistics) lives in nets/.
NETWORK_MODULES = ("fcn_arch", "nets")
# The data side: datasets, records, converters, the feeder and its augmentation, and the
# label constants they share with training and evaluation.
DATA_SIDE = ("utils.datasets", "utils.tf_records", "utils.feeder", "utils.augmentation",
             "utils.shapes", "utils.converters", "utils.labels", "utils.check_dataset",
             "utils.camvid_to_records", "utils.pascal_voc_augmented_to_records",
             "utils.coco_stuff_to_records", "utils.folder_to_records", "utils.data_bench")


def project_modules():
    """{dotted module name: file} of every module of the project (scripts, nets, utils)."""
    modules = {path.stem: path for path in REPO_ROOT.glob("*.py")}
    for package in PACKAGES:
        for path in (REPO_ROOT / package).rglob("*.py"):
            parts = path.relative_to(REPO_ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def imported_modules(path, modules):
    """The project modules that the file at `path` imports anywhere, also inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from utils import shapes` imports the module utils.shapes
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in modules)
    return found


def import_cycles(graph):
    """Strongly connected groups of more than one module (or a module importing itself)."""
    index, lowlink, on_stack, stack, cycles = {}, {}, set(), [], []

    def visit(node):
        index[node] = lowlink[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph[node]:
            if successor not in index:
                visit(successor)
                lowlink[node] = min(lowlink[node], lowlink[successor])
            elif successor in on_stack:
                lowlink[node] = min(lowlink[node], index[successor])
        if lowlink[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph[node]:
                cycles.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_cycle_finder_sees_a_cycle():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_itself_back():
    modules = project_modules()
    graph = {name: imported_modules(path, modules) - {name} for name, path in modules.items()}
    assert "utils.datasets" in graph and "utils.shapes" in graph["utils.datasets"]
    assert import_cycles(graph) == []


def reachable_imports(graph, start):
    """Every module `start` imports, directly or through others."""
    seen, todo = set(), [start]
    while todo:
        for successor in graph[todo.pop()]:
            if successor not in seen:
                seen.add(successor)
                todo.append(successor)
    return seen


def test_the_networks_import_nothing_from_the_data_side():
    modules = project_modules()
    assert set(DATA_SIDE) <= set(modules)
    graph = {name: imported_modules(path, modules) - {name} for name, path in modules.items()}
    networks = [name for name in modules
                if name in NETWORK_MODULES or name.startswith(tuple(m + "." for m in NETWORK_MODULES))]
    assert "nets.preprocessing" in networks
    found = {name: sorted(reachable_imports(graph, name) & set(DATA_SIDE)) for name in networks}
    assert {name: data for name, data in found.items() if data} == {}


PROBE_TIMEOUT_SECS = 600
_probe = {}  # "process": the fresh interpreter, once started


def fresh_interpreter_probe():
    """The fresh interpreter that reports which drawing libraries the non-drawing modules
    load, then whether every project module imports; started once.

    Its imports take ~5 s of one core, so conftest starts it when collection is done and it
    runs beside the tests before it; the fixture below only waits for its answer."""
    if "process" not in _probe:
        probe = f"""
import importlib, json, sys
result = {{}}
for name in {list(NON_DRAWING_MODULES)!r}:
    importlib.import_module(name)
result["drawing_loaded"] = sorted(lib for lib in {list(DRAWING_LIBRARIES)!r} if lib in sys.modules)
result["failed"] = {{}}
for name in {sorted(project_modules())!r}:
    try:
        importlib.import_module(name)
    except Exception as err:
        result["failed"][name] = repr(err)
print(json.dumps(result))
"""
        _probe["process"] = subprocess.Popen([sys.executable, "-c", probe], cwd=REPO_ROOT,
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                             text=True)
    return _probe["process"]


def stop_fresh_interpreter_probe():
    """Ends a probe nobody waited for (a run stopped early by -x or Ctrl-C)."""
    process = _probe.get("process")
    if process is not None and process.poll() is None:
        process.kill()
        process.communicate()


@pytest.fixture(scope="module")
def fresh_interpreter_imports():
    process = fresh_interpreter_probe()
    stdout, stderr = process.communicate(timeout=PROBE_TIMEOUT_SECS)
    assert process.returncode == 0, stderr[-2000:]
    return json.loads(stdout.strip().splitlines()[-1])


def test_training_and_scoring_modules_load_no_drawing_library(fresh_interpreter_imports):
    assert fresh_interpreter_imports["drawing_loaded"] == []


def test_every_module_imports_in_a_fresh_interpreter(fresh_interpreter_imports):
    assert fresh_interpreter_imports["failed"] == {}
