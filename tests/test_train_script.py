"""fcn_train.py end to end: a thin net (mobilenet_v1, --scratch) on a tiny shapes-like
dataset (64 px, batch 2), plus tboards/createlinks.

Runs are the slow part, so module fixtures start each scenario once and
several tests read its results.
"""
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fcn_arch
import fcn_train
from everyday import everyday_or_slow
from utils import files, run_settings, shapes, training, training_loop
from utils.augmentation import AugmentParams
from utils.datasets import DatasetSpec, write_dataset_meta
from utils.errors import run_main
from utils.run_folder import (RUNLOG_FILE, describe_start_weights, parse_runlog, read_runargs,
                              write_runargs)
from utils.tfcompat import tf
from tiny_dataset import write_tiny_shapes

REPO_ROOT = Path(__file__).resolve().parents[1]
DATASET = "tiny"
IMAGE_SIZE_PX = 64
NUM_IMAGES = {"train": 8, "val": 8}
BATCH_SIZE = 2
STEPS_PER_EPOCH = NUM_IMAGES["train"] // BATCH_SIZE
RUN_TIMEOUT_SECS = 300


@pytest.fixture(scope="module")
def datapath(tmp_path_factory):
    """<datapath>/tiny: shapes images at 64 px, known only through its dataset.json."""
    return write_tiny_shapes(tmp_path_factory.mktemp("data"), DATASET, NUM_IMAGES, IMAGE_SIZE_PX)


def train_args(datapath, runs_dir, *extra):
    return ["--scratch", "--fcn16", "--dataset", DATASET, "--datapath", str(datapath),
            "--runs_dir", str(runs_dir), "--batch_size", str(BATCH_SIZE), "--log_every", "1",
            *extra]


def start_training(*args):
    return subprocess.Popen([sys.executable, str(REPO_ROOT / "fcn_train.py"), *args],
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def run_folders(runs_dir):
    return sorted(path for path in Path(runs_dir).iterdir() if path.is_dir())


def saved_step(prefix):
    return int(tf.train.load_variable(str(prefix), "global_step"))


def wait_for_step(process, runlog, min_step):
    """Block until the run's latest session has logged a step >= min_step; return it."""
    deadline = time.time() + RUN_TIMEOUT_SECS
    while time.time() < deadline:
        if process.poll() is not None:
            pytest.fail(f"training ended before step {min_step}: {process.communicate()[1]}")
        lines = parse_runlog(runlog) if runlog.exists() else []
        sessions = [i for i, line in enumerate(lines) if line.get("event") in ("start", "resume")]
        steps = ([line["step"] for line in lines[sessions[-1]:] if "loss" in line]
                 if sessions else [])
        if steps and steps[-1] >= min_step:
            return steps[-1]
        time.sleep(0.05)
    pytest.fail(f"no step {min_step} within {RUN_TIMEOUT_SECS} s")


# --- Two short runs started at the same moment ------------------------------------------------

TWO_RUNS_EPOCHS = 2
TWO_RUNS_STEPS = TWO_RUNS_EPOCHS * STEPS_PER_EPOCH
TWO_RUNS_EVERY = TWO_RUNS_STEPS // 2  # validation and snapshots half way and at the end


@pytest.fixture(scope="module")
def two_runs(datapath, tmp_path_factory):
    runs_dir = tmp_path_factory.mktemp("runs")
    args = train_args(datapath, runs_dir, "--epochs", str(TWO_RUNS_EPOCHS),
                      "--val_every", str(TWO_RUNS_EVERY), "--snapshot_every", str(TWO_RUNS_EVERY))
    processes = [start_training(*args) for _ in range(2)]
    outputs = [process.communicate(timeout=RUN_TIMEOUT_SECS) for process in processes]
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr
    return runs_dir, [stdout for stdout, _ in outputs]


@pytest.mark.slow  # trains
def test_two_runs_started_together_get_their_own_folders(two_runs):
    runs_dir, _ = two_runs
    names = [path.name for path in run_folders(runs_dir)]
    today = time.strftime("%Y%m%d")
    assert names == [f"{today}_mobilenet_v1__1", f"{today}_mobilenet_v1__2"]


@pytest.mark.slow  # trains
def test_run_folder_holds_runargs_runlog_events_and_checkpoints(two_runs):
    run_dir = run_folders(two_runs[0])[0]
    files = {path.name for path in run_dir.iterdir()}
    assert {"runargs", "runlog", "checkpoint", "fcn.ckpt.index",
            f"fcn.ckpt_{TWO_RUNS_EVERY}.index", f"fcn.ckpt_{TWO_RUNS_STEPS}.index"} <= files
    assert any(name.startswith("events.out.tfevents") for name in files)
    assert saved_step(run_dir / "fcn.ckpt") == TWO_RUNS_STEPS
    assert saved_step(run_dir / f"fcn.ckpt_{TWO_RUNS_EVERY}") == TWO_RUNS_EVERY


@pytest.mark.slow  # trains
def test_runargs_hold_the_resolved_settings_fcn_test_needs(two_runs, datapath):
    runargs = read_runargs(run_folders(two_runs[0])[0])
    assert runargs["pixels"] == IMAGE_SIZE_PX  # resolved from the dataset's default
    assert runargs["learnrate"] == fcn_train.SCRATCH_LEARNRATE  # resolved from --scratch
    assert runargs["datapath"] == str(datapath) and os.path.isabs(runargs["datapath"])
    assert {k: runargs[k] for k in ("basenet", "extended_arch", "fcn16", "fcn8", "fcn4",
                                    "trainable_upsampling", "dataset")} == dict(
        basenet="mobilenet_v1", extended_arch="fcn", fcn16=True, fcn8=False, fcn4=False,
        trainable_upsampling=False, dataset=DATASET)
    assert "resume" not in runargs
    # The step plan, so a resume keeps the schedule whatever the defaults or the data become.
    assert {k: runargs[k] for k in run_settings.PLAN_KEYS} == dict(
        train_images=NUM_IMAGES["train"], batch_size=BATCH_SIZE,
        steps_per_epoch=STEPS_PER_EPOCH, total_steps=TWO_RUNS_STEPS,
        lr_drop_steps=[round(TWO_RUNS_STEPS * (1 - training.ANNEAL_FRACTION))],  # the default
        log_every=1, val_every=TWO_RUNS_EVERY,
        save_every=max(STEPS_PER_EPOCH, training_loop.MIN_DEFAULT_EVERY_STEPS),
        snapshot_every=TWO_RUNS_EVERY)
    assert (runargs["flip"], runargs["scale_range"], runargs["stretch_range"]) == (
        AugmentParams().flip, list(AugmentParams().scale_range),
        list(AugmentParams().stretch_range))
    assert runargs["batch_norm_decay"] == training.DEFAULT_BATCH_NORM_DECAY


@pytest.mark.slow  # trains
def test_runlog_has_step_validation_and_closing_lines(two_runs):
    run_dir = run_folders(two_runs[0])[0]
    lines = parse_runlog(run_dir / RUNLOG_FILE)
    assert lines[0]["event"] == "start" and lines[0]["total_steps"] == TWO_RUNS_STEPS
    assert lines[0]["init"] == "scratch"
    step_lines = [line for line in lines if "loss" in line]
    assert [line["step"] for line in step_lines] == list(range(1, TWO_RUNS_STEPS + 1))
    assert set(step_lines[0]) == {"step", "epoch", "loss", "lr", "train_miou", "img_s"}
    assert step_lines[-1]["epoch"] == TWO_RUNS_EPOCHS
    val_lines = [line for line in lines if "val_miou" in line]
    assert [line["step"] for line in val_lines] == [TWO_RUNS_EVERY, TWO_RUNS_STEPS]
    assert all(0 <= line["val_miou"] <= 1 and line["val_loss"] > 0 for line in val_lines)
    done = lines[-1]
    assert done["event"] == "done" and done["step"] == TWO_RUNS_STEPS
    # The closing line splits the run's time: the steps, and each phase of the rest.
    phases = ("start", "first_step", "validation", "saves", "logging", "other")
    assert done["step_secs"] > 0 and all(done[f"{phase}_secs"] >= 0 for phase in phases)
    assert done["step_secs"] + done["outside_secs"] == pytest.approx(done["secs"], abs=0.6)
    assert sum(done[f"{phase}_secs"] for phase in phases) == pytest.approx(
        done["outside_secs"], abs=0.5)
    # Each run ends its console output with one summary line naming its folder.
    finished = sorted(stdout.strip().splitlines()[-1].split()[1] for stdout in two_runs[1])
    assert finished == [str(path) for path in run_folders(two_runs[0])]


@pytest.mark.slow  # trains
def test_events_hold_scalars_and_coloured_images(two_runs):
    run_dir = run_folders(two_runs[0])[0]
    tags = set()
    for events_file in run_dir.glob("events.out.tfevents*"):
        for event in tf.train.summary_iterator(str(events_file)):
            tags.update(value.tag for value in event.summary.value)
    assert {"train/loss", "train/lr", "train/miou", "train/images_per_sec",
            "val/loss", "val/miou"} <= tags
    for name in ("val/input", "val/prediction", "val/ground_truth"):
        assert any(tag.startswith(name + "/image") for tag in tags), name


@pytest.mark.slow  # trains
def test_createlinks_links_every_run_and_drops_stale_links(two_runs, tmp_path):
    runs_dir = two_runs[0]
    (tmp_path / "gone_run").symlink_to(tmp_path / "no_such_folder")
    command = [sys.executable, str(REPO_ROOT / "tboards" / "createlinks"),
               "--runs_dir", str(runs_dir), "--links_dir", str(tmp_path)]
    for _ in range(2):  # re-running is safe
        subprocess.run(command, check=True, capture_output=True)
    links = sorted(tmp_path.iterdir())
    assert [link.name for link in links] == [path.name for path in run_folders(runs_dir)]
    assert all(link.is_symlink() and link.resolve() == (runs_dir / link.name).resolve()
               for link in links)


# --- One run stopped by SIGTERM, resumed, killed by SIGKILL, resumed to the end ------------------

CHAIN_EPOCHS = 15
CHAIN_STEPS = CHAIN_EPOCHS * STEPS_PER_EPOCH
SAVE_EVERY = 5


@pytest.fixture(scope="module")
def interrupted_run(datapath, tmp_path_factory):
    runs_dir = tmp_path_factory.mktemp("runs")
    first = start_training(*train_args(datapath, runs_dir, "--epochs", str(CHAIN_EPOCHS),
                                       "--save_every", str(SAVE_EVERY), "--val_every", "20",
                                       "--decaylr"))
    deadline = time.time() + RUN_TIMEOUT_SECS
    while not run_folders(runs_dir) and time.time() < deadline:
        time.sleep(0.05)
    run_dir = run_folders(runs_dir)[0]
    runlog = run_dir / RUNLOG_FILE
    wait_for_step(first, runlog, 3)
    first.send_signal(signal.SIGTERM)
    first_stderr = first.communicate(timeout=RUN_TIMEOUT_SECS)[1]
    stopped_step = parse_runlog(runlog)[-1]["step"]

    resume_args = ["--resume", str(run_dir)]
    second = start_training(*resume_args)
    last_logged = wait_for_step(second, runlog, stopped_step + 2 * SAVE_EVERY)
    second.kill()
    second.communicate(timeout=RUN_TIMEOUT_SECS)

    third = subprocess.run([sys.executable, str(REPO_ROOT / "fcn_train.py"), *resume_args],
                           cwd=REPO_ROOT, capture_output=True, text=True,
                           timeout=RUN_TIMEOUT_SECS)
    return dict(run_dir=run_dir, codes=[first.returncode, second.returncode, third.returncode],
                first_stderr=first_stderr, third_stderr=third.stderr,
                stopped_step=stopped_step, killed_after_step=last_logged,
                lines=parse_runlog(runlog))


def events(lines, name):
    return [line for line in lines if line.get("event") == name]


@pytest.mark.slow  # trains
def test_sigterm_saves_then_exits(interrupted_run):
    assert interrupted_run["codes"][0] == 128 + signal.SIGTERM
    stop = events(interrupted_run["lines"], "stop")
    assert len(stop) == 1 and stop[0]["reason"] == "SIGTERM"
    assert "--resume" in interrupted_run["first_stderr"]
    first_resume = events(interrupted_run["lines"], "resume")[0]
    assert first_resume["init"] == str(interrupted_run["run_dir"] / "fcn.ckpt")


@pytest.mark.slow  # trains
def test_resume_continues_the_step_count(interrupted_run):
    lines, stopped_step = interrupted_run["lines"], interrupted_run["stopped_step"]
    first_resume = lines.index(events(lines, "resume")[0])
    assert lines[first_resume]["step"] == stopped_step
    assert lines[first_resume]["total_steps"] == CHAIN_STEPS
    assert lines[first_resume + 1]["step"] == stopped_step + 1


@pytest.mark.slow  # trains
def test_a_killed_run_resumes_and_ends_at_the_planned_step(interrupted_run):
    assert interrupted_run["codes"][1:] == [-signal.SIGKILL, 0], interrupted_run["third_stderr"]
    lines = interrupted_run["lines"]
    assert [line["event"] for line in lines if "event" in line] == [
        "start", "stop", "resume", "resume", "done"]
    second_resume = events(lines, "resume")[1]["step"]
    # At most the steps since the last save are lost (more only if the kill hit a save).
    assert interrupted_run["stopped_step"] < second_resume <= interrupted_run["killed_after_step"]
    assert events(lines, "done")[0]["step"] == CHAIN_STEPS
    assert saved_step(interrupted_run["run_dir"] / "fcn.ckpt") == CHAIN_STEPS
    logged_steps = {line["step"] for line in lines if "loss" in line}
    assert logged_steps == set(range(1, CHAIN_STEPS + 1))


@pytest.mark.slow  # trains
def test_logged_learning_rates_follow_the_decaylr_drops_across_resumes(interrupted_run):
    drop_steps = [round(CHAIN_STEPS / 3), round(2 * CHAIN_STEPS / 3)]
    assert read_runargs(interrupted_run["run_dir"])["lr_drop_steps"] == drop_steps
    for line in interrupted_run["lines"]:
        if "lr" in line:  # step k ran from global step k - 1, with the rate of that step
            drops = sum(line["step"] - 1 >= drop for drop in drop_steps)
            expected = fcn_train.SCRATCH_LEARNRATE / training.LR_DROP_FACTOR ** drops
            assert line["lr"] == pytest.approx(expected, rel=1e-3), line


@pytest.mark.slow  # trains
def test_resuming_a_finished_run_says_so_in_one_line(interrupted_run):
    runlog_before = (interrupted_run["run_dir"] / RUNLOG_FILE).read_text()
    result = subprocess.run([sys.executable, str(REPO_ROOT / "fcn_train.py"), "--resume",
                             str(interrupted_run["run_dir"])], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=RUN_TIMEOUT_SECS)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (f"{interrupted_run['run_dir']} already finished at step "
                                     f"{CHAIN_STEPS} of {CHAIN_STEPS}: nothing to resume")
    assert (interrupted_run["run_dir"] / RUNLOG_FILE).read_text() == runlog_before


# --- The real-data recipe: crops, poly lr with warmup, nesterov, photometric, best checkpoint ---

RECIPE_CROP = (48, 56)   # smaller than the 64 px images: windows at native scale
RECIPE_BATCH_SIZE = 4    # 2 steps per epoch
RECIPE_STEPS = NUM_IMAGES["train"] // RECIPE_BATCH_SIZE


@pytest.fixture(scope="module")
def recipe_run(datapath, tmp_path_factory):
    """A 2-step run with every recipe flag, validated (whole val split) after each step."""
    runs_dir = tmp_path_factory.mktemp("recipe_runs")
    process = start_training(*train_args(
        datapath, runs_dir, "--fcn8", "--crop", *map(str, RECIPE_CROP), "--lr_policy", "poly",
        "--warmup_steps", "1", "--optimizer", "nesterov", "--learnrate", "0.01",
        "--weight_decay", "1e-4", "--photometric", "--class_weighting", "median-frequency",
        "--val_fraction", "1", "--keep_best", "--batch_size", str(RECIPE_BATCH_SIZE),
        "--epochs", "1", "--val_every", "1"))
    _, stderr = process.communicate(timeout=RUN_TIMEOUT_SECS)
    assert process.returncode == 0, stderr
    (run_dir,) = run_folders(runs_dir)
    return run_dir


@pytest.mark.slow
def test_the_recipe_flags_are_saved_and_resolve_to_native_size_evaluation(recipe_run):
    runargs = read_runargs(recipe_run)
    assert {k: runargs[k] for k in ("crop", "crop_pad", "pixels", "lr_policy", "warmup_steps",
                                    "optimizer", "photometric", "val_fraction", "keep_best",
                                    "total_steps", "lr_drop_steps")} == dict(
        crop=list(RECIPE_CROP), crop_pad=True, pixels=0, lr_policy="poly", warmup_steps=1,
        optimizer="nesterov", photometric=True, val_fraction=1.0, keep_best=True,
        total_steps=RECIPE_STEPS, lr_drop_steps=[])  # poly has no drops


@pytest.mark.slow
def test_the_recipe_run_validates_on_every_val_image_and_keeps_its_best(recipe_run):
    lines = parse_runlog(recipe_run / RUNLOG_FILE)
    assert lines[0]["val_images"] == NUM_IMAGES["val"]
    # Warmup of 1 step: step 0 runs at (0 + 1) / 1 of the rate; poly decays from step 1,
    # where it starts at the full rate (exact values at more steps: tests/test_training.py).
    assert [line["lr"] for line in lines if "lr" in line] == pytest.approx([0.01, 0.01])
    val_mious = [line["val_miou"] for line in lines if "val_miou" in line and "event" not in line]
    best = [line for line in lines if line.get("event") == training_loop.BEST_EVENT]
    assert len(val_mious) == RECIPE_STEPS and best[0]["step"] == 1
    assert [line["val_miou"] for line in best] == [
        m for i, m in enumerate(val_mious) if m > max(val_mious[:i], default=-1)]
    assert saved_step(recipe_run / "fcn.ckpt_best") == best[-1]["step"]


@pytest.mark.slow
def test_fcn_test_scores_a_crop_run_at_native_size_and_its_best_checkpoint(recipe_run, tmp_path):
    import fcn_test  # noqa: E402 (only this test needs it)
    scores = {}
    for extra, checkpoint in (([], "fcn.ckpt"), (["--best"], "fcn.ckpt_best")):
        outdir = tmp_path / checkpoint
        assert run_main(fcn_test.main, fcn_test.build_parser(), [
            "--traindir", str(recipe_run), "--outdir", str(outdir), "--last2viz", "0",
            *extra]) == 0
        metrics = json.loads((outdir / "metrics.json").read_text())
        assert (metrics["pixels"], metrics["num_images"], metrics["checkpoint"]) == (
            0, NUM_IMAGES["val"], checkpoint)
        scores[checkpoint] = metrics["miou"]
    # Validation of the whole split during training is fcn_test's computation: the same
    # mIoU for the same weights (the runlog keeps 4 significant digits).
    lines = parse_runlog(recipe_run / RUNLOG_FILE)
    last_val = [line for line in lines if "val_miou" in line and "event" not in line][-1]
    best = [line for line in lines if line.get("event") == training_loop.BEST_EVENT][-1]
    assert scores["fcn.ckpt"] == pytest.approx(last_val["val_miou"], rel=1e-3)
    assert scores["fcn.ckpt_best"] == pytest.approx(best["val_miou"], rel=1e-3)


# --- Starting from another run (--init_from) ---------------------------------------------------

def args_without_scratch(*argv):
    return [arg for arg in argv if arg != "--scratch"]


def restored_values(run_checkpoint, num_classes, **decoder):
    """(values after restoring `run_checkpoint` into a fresh mobilenet_v1 FCN, decoder note)."""
    with tf.Graph().as_default():
        arch = fcn_arch.FcnArch(num_classes, is_training=False, net="mobilenet_v1", **decoder)
        arch.build_net(tf.placeholder(tf.float32, [1, IMAGE_SIZE_PX, IMAGE_SIZE_PX, 3]))
        restore, note = fcn_arch.make_run_restorer(arch, str(run_checkpoint))
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            restore(sess)
            return sess.run({v.op.name: v for v in tf.global_variables()}), note


def saved_run_checkpoint(path, num_classes, **decoder):
    """A run-like checkpoint at `path` without training: a mobilenet_v1 FCN's random weights,
    batch-norm statistics moved off their initial values, and a global step."""
    with tf.Graph().as_default():
        arch = fcn_arch.FcnArch(num_classes, is_training=False, net="mobilenet_v1", **decoder)
        arch.build_net(tf.placeholder(tf.float32, [1, IMAGE_SIZE_PX, IMAGE_SIZE_PX, 3]))
        tf.train.get_or_create_global_step()
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            for variable in tf.global_variables():
                if variable.op.name.endswith("moving_variance"):
                    variable.load(np.full(variable.shape, 0.5, np.float32), sess)
            tf.train.Saver().save(sess, str(path), write_meta_graph=False)
    return path


@pytest.fixture(scope="module")
def source_run(datapath, tmp_path_factory):
    """A run folder to start from, made without training: runargs of a mobilenet_v1 FCN16 on
    the tiny dataset, fcn.ckpt and two snapshots (steps TWO_RUNS_EVERY, TWO_RUNS_STEPS)."""
    run_dir = tmp_path_factory.mktemp("source_run")
    write_runargs(run_dir, dict(basenet="mobilenet_v1", fcn16=True, dataset=DATASET,
                                datapath=str(datapath), pixels=IMAGE_SIZE_PX))
    saved_run_checkpoint(run_dir / "fcn.ckpt", len(shapes.CLASS_NAMES), fcn16=True)
    for step in (TWO_RUNS_EVERY, TWO_RUNS_STEPS):
        for path in run_dir.glob("fcn.ckpt.*"):
            os.link(path, run_dir / path.name.replace("fcn.ckpt", f"fcn.ckpt_{step}"))
    return run_dir


def test_run_restorer_takes_the_encoder_and_a_matching_decoder(source_run):
    num_classes = len(shapes.CLASS_NAMES)
    checkpoint = source_run / f"fcn.ckpt_{TWO_RUNS_EVERY}"
    stored = dict(tf.train.list_variables(str(checkpoint)))
    encoder_weight, decoder_weight = "MobilenetV1/Conv2d_0/weights", "decoder/score_32s/weights"
    values, note = restored_values(checkpoint, num_classes, fcn16=True)
    assert note == "restored"
    for name in (encoder_weight, "MobilenetV1/Conv2d_0/BatchNorm/moving_variance",
                 decoder_weight, "decoder/score_16s/biases"):
        np.testing.assert_array_equal(values[name], tf.train.load_variable(str(checkpoint), name))
    assert "global_step" in stored and "global_step" not in values  # steps start anew
    # Another class count, or a finer decoder: the encoder only; the note says why.
    for classes, decoder, why in ((3, dict(fcn16=True), "has shape [5], the network needs [3]"),
                                  (num_classes, dict(fcn8=True), "missing, first decoder/score_8s")):
        values, note = restored_values(checkpoint, classes, **decoder)
        assert note.startswith("fresh (") and why in note, note
        np.testing.assert_array_equal(values[encoder_weight],
                                      tf.train.load_variable(str(checkpoint), encoder_weight))
        assert not np.array_equal(values[decoder_weight][..., :3],
                                  tf.train.load_variable(str(checkpoint), decoder_weight)[..., :3])


@pytest.mark.slow
def test_init_from_records_where_the_weights_came_from(two_runs, datapath, tmp_path, capsys):
    source = run_folders(two_runs[0])[0]
    args = args_without_scratch(*train_args(datapath, tmp_path, "--epochs", "1"))
    code, stderr = run_in_process(args + ["--init_from", str(source), "--afteriter",
                                          str(TWO_RUNS_EVERY), "--fcn8"], capsys)
    assert code == 0, stderr
    run_dir = run_folders(tmp_path)[0]
    runargs = read_runargs(run_dir)
    snapshot = str(source / f"fcn.ckpt_{TWO_RUNS_EVERY}")
    assert (runargs["init_from"], runargs["afteriter"]) == (str(source), TWO_RUNS_EVERY)
    assert (runargs["init_checkpoint"], runargs["init_step"]) == (snapshot, TWO_RUNS_EVERY)
    assert runargs["init_decoder"].startswith("fresh (")  # FCN16 run, FCN8 decoder
    assert runargs["learnrate"] == fcn_train.FINETUNE_LEARNRATE
    init_lines = [line for line in parse_runlog(run_dir / RUNLOG_FILE)
                  if line.get("event") == "init_from"]
    assert len(init_lines) == 1 and init_lines[0]["checkpoint"] == snapshot
    assert saved_step(run_dir / "fcn.ckpt") == STEPS_PER_EPOCH  # its own count, from 0
    assert describe_start_weights(runargs) == (
        f"weights started from {snapshot} at step {TWO_RUNS_EVERY}; decoder "
        f"{runargs['init_decoder']}")
    scratch_runargs = read_runargs(run_folders(two_runs[0])[0])
    assert describe_start_weights(scratch_runargs) == "weights started from scratch (random)"


def test_init_from_errors_are_one_line(source_run, datapath, tmp_path, capsys):
    source = source_run
    other_net = tmp_path / "other_net"
    other_net.mkdir()
    for path in source.glob("fcn.ckpt.*"):
        os.link(path, other_net / path.name)
    write_runargs(other_net, dict(read_runargs(source), basenet="resnet_v1_18"))
    no_checkpoint = tmp_path / "no_checkpoint"
    no_checkpoint.mkdir()
    write_runargs(no_checkpoint, read_runargs(source))
    cases = [
        ([str(other_net)], "was trained with --basenet resnet_v1_18, not mobilenet_v1"),
        ([str(no_checkpoint)], f"no checkpoint (fcn.ckpt*) in {no_checkpoint}"),
        ([str(tmp_path / "absent")], "not found"),
        ([str(source), "--afteriter", "3"],
         f"available --afteriter values: {TWO_RUNS_EVERY}, {TWO_RUNS_STEPS}"),
    ]
    runs_dir = tmp_path / "runs"
    for init_args, message in cases:
        args = args_without_scratch(*train_args(datapath, runs_dir, "--init_from", *init_args))
        code, stderr = run_in_process(args, capsys)
        assert code == 2 and message in stderr[-1], (init_args, stderr)
    assert not runs_dir.exists() or not run_folders(runs_dir)


# --- The graph of every net and option, built but not run ---------------------------------------

GRAPH_SPEC = DatasetSpec(name="toy", class_names=("sky", "road", "car"),
                         colors=((0, 0, 255), (128, 128, 128), (255, 0, 0)),
                         class_frequencies=(0.5, 0.4, 0.1), default_pixels=IMAGE_SIZE_PX,
                         converter="none")


def build_training_graph(*argv):
    """fcn_train's settings from `argv` and its graph on placeholders: (tf.Graph, TrainGraph)."""
    settings = fcn_train.run_settings(fcn_train.build_parser().parse_args(list(argv)))
    with tf.Graph().as_default() as graph:
        images = tf.placeholder(tf.float32, [BATCH_SIZE, IMAGE_SIZE_PX, IMAGE_SIZE_PX, 3])
        labels = tf.placeholder(tf.int32, [BATCH_SIZE, IMAGE_SIZE_PX, IMAGE_SIZE_PX])
        plan = training_loop.make_plan(settings, NUM_IMAGES["train"])
        train_graph = training_loop.build_graph(settings, GRAPH_SPEC, images, labels,
                                                plan.lr_drop_steps, plan.total_steps)
    return graph, train_graph


# Nothing here differs between the two everyday nets (both have batch norm): one daily.
@pytest.mark.parametrize("net", everyday_or_slow(fcn_arch.FEATURE_EXTRACTORS,
                                                 everyday=["mobilenet_v1"]))
def test_the_training_graph_builds_for_every_net_with_its_defaults(net):
    graph, train_graph = build_training_graph("--basenet", net, "--fcn16", "--scratch")
    num_classes = len(GRAPH_SPEC.class_names)
    assert train_graph.eval_logits.shape.as_list() == [BATCH_SIZE, IMAGE_SIZE_PX,
                                                       IMAGE_SIZE_PX, num_classes]
    assert train_graph.train_confusion.shape.as_list() == [num_classes, num_classes]
    # Batch-norm moving averages update with each step, for the nets that have them.
    has_batch_norm = fcn_arch.FEATURE_EXTRACTORS[net].has_batch_norm
    assert bool(graph.get_collection(tf.GraphKeys.UPDATE_OPS)) == has_batch_norm
    trainable = [v.op.name for v in graph.get_collection(tf.GraphKeys.TRAINABLE_VARIABLES)]
    assert not any("upsample" in name for name in trainable)  # bilinear, fixed by default


def xla_marked_op_types(graph):
    marked = set()
    for op in graph.get_operations():
        try:
            if op.get_attr("_XlaCompile"):
                marked.add(op.type)
        except ValueError:  # no such attribute: not in a JIT scope
            pass
    return marked


def first_losses(graph, train_graph, steps):
    with graph.as_default(), tf.Session(graph=graph) as sess:
        sess.run(tf.global_variables_initializer())
        return [sess.run(train_graph.step_fetches())["loss"] for _ in range(steps)]


# Batch norm over few numbers amplifies rounding: at 32 px and batch 2 the stride-32 layer
# normalises 2 values per channel, and XLA's and oneDNN's last-bit differences (1e-7 at the
# first layer, 5e-5 by the twelfth) became an 18% gap in the loss one step later. At 64 px
# and batch 8 (32 values there) the gap after one and two steps is 0.1%: the comparison
# is then about XLA, not about that amplification.
XLA_TEST_PIXELS, XLA_TEST_BATCH = 64, 8


def xla_and_plain_graphs():
    """{flag: (graph, TrainGraph)} of the same small training with and without --xla."""
    runs = {}
    for xla_flag in ("--xla", "--no-xla"):
        settings = fcn_train.run_settings(fcn_train.build_parser().parse_args(
            ["--scratch", "--fcn16", "--optimizer", "momentum", xla_flag]))
        with tf.Graph().as_default() as graph:
            tf.set_random_seed(0)
            shape = [XLA_TEST_BATCH, XLA_TEST_PIXELS, XLA_TEST_PIXELS]
            images = tf.random.uniform(shape + [3], 0, 255, seed=1)
            labels = tf.random.uniform(shape, 0, len(GRAPH_SPEC.class_names), tf.int32, seed=2)
            train_graph = training_loop.build_graph(settings, GRAPH_SPEC, images, labels, (), 10)
        runs[xla_flag] = graph, train_graph
    return runs


@pytest.mark.slow  # XLA compiles the towers and their gradients
def test_xla_compiles_the_towers_and_trains_as_without_it():
    runs = xla_and_plain_graphs()
    marked = xla_marked_op_types(runs["--xla"][0])
    assert {"Conv2D", "Conv2DBackpropFilter", "SparseSoftmaxCrossEntropyWithLogits"} <= marked
    assert "DenseBincount" not in marked and not any("Apply" in op for op in marked)
    assert not xla_marked_op_types(runs["--no-xla"][0])
    with_xla, without = (first_losses(*runs[flag], steps=3) for flag in ("--xla", "--no-xla"))
    # XLA's kernels sum in another order: float32 rounding differs in the last bits
    # (4e-6 apart at first, 1e-3 and 5e-4 after one and two steps on an AVX2 EPYC).
    assert with_xla[0] == pytest.approx(without[0], rel=1e-4)
    assert with_xla[1:] == pytest.approx(without[1:], rel=1e-2)


def test_the_training_graph_builds_with_every_option():
    graph, train_graph = build_training_graph(
        "--basenet", "mobilenet_v1", "--fcn8", "--extended_arch", "fcn_refine", "--difflr",
        "--class_weighting", "median-frequency", "--trainable_upsampling",
        "--optimizer", "momentum", "--decaylr")
    trainable = {v.op.name for v in graph.get_collection(tf.GraphKeys.TRAINABLE_VARIABLES)}
    assert any(name.startswith("decoder/head_") for name in trainable)  # the refine decoder
    assert any("upsample" in name for name in trainable)
    momentum_slots = {v.op.name for v in graph.get_collection(tf.GraphKeys.GLOBAL_VARIABLES)
                      if v.op.name.endswith("/Momentum")}
    assert momentum_slots == {name + "/Momentum" for name in trainable}
    # --difflr: the encoder and the new layers are updated by two optimizers.
    update_scopes = {op.name.split("/")[0] for op in graph.get_operations()
                     if op.type.endswith("ApplyMomentum")}
    assert len(update_scopes) == 2


@pytest.mark.parametrize("arch", list(fcn_arch.ARCHS))
def test_weight_decay_reaches_every_decoder_convolution(arch):
    fcn_flags = ["--fcn8"] if arch in fcn_arch.FCN_FAMILY else []  # the others tap their own
    # The train tower alone, as build_graph makes it from fcn_train's settings: the optimizer
    # and the eval tower add no regularizer, only graph-building time.
    settings = fcn_train.run_settings(fcn_train.build_parser().parse_args(
        ["--basenet", "mobilenet_v1", *fcn_flags, "--extended_arch", arch,
         "--weight_decay", "0.001", "--scratch"]))
    with tf.Graph().as_default() as graph:
        fcn_arch.arch_from_settings(settings, len(GRAPH_SPEC.class_names), is_training=True
                                    ).build_net(tf.placeholder(tf.float32, [1, 64, 64, 3]))
    decoder_convs = {v.op.name.rsplit("/", 1)[0]
                     for v in graph.get_collection(tf.GraphKeys.TRAINABLE_VARIABLES)
                     if v.op.name.startswith(fcn_arch.DECODER_SCOPE + "/")
                     and v.op.name.endswith("/weights")}
    # Each L2 term is named <layer>/kernel/Regularizer/... (tf_slim builds Keras layers).
    regularized = {loss.op.name.split("/kernel/Regularizer/")[0]
                   for loss in graph.get_collection(tf.GraphKeys.REGULARIZATION_LOSSES)}
    assert decoder_convs and decoder_convs <= regularized


# --- Errors -----------------------------------------------------------------------------------

def run_in_process(argv, capsys):
    code = run_main(fcn_train.main, fcn_train.build_parser(), argv)
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.slow  # trains
def test_nan_loss_stops_cleanly_and_keeps_the_last_checkpoint(datapath, tmp_path, capsys):
    # A learning rate of 1e30 sends the weights to ~1e30 after one step: activations,
    # batch-norm statistics and the loss overflow within a step or two.
    code, stderr = run_in_process(train_args(datapath, tmp_path, "--learnrate", "1e30",
                                             "--save_every", "1"), capsys)
    assert code == 2
    assert "training diverged" in stderr[-1] and "try a lower --learnrate" in stderr[-1]
    run_dir = run_folders(tmp_path)[0]
    error = parse_runlog(run_dir / RUNLOG_FILE)[-1]
    assert error["event"] == "error" and "diverged" in error["message"]
    assert 0 < saved_step(run_dir / "fcn.ckpt") < error["step"]
    for name, _ in tf.train.list_variables(str(run_dir / "fcn.ckpt")):
        assert np.isfinite(tf.train.load_variable(str(run_dir / "fcn.ckpt"), name)).all(), name


@pytest.mark.slow  # trains
def test_labels_outside_the_class_list_stop_with_one_line(datapath, tmp_path, capsys):
    # The same records, described as a dataset with only two classes.
    fewer_classes = tmp_path / "data" / DATASET
    fewer_classes.mkdir(parents=True)
    meta = json.loads((datapath / DATASET / "dataset.json").read_text())
    for name in ("training.tfrecords", "validation.tfrecords"):
        (fewer_classes / name).symlink_to(datapath / DATASET / name)
    write_dataset_meta(fewer_classes, dict(meta, class_names=meta["class_names"][:2],
                                           colors=meta["colors"][:2],
                                           class_frequencies=[0.5, 0.5]))
    code, stderr = run_in_process(train_args(tmp_path / "data", tmp_path / "runs"), capsys)
    assert code == 2
    assert "Traceback" not in "\n".join(stderr)  # above it only the progress bar
    assert stderr[-1].startswith("fcn_train.py: error: records in ")
    assert "label value 2" in stderr[-1] and "0..1" in stderr[-1]  # found, and allowed


def test_missing_pretrained_checkpoint_says_where_and_leaves_no_folder(datapath, tmp_path,
                                                                       capsys):
    args = [arg for arg in train_args(datapath, tmp_path / "runs") if arg != "--scratch"]
    code, stderr = run_in_process(args + ["--modelspath", str(tmp_path)], capsys)
    assert code == 2
    assert str(tmp_path / "mobilenet_v1_1.0_224.ckpt") in stderr[-1]
    assert "--scratch" in stderr[-1] and "--modelspath" in stderr[-1]
    assert not (tmp_path / "runs").exists() or not run_folders(tmp_path / "runs")


def interrupt_after(function):
    """`function`, then a SIGTERM to this process, as a user's `kill` right after it."""
    def interrupted(*args, **kwargs):
        result = function(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return result
    return interrupted


def sigterm_exit_line(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_main(fcn_train.main, fcn_train.build_parser(), argv)
    assert exit_info.value.code == 128 + signal.SIGTERM
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_sigterm_before_the_run_folder_says_nothing_was_kept(datapath, tmp_path, capsys,
                                                             monkeypatch):
    monkeypatch.setattr(fcn_train, "load_dataset", interrupt_after(fcn_train.load_dataset))
    assert sigterm_exit_line(train_args(datapath, tmp_path), capsys) == (
        "stopped by SIGTERM before a run folder was made: nothing was kept")
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_sigterm_before_the_first_save_then_a_full_disk_then_a_resume(datapath, tmp_path,
                                                                      capsys, monkeypatch):
    """A start interrupted before its first save, resumed on a disk too full for a
    checkpoint, then resumed with room: each says what it kept and the last finishes."""
    args = train_args(datapath, tmp_path, "--epochs", "1")
    with monkeypatch.context() as patch:
        patch.setattr(fcn_train, "write_runargs", interrupt_after(fcn_train.write_runargs))
        line = sigterm_exit_line(args, capsys)
    (run_dir,) = run_folders(tmp_path)
    assert line == (f"stopped by SIGTERM before the first save: {run_dir} holds no checkpoint "
                    f"(settings and log only); --resume {run_dir} starts it from step 0")
    assert not list(run_dir.glob("fcn.ckpt*"))

    with monkeypatch.context() as patch:  # 5 MB free: not enough for mobilenet_v1's ~39 MB
        patch.setattr(files, "free_bytes", lambda path: 5 * files.MB)
        code, stderr = run_in_process(["--resume", str(run_dir)], capsys)
    assert code == 2
    assert f"{run_dir} holds no checkpoint: its start failed or was interrupted before the " \
           f"first save; training it from step 0" in stderr
    assert re.fullmatch(rf"fcn_train.py: error: no space left on {run_dir}: 5.0 MB free, a "
                        rf"checkpoint needs \d+\.\d MB; free some space or use another folder",
                        stderr[-1]), stderr[-1]
    assert sorted(path.name for path in run_dir.iterdir()) == sorted([  # nothing half-way
        ".lock", "runargs", "runlog", *[path.name for path in run_dir.glob("events.*")]])
    assert parse_runlog(run_dir / RUNLOG_FILE)[-1]["event"] == "error"

    code, stderr = run_in_process(["--resume", str(run_dir)], capsys)
    assert code == 0, stderr
    assert saved_step(run_dir / "fcn.ckpt") == STEPS_PER_EPOCH
    assert [line["event"] for line in parse_runlog(run_dir / RUNLOG_FILE) if "event" in line] == [
        "resume", "error", "resume", "done"]


@pytest.mark.slow
def test_a_file_size_limit_at_the_first_save_is_one_line_and_leaves_no_temporary_file(
        datapath, tmp_path):
    """RLIMIT_FSIZE makes every write past 16 MB fail (EFBIG), as a full disk would."""
    limit_bytes = 16 * files.MB  # above the events file (its graph: ~5 MB), below a checkpoint

    def limit_file_size():  # Python ignores SIGXFSZ, so writes fail instead of killing it
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "fcn_train.py"), *train_args(datapath, tmp_path,
                                                                      "--epochs", "1")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_SECS,
        preexec_fn=limit_file_size)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    (run_dir,) = run_folders(tmp_path)
    assert result.stderr.strip().splitlines()[-1] == (
        f"fcn_train.py: error: file size limit reached writing a checkpoint in {run_dir} "
        f"(ulimit -f, or the file system's largest file); raise the limit or use another folder")
    assert not [path.name for path in run_dir.iterdir()
                if "tempstate" in path.name or path.name.endswith(".partial")]
    assert not list(run_dir.glob("fcn.ckpt*"))


@pytest.mark.parametrize("argv, message", [
    (["--basenet", "nope"], "argument --basenet: invalid choice: 'nope'"),
    (["--batch_size", "-3"], "argument --batch_size: must be > 0, got -3"),
    (["--epochs", "two"], "argument --epochs: invalid int value: 'two'"),
    (["--momentum", "1"], "argument --momentum: must be >= 0 and < 1, got 1"),
    (["--batch_norm_decay", "0"], "argument --batch_norm_decay: must be > 0 and < 1, got 0"),
    (["-g", "-2"], "argument -g/--gpu: must be >= -1, got -2"),
    (["--decaylr", "--lr_schedule", "3"], "--decaylr and --lr_schedule each set the "
                                          "learning-rate schedule: give one"),
    (["--constantlr", "--decaylr"], "--decaylr and --constantlr each set the learning-rate"),
    (["--epochs", "5", "--lr_schedule", "2", "5"], "--lr_schedule epochs must increase strictly "
                                                   "and lie inside the 5 --epochs, got 2 5"),
    (["--lr_schedule", "3", "3"], "--lr_schedule epochs must increase strictly"),
    (["--scratch", "--modelspath", "/models"], "--modelspath would be unused"),
    (["--scratch", "--difflr"], "with --scratch every layer is new"),
    (["--optimizer", "momentum", "--epsilon", "0.1"], "--epsilon is Adam's; --optimizer "
                                                      "momentum has none"),
    (["--basenet", "vgg_16", "--batch_norm_decay", "0.9"], "--basenet vgg_16 has no batch "
                                                           "norm: drop --batch_norm_decay"),
    (["--scale_range", "1.5", "0.5"], "--scale_range LOW HIGH needs LOW <= HIGH, got 1.5 0.5"),
    (["--stretch_range", "0", "1"], "argument --stretch_range: must be > 0, got 0"),
    (["--debug_overfit", "4", "--no-flip"], "--debug_overfit trains without augmentation, so "
                                            "--flip would be unused"),
    (["--resume", "tmp/x", "--epochs", "3"], "--resume takes every setting from tmp/x/runargs"),
    (["--lr_policy", "poly", "--decaylr"], "--decaylr sets the drops of --lr_policy step; "
                                           "--lr_policy poly has none"),
    (["--crop", "64", "64", "--pixels", "64"], "--pixels would be unused: drop one of them"),
    (["--no-crop_pad"], "--no-crop_pad is about --crop windows"),
    (["--crop", "64"], "argument --crop: expected 2 arguments"),
    (["--val_fraction", "0"], "argument --val_fraction: must be > 0 and <= 1, got 0"),
    (["--lr_policy", "linear"], "argument --lr_policy: invalid choice: 'linear'"),
    (["--debug_overfit", "4", "--photometric"], "--photometric would be unused"),
    (["--init_from", "tmp/x", "--scratch"], "--init_from takes the weights from tmp/x: drop "
                                            "--scratch"),
    (["--init_from", "tmp/x", "--modelspath", "m"], "drop --modelspath"),
    (["--afteriter", "4"], "--afteriter picks a snapshot of the --init_from run"),
    (["--extended_arch", "linknet", "--fcn16"], "--extended_arch linknet taps its own strides"),
    (["--basenet", "inception_v1", "--output_stride", "8"],
     "--output_stride 8 needs atrous convolution, which inception_v1 lacks"),
    (["--output_stride", "4"], "argument --output_stride: invalid choice: 4"),
    (["--extended_arch", "segnet"], "argument --extended_arch: invalid choice: 'segnet'"),
])
def test_bad_flags_give_one_line_and_exit_code_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        fcn_train.build_parser().parse_args(argv)
    stderr = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2
    assert len(stderr) == 1 and stderr[0].startswith("fcn_train.py: error: ")
    assert message in stderr[0]


def test_flag_values_at_their_limits_are_accepted():
    args = fcn_train.build_parser().parse_args(
        ["--momentum", "0", "--no-flip", "--scale_range", "1", "1", "--lr_schedule", "1", "2.5",
         "-g", "-1"])
    assert (args.momentum, args.flip, args.scale_range, args.lr_schedule, args.gpu) == (
        0.0, False, [1.0, 1.0], [1.0, 2.5], -1)


def test_warmup_longer_than_training_is_one_line_and_makes_no_folder(datapath, tmp_path, capsys):
    code, stderr = run_in_process(train_args(datapath, tmp_path, "--epochs", "1",
                                             "--warmup_steps", str(STEPS_PER_EPOCH)), capsys)
    assert code == 2 and stderr == [
        f"fcn_train.py: error: --warmup_steps {STEPS_PER_EPOCH} is not shorter than the "
        f"{STEPS_PER_EPOCH} training steps: lower --warmup_steps or raise --epochs"]
    assert not list(tmp_path.iterdir())


@pytest.mark.slow  # a fresh interpreter
def test_user_errors_reach_the_shell_as_one_line_without_traceback(datapath, tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "fcn_train.py"), "--dataset", "nosuch",
         "--datapath", str(datapath), "--runs_dir", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_SECS)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("fcn_train.py: error: unknown dataset 'nosuch'")
    assert DATASET in last  # names the datasets it did find
    assert not list(tmp_path.iterdir())
