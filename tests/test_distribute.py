"""Data-parallel training (utils/distribute.py, fcn_train.py --replicas, TF_CONFIG).

The fcn_train runs use `--debug_overfit 1 --batch_size 2`: every batch holds one image
twice, so a replica's half of it has the batch statistics of the whole and the first
loss is one device's. 64 px keeps at least 2x2 values per channel at stride 32.
Every trained run starts from the same checkpoint (--init_from), because random
initial values depend on the order a graph is built in. Step-by-step equality with
one device is checked on the training graph itself (tests/replica_equality.py):
exactly for a net without batch norm; with batch norm, what is exact.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fcn_train
from utils import distribute
from utils.datasets import load_dataset
from utils.errors import SegMentorError, run_main
from utils.feeder import Feeder
from utils.run_folder import RUNLOG_FILE, parse_runlog, read_runargs
from utils.tfcompat import session_config, tf
from tiny_dataset import write_tiny_shapes

REPO_ROOT = Path(__file__).resolve().parents[1]
DATASET = "tiny"
IMAGE_SIZE_PX = 64
NUM_IMAGES = {"train": 4, "val": 2}
STEPS = 12          # of the trained runs
SAVE_EVERY = 3      # steps: what a killed worker may cost
RUN_TIMEOUT_SECS = 600  # a loaded 2-core machine runs 4 trainings at once here


@pytest.fixture(scope="module")
def datapath(tmp_path_factory):
    """<datapath>/tiny: shapes images at 64 px, known only through its dataset.json."""
    return write_tiny_shapes(tmp_path_factory.mktemp("data"), DATASET, NUM_IMAGES, IMAGE_SIZE_PX)


# --- TF_CONFIG, devices, batch split: one line each ----------------------------------------

def tf_config(workers, index, job="worker"):
    return json.dumps({"cluster": {job: workers}, "task": {"type": job, "index": index}})


def test_a_tf_config_gives_the_cluster_and_the_chief():
    cluster = distribute.cluster_from_tf_config(json.dumps({
        "cluster": {"chief": ["a:1"], "worker": ["b:2", "c:3"]},
        "task": {"type": "worker", "index": 1}}))
    assert (cluster.addresses, cluster.address, cluster.worker_index, cluster.num_workers,
            cluster.is_chief) == (["a:1", "b:2", "c:3"], "c:3", 2, 3, False)
    assert distribute.cluster_from_tf_config(tf_config(["a:1", "b:2"], 0)).is_chief
    assert distribute.cluster_from_tf_config("") is None


@pytest.mark.parametrize("text, message", [
    ("{not json", "is not valid JSON"),
    ('{"cluster": {"worker": ["a:1"]}}', 'needs a "cluster" object and a "task" object'),
    (json.dumps({"cluster": {"ps": ["a:1"]}, "task": {"type": "ps", "index": 0}}),
     "has job 'ps'"),
    (tf_config(["a"], 0), "has 'a' in \"worker\", not host:port"),
    (tf_config(["a:1", "a:1"], 0), "lists an address twice"),
    (tf_config(["a:1", "b:2"], 2), "has task index 2; \"worker\" has 2 address(es)"),
    (tf_config(["a:1"], 0).replace('"type": "worker"', '"type": "chief"'),
     "has task type 'chief', not a job of its \"cluster\""),
])
def test_a_malformed_tf_config_is_one_line(text, message):
    with pytest.raises(SegMentorError) as error:
        distribute.cluster_from_tf_config(text)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert str(error.value).startswith("TF_CONFIG ")


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def test_a_worker_that_cannot_reach_the_chief_stops_after_the_timeout():
    chief, me = free_ports(2)
    cluster = distribute.cluster_from_tf_config(
        tf_config([f"127.0.0.1:{chief}", f"127.0.0.1:{me}"], 1))
    started = time.monotonic()
    with pytest.raises(SegMentorError) as error:
        distribute.wait_for_peers(cluster, timeout_secs=1.0)
    assert 1.0 <= time.monotonic() - started < 5
    assert (f"worker 1 (127.0.0.1:{me}) could not reach the chief 127.0.0.1:{chief} within "
            f"1 s") in str(error.value)


def train_args(datapath, runs_dir, *extra):
    return ["--dataset", DATASET, "--datapath", str(datapath), "--runs_dir", str(runs_dir),
            "--debug_overfit", "1", "--batch_size", "2", "--log_every", "1", *extra]


@pytest.mark.parametrize("extra, env, message", [
    (["--replicas", "1000"], "", "--replicas 1000 needs 1000 "),
    ([], tf_config(["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"], 0),
     "--batch_size 2 does not split evenly over 3 replicas (3 workers x 1 replicas)"),
    ([], "[1, 2]", "TF_CONFIG needs a \"cluster\" object"),
    (["--replicas", "2", "--xla"], "", "with --replicas 2 drop --xla"),
])
def test_bad_scale_out_settings_are_one_line_and_make_no_folder(datapath, tmp_path, capsys,
                                                                 monkeypatch, extra, env, message):
    monkeypatch.setenv(distribute.TF_CONFIG_VAR, env)
    code = run_main(fcn_train.main, fcn_train.build_parser(),
                    train_args(datapath, tmp_path / "runs", "--scratch", *extra))
    stderr = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(stderr) == 1 and message in stderr[0], stderr
    assert not (tmp_path / "runs").exists()


def test_gpu_and_replicas_together_are_a_flag_error(capsys):
    with pytest.raises(SystemExit):
        fcn_train.build_parser().parse_args(["--replicas", "2", "-g", "0"])
    assert "--gpu picks one GPU, --replicas uses the first N" in capsys.readouterr().err


# --- The input pipeline shards by worker --------------------------------------------------

def train_batches(datapath, batch_size, steps, **workers):
    spec = load_dataset(DATASET, str(datapath))
    with tf.Graph().as_default():
        feeder = Feeder(spec, str(datapath), batch_size, IMAGE_SIZE_PX, seed=3, pad_rgb=(0, 0, 0),
                        **workers)
        with tf.Session(config=session_config()) as sess:
            feed = {feeder.handle: feeder.train_handle(sess)}
            return [sess.run([feeder.images, feeder.labels], feed) for _ in range(steps)]


def test_workers_share_out_each_global_batch(datapath):
    """Worker w gets part w of every global batch: together exactly one worker's batches,
    with no record twice in an epoch."""
    whole = train_batches(datapath, 4, 3)
    parts = [train_batches(datapath, 4, 3, num_workers=2, worker_index=w) for w in (0, 1)]
    for step, (images, labels) in enumerate(whole):
        assert parts[0][step][0].shape == (2, IMAGE_SIZE_PX, IMAGE_SIZE_PX, 3)
        np.testing.assert_array_equal(
            np.concatenate([parts[0][step][0], parts[1][step][0]]), images)
        np.testing.assert_array_equal(
            np.concatenate([parts[0][step][1], parts[1][step][1]]), labels)


# --- Training: N replicas and several workers equal one device --------------------------------

def start_training(args, env=None):
    return subprocess.Popen([sys.executable, str(REPO_ROOT / "fcn_train.py"), *args],
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})})


def finished(process):
    out, err = process.communicate(timeout=RUN_TIMEOUT_SECS)
    return process.returncode, out, err


def only_run(runs_dir):
    (run,) = [path for path in Path(runs_dir).iterdir() if path.is_dir()]
    return run


def losses(run):
    return [line["loss"] for line in parse_runlog(run / RUNLOG_FILE) if "loss" in line]


def logged_steps(runs_dir):
    """The training steps the run in `runs_dir` has logged so far ([] before its folder)."""
    runlogs = list(Path(runs_dir).glob("*/" + RUNLOG_FILE))
    return [line["step"] for line in parse_runlog(runlogs[0]) if "loss" in line] if runlogs else []


@pytest.fixture(scope="module")
def trained(datapath, tmp_path_factory):
    """A 1-step start run, then from it, started together: one device; 2 replicas in one
    process; 2 workers on 127.0.0.1, worker 1 killed after step SAVE_EVERY + 1 and both
    resumed. Returns {name: run folder}, plus the workers' outputs."""
    root = tmp_path_factory.mktemp("runs")
    code, _, err = finished(start_training(train_args(datapath, root / "start", "--scratch",
                                                      "--epochs", "1")))
    assert code == 0, err
    common = train_args(datapath, "{runs}", "--init_from", str(only_run(root / "start")),
                        "--weight_decay", "0.01", "--epochs", str(STEPS),
                        "--save_every", str(SAVE_EVERY), "--optimizer", "momentum",
                        "--learnrate", "0.01")

    def args(runs, *extra):
        return [str(root / runs) if arg == "{runs}" else arg for arg in common] + list(extra)

    ports = free_ports(2)
    workers = [f"127.0.0.1:{port}" for port in ports]
    worker_env = [{distribute.TF_CONFIG_VAR: tf_config(workers, index)} for index in (0, 1)]
    one = start_training(args("one"))
    two = start_training(args("two", "--replicas", "2"))
    chief = start_training(args("chief"), worker_env[0])
    worker = start_training(args("worker"), worker_env[1])
    # Kill worker 1 once the chief has logged a step past its first save.
    deadline = time.monotonic() + RUN_TIMEOUT_SECS
    killed_after = None
    while killed_after is None and time.monotonic() < deadline and chief.poll() is None:
        steps = logged_steps(root / "chief")
        if steps and steps[-1] > SAVE_EVERY:
            worker.send_signal(signal.SIGKILL)
            killed_after = steps[-1]
        time.sleep(0.05)
    results = {"killed_after": killed_after, "worker_killed": finished(worker),
               "chief_lost": finished(chief)}
    chief_run = only_run(root / "chief")
    resumed = [start_training(["--resume", str(chief_run)], env) for env in worker_env]
    results["resumed"] = [finished(process) for process in resumed]
    results["one"], results["two"] = finished(one), finished(two)
    results.update(runs={name: only_run(root / name) for name in ("one", "two", "chief")},
                   worker_runs_dir=root / "worker")
    return results


@pytest.mark.slow  # trains
def test_two_replicas_run_to_the_end_from_the_loss_of_one_device(trained):
    assert trained["one"][0] == 0 and trained["two"][0] == 0, trained["two"][2]
    one, two = trained["runs"]["one"], trained["runs"]["two"]
    assert read_runargs(two)["replicas"] == 2
    assert len(losses(two)) == len(losses(one)) == STEPS
    # Same weights, same global batch: the first step's loss (before any update) agrees.
    assert losses(two)[0] == pytest.approx(losses(one)[0], rel=1e-4)


# --- The training graph: 2 replicas against one device, step by step -----------------------

def replica_equality(net, pixels, batch_size, steps, halves):
    """tests/replica_equality.py's comparison, run in a fresh process (it makes 2 logical
    CPU devices, which TensorFlow allows only before its first session)."""
    result = subprocess.run([sys.executable, str(REPO_ROOT / "tests" / "replica_equality.py"),
                             net, str(pixels), str(batch_size), str(steps), halves],
                            cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=RUN_TIMEOUT_SECS)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # builds and trains vgg_16 twice
def test_without_batch_norm_two_replicas_train_exactly_as_one_device():
    """vgg_16 (no batch norm; dropout off, as its masks are drawn per replica) at 32 px,
    each replica on other images: loss and every weight after 3 momentum steps with
    weight decay equal one device's with the same global batch."""
    result = replica_equality("vgg_16", 32, 4, 3, "distinct")
    assert result["num_replicas"] == 2 and result["copy_gap"] == 0
    assert result["losses_two"] == pytest.approx(result["losses_one"], rel=1e-5)
    assert result["losses_one"][-1] < result["losses_one"][0]  # it did train
    assert max(result["relative_gaps"].values()) < 1e-4, result["relative_gaps"]


@pytest.mark.slow  # builds mobilenet_v1 twice
def test_with_batch_norm_the_moving_statistics_take_the_mean_over_replicas():
    """mobilenet_v1 at 32 px, each replica on other images. Batch norm per replica
    changes the numbers by design (each replica normalises by its own half), so
    what is checked is exact: after one step the first batch norm's moving mean
    (its input does not depend on any normalisation yet) equals one device's, as
    the mean of the replicas' batch means is the whole batch's mean (MEAN-aggregated
    updates); and every replica's copy of every variable stays equal."""
    result = replica_equality("mobilenet_v1", 32, 4, 1, "distinct")
    assert result["copy_gap"] == 0
    first = "MobilenetV1/Conv2d_0/BatchNorm/moving_mean:0"
    assert result["relative_gaps"][first] < 1e-5
    # Its moving variance differs (4e-6 here, rounding is 6e-8): the mean of each
    # replica's own variance, which leaves out the spread between the halves.
    assert result["relative_gaps"][first.replace("mean", "variance")] > 1e-6


@pytest.mark.slow  # trains
def test_two_workers_resume_after_a_kill_and_finish_the_run(trained):
    killed_after = trained["killed_after"]
    assert killed_after is not None and killed_after < STEPS
    code, _, err = trained["chief_lost"]
    assert code == 2 and "worker 0 lost the cluster" in err and "--resume" in err, err
    for code, out, err in trained["resumed"]:
        assert code == 0, err
    chief_run = trained["runs"]["chief"]
    lines = parse_runlog(chief_run / RUNLOG_FILE)
    resumed_at = [line["step"] for line in lines if line.get("event") == "resume"]
    assert resumed_at and killed_after - SAVE_EVERY <= resumed_at[0] <= killed_after
    assert [line for line in lines if line.get("event") == "done"][0]["step"] == STEPS
    # Only the chief writes: the other worker's --runs_dir stays empty.
    assert not trained["worker_runs_dir"].exists() or not any(trained["worker_runs_dir"].iterdir())
    assert "worker finished at step" in trained["resumed"][1][1]
    assert losses(chief_run)[0] == pytest.approx(losses(trained["runs"]["one"])[0], rel=1e-4)


@pytest.fixture(scope="module")
def stopped(datapath, tmp_path_factory):
    """Two 2-replica runs, side by side: one diverging (a learning rate of 1e30, a save
    every step), one sent SIGTERM after its second logged step."""
    root = tmp_path_factory.mktemp("stopped")
    diverging = start_training(train_args(datapath, root / "nan", "--scratch", "--replicas",
                                          "2", "--learnrate", "1e30", "--save_every", "1",
                                          "--epochs", str(STEPS)))
    interrupted = start_training(train_args(datapath, root / "term", "--scratch", "--replicas",
                                            "2", "--epochs", str(STEPS)))
    deadline = time.monotonic() + RUN_TIMEOUT_SECS
    signalled_after = None
    while signalled_after is None and time.monotonic() < deadline and interrupted.poll() is None:
        steps = logged_steps(root / "term")
        if len(steps) >= 2:
            interrupted.send_signal(signal.SIGTERM)
            signalled_after = steps[-1]
        time.sleep(0.05)
    return dict(nan=finished(diverging), nan_run=only_run(root / "nan"),
                term=finished(interrupted), term_run=only_run(root / "term"),
                signalled_after=signalled_after)


def checkpoint_step(run):
    return int(tf.train.load_variable(str(run / "fcn.ckpt"), "global_step"))


@pytest.mark.slow  # trains
def test_with_replicas_a_diverging_run_stops_and_keeps_its_last_finite_checkpoint(stopped):
    code, _, err = stopped["nan"]
    assert code == 2, err
    last_line = err.strip().splitlines()[-1]
    assert "training diverged" in last_line and "try a lower --learnrate" in last_line
    error = parse_runlog(stopped["nan_run"] / RUNLOG_FILE)[-1]
    assert error["event"] == "error" and "diverged" in error["message"]
    checkpoint = str(stopped["nan_run"] / "fcn.ckpt")
    assert 0 < checkpoint_step(stopped["nan_run"]) < error["step"]
    for name, _ in tf.train.list_variables(checkpoint):
        assert np.isfinite(tf.train.load_variable(checkpoint, name)).all(), name


@pytest.mark.slow  # trains
def test_with_replicas_sigterm_saves_the_step_it_stopped_at_then_exits(stopped):
    code, _, err = stopped["term"]
    assert stopped["signalled_after"] is not None
    assert code == 128 + signal.SIGTERM and "--resume" in err, err
    lines = parse_runlog(stopped["term_run"] / RUNLOG_FILE)
    (stop,) = [line for line in lines if line.get("event") == "stop"]
    assert stop["reason"] == "SIGTERM" and stop["step"] >= stopped["signalled_after"]
    assert checkpoint_step(stopped["term_run"]) == stop["step"] < STEPS


@pytest.mark.slow  # trains
def test_a_data_parallel_run_is_an_ordinary_run_folder_for_fcn_test_and_export(trained,
                                                                                  tmp_path):
    import fcn_export, fcn_test  # noqa: E401, E402 (only this test needs them)
    from utils.export import METADATA_FILE, SAVEDMODEL_METADATA_DIR
    out = tmp_path / "savedmodel"
    assert run_main(fcn_export.main, fcn_export.build_parser(), [
        "--traindir", str(trained["runs"]["two"]), "--format", "savedmodel", "--out",
        str(out)]) == 0
    metadata = json.loads((out / SAVEDMODEL_METADATA_DIR / METADATA_FILE).read_text())
    # export checks the SavedModel against the checkpoint on the val images it wrote down
    assert metadata["step"] == STEPS and metadata["check"]["max_abs_difference"] <= 1e-4
    for name in ("two", "chief"):
        outdir = tmp_path / name
        assert run_main(fcn_test.main, fcn_test.build_parser(), [
            "--traindir", str(trained["runs"][name]), "--outdir", str(outdir),
            "--last2viz", "0"]) == 0
        metrics = json.loads((outdir / "metrics.json").read_text())
        assert metrics["num_images"] == NUM_IMAGES["val"] and 0 <= metrics["miou"] <= 1
