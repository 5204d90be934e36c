"""Training building blocks: run folder, runargs, runlog, loss, class weights,
lr schedules, optimizers, checkpoints, step plan and the end of a run
(utils/run_folder.py, utils/training.py, utils/checkpoints.py, utils/training_loop.py)."""
import datetime
import errno
import json
import os
import signal
import stat
import threading

import numpy as np
import pytest

from types import SimpleNamespace

from utils import checkpoints, files, inference, run_folder, training, training_loop
from utils.datasets import DatasetSpec
from utils.labels import IGNORE_LABEL
from utils.errors import SegMentorError
from utils.run_settings import RunSettings
from utils.tfcompat import tf

DATE = datetime.date(2024, 1, 31)


# --- run folder --------------------------------------------------------------------

def test_run_dirs_are_numbered_per_date_and_net(tmp_path):
    names = [os.path.basename(run_folder.create_run_dir(tmp_path, net, DATE))
             for net in ("mobilenet_v1", "mobilenet_v1", "vgg_16", "mobilenet_v1")]
    assert names == ["20240131_mobilenet_v1__1", "20240131_mobilenet_v1__2",
                     "20240131_vgg_16__1", "20240131_mobilenet_v1__3"]
    assert os.path.basename(run_folder.create_run_dir(tmp_path, "vgg_16")).startswith(
        datetime.date.today().strftime("%Y%m%d") + "_vgg_16__")


def test_run_dirs_claimed_at_the_same_moment_differ(tmp_path):
    num_runs = 16
    start = threading.Barrier(num_runs)
    claimed = []

    def claim():
        start.wait()
        claimed.append(run_folder.create_run_dir(tmp_path, "mobilenet_v1", DATE))

    threads = [threading.Thread(target=claim) for _ in range(num_runs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(claimed)) == num_runs
    assert sorted(os.listdir(tmp_path)) == sorted(
        f"20240131_mobilenet_v1__{n}" for n in range(1, num_runs + 1))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_an_unwritable_runs_dir_is_a_user_error_naming_the_flag(tmp_path):
    tmp_path.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(SegMentorError, match=f"cannot create a run folder in {tmp_path}.*"
                                                 f"--runs_dir"):
            run_folder.create_run_dir(tmp_path, "mobilenet_v1", DATE)
    finally:
        tmp_path.chmod(stat.S_IRWXU)


def test_a_runs_dir_below_a_file_is_a_user_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(SegMentorError, match="--runs_dir"):
        run_folder.create_run_dir(tmp_path / "file" / "runs", "mobilenet_v1", DATE)


def test_runargs_round_trip_as_sorted_json(tmp_path):
    settings = {"pixels": 64, "basenet": "mobilenet_v1", "fcn16": True, "lr_schedule": [2.0, 4.5],
                "weight_decay": None}
    run_folder.write_runargs(tmp_path, settings)
    assert run_folder.read_runargs(tmp_path) == settings
    text = (tmp_path / run_folder.RUNARGS_FILE).read_text()
    assert list(json.loads(text)) == sorted(settings)
    assert run_folder.is_run_dir(tmp_path)
    assert os.listdir(tmp_path) == [run_folder.RUNARGS_FILE]  # no partial file left


def test_missing_or_corrupt_runargs_is_a_user_error(tmp_path):
    with pytest.raises(SegMentorError, match="not a training run folder"):
        run_folder.read_runargs(tmp_path)
    (tmp_path / run_folder.RUNARGS_FILE).write_text('{"basenet": ')
    with pytest.raises(SegMentorError, match="damaged"):
        run_folder.read_runargs(tmp_path)


def test_runlog_lines_parse_back(tmp_path):
    with run_folder.RunLog(tmp_path) as log:
        log.event("start", step=0, run=str(tmp_path))
        line = log.write(step=300, epoch=2.1, loss=0.41234, lr=3e-4, train_miou=0.61, img_s=9.8)
        log.write(step=300, val_loss=0.5, val_miou=0.58)
        log.event("error", step=301, message='loss is NaN;\n it\'s "bad"')
    assert line == "step=300 epoch=2.1 loss=0.4123 lr=0.0003 train_miou=0.61 img_s=9.8"
    with run_folder.RunLog(tmp_path) as log:  # a resumed run appends
        log.event("resume", step=300)
    lines = run_folder.parse_runlog(tmp_path / run_folder.RUNLOG_FILE)
    assert [entry.get("event") for entry in lines] == ["start", None, None, "error", "resume"]
    assert lines[1] == dict(step=300, epoch=2.1, loss=0.4123, lr=3e-4, train_miou=0.61, img_s=9.8)
    assert lines[2] == dict(step=300, val_loss=0.5, val_miou=0.58)
    assert lines[3]["message"] == 'loss is NaN; it\'s "bad"'
    assert lines[0]["run"] == str(tmp_path)


# --- loss and scores ------------------------------------------------------------------

def numpy_loss(logits, labels, weights=None):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    valid = labels != IGNORE_LABEL
    safe = np.where(valid, labels, 0)
    nll = -np.take_along_axis(log_probs, safe[..., None], axis=-1)[..., 0]
    pixel_weights = valid * (1.0 if weights is None else weights[safe])
    return (nll * pixel_weights).sum() / valid.sum()


def random_batch(num_classes=4, shape=(2, 5, 6), seed=0):
    rng = np.random.RandomState(seed)
    logits = rng.normal(0, 2, shape + (num_classes,)).astype(np.float32)
    labels = rng.randint(0, num_classes, shape).astype(np.int32)
    labels[rng.rand(*shape) < 0.3] = IGNORE_LABEL
    return logits, labels


@pytest.mark.parametrize("weights", [None, np.array([0.5, 1.0, 2.0, 4.0])])
def test_loss_counts_valid_pixels_only_and_matches_numpy(weights):
    logits, labels = random_batch()
    changed = logits.copy()
    changed[labels == IGNORE_LABEL] = 100.0  # nothing under an ignored pixel may matter
    with tf.Graph().as_default(), tf.Session() as sess:
        logits_in = tf.placeholder(tf.float32, logits.shape)
        loss = training.segmentation_loss(logits_in, tf.constant(labels), IGNORE_LABEL, weights)
        value = sess.run(loss, {logits_in: logits})
        value_changed = sess.run(loss, {logits_in: changed})
    assert value == pytest.approx(numpy_loss(logits, labels, weights), rel=1e-5)
    assert value_changed == pytest.approx(value, rel=1e-6)


def test_loss_of_an_all_ignored_batch_is_zero():
    labels = np.full((1, 3, 3), IGNORE_LABEL, np.int32)
    with tf.Graph().as_default(), tf.Session() as sess:
        loss = training.segmentation_loss(tf.ones([1, 3, 3, 2]), tf.constant(labels), IGNORE_LABEL)
        assert sess.run(loss) == 0.0


@pytest.mark.parametrize("num_classes, ignored_fraction", [(5, 0.3), (1, 0.5), (3, 1.0)])
def test_batch_confusion_equals_the_numpy_confusion_matrix(num_classes, ignored_fraction):
    rng = np.random.RandomState(1)
    logits = rng.normal(size=(3, 7, 9, num_classes)).astype(np.float32)
    labels = rng.randint(0, num_classes, (3, 7, 9)).astype(np.int32)
    labels[rng.rand(*labels.shape) < ignored_fraction] = IGNORE_LABEL
    with tf.Graph().as_default(), tf.Session() as sess:
        labels_in = tf.placeholder(tf.int32, [None, None, None])  # shapes known only at run time
        conf = sess.run(training.batch_confusion(tf.constant(logits), labels_in, num_classes,
                                                 IGNORE_LABEL), {labels_in: labels})
    expected = inference.confusion_matrix(labels, logits.argmax(-1), num_classes, IGNORE_LABEL)
    assert conf.dtype == np.int64
    np.testing.assert_array_equal(conf, expected)


# --- class weights ------------------------------------------------------------------

def spec_with(frequencies):
    names = tuple(f"c{i}" for i in range(4))
    return DatasetSpec(name="toy", class_names=names, colors=(), class_frequencies=frequencies,
                       default_pixels=64, converter="make-toy")


def test_class_weights_from_frequencies():
    spec = spec_with((0.5, 0.25, 0.25, 0.0))
    assert training.class_weights("none", spec) is None
    inverse = training.class_weights("inverse-frequency", spec)
    np.testing.assert_allclose(inverse, [2 / 3, 4 / 3, 4 / 3, 0.0])
    # the average training pixel keeps weight 1
    assert np.dot(inverse, spec.class_frequencies) == pytest.approx(1.0)
    np.testing.assert_allclose(training.class_weights("median-frequency", spec),
                               [0.5, 1.0, 1.0, 0.0])
    enet = training.class_weights("enet", spec)
    raw = 1 / np.log(1.02 + np.array([0.5, 0.25, 0.25]))
    np.testing.assert_allclose(enet, list(raw / np.dot(raw, [0.5, 0.25, 0.25])) + [0.0])
    assert np.dot(enet, spec.class_frequencies) == pytest.approx(1.0)
    assert enet[1] / enet[0] == pytest.approx(np.log(1.52) / np.log(1.27))  # milder than 2x


def test_class_weighting_without_frequencies_is_a_user_error():
    with pytest.raises(SegMentorError, match="no class frequencies.*--class_weighting none"):
        training.class_weights("median-frequency", spec_with(None))


# --- learning-rate schedule --------------------------------------------------------

@pytest.mark.parametrize("schedule, drop_epochs, expected", [
    ("anneal", (), {0: 1.0, 479: 1.0, 480: 0.1, 599: 0.1}),
    ("constant", (), {0: 1.0, 599: 1.0}),
    ("thirds", (), {0: 1.0, 199: 1.0, 200: 0.1, 399: 0.1, 400: 0.01, 599: 0.01}),
    ("epochs", (2.5, 1), {0: 1.0, 9: 1.0, 10: 0.1, 24: 0.1, 25: 0.01, 599: 0.01}),
])
def test_learning_rate_at_steps(schedule, drop_epochs, expected):
    total_steps, steps_per_epoch = 600, 10
    drops = training.lr_drop_steps(schedule, total_steps, steps_per_epoch, drop_epochs)
    with tf.Graph().as_default(), tf.Session() as sess:
        step = tf.placeholder(tf.int64, [])
        lr = training.learning_rate(1.0, step, "step", total_steps, drops)
        values = {s: sess.run(lr, {step: s}) for s in expected}
    assert values == pytest.approx(expected, rel=1e-6)


POLY_WARMUP = {0: 0.05, 1: 0.1, 2: 0.1, 6: 0.1 * 0.5 ** 0.9, 9: 0.1 * (1 / 8) ** 0.9}
COSINE_WARMUP = {0: 0.05, 1: 0.1, 2: 0.1, 6: 0.05, 9: 0.05 * (1 + np.cos(7 * np.pi / 8))}


@pytest.mark.parametrize("policy, drops, expected", [
    # Base 0.1, 10 steps, warmup 2: steps 0-1 at 1/2 and 2/2 of the rate, then the
    # decay runs over steps 2..10 (progress (step - 2) / 8).
    ("poly", (), POLY_WARMUP),
    ("cosine", (), COSINE_WARMUP),
    ("step", (1, 8), {0: 0.05, 1: 0.01, 7: 0.01, 8: 0.001, 9: 0.001}),  # warmup times the drops
])
def test_lr_policies_with_warmup_at_chosen_steps(policy, drops, expected):
    with tf.Graph().as_default(), tf.Session() as sess:
        step = tf.placeholder(tf.int64, [])
        lr = training.learning_rate(0.1, step, policy, total_steps=10, drop_steps=drops,
                                    warmup_steps=2)
        values = {s: sess.run(lr, {step: s}) for s in expected}
    assert values == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("policy", ["poly", "cosine"])
def test_poly_and_cosine_start_at_the_base_rate_without_warmup(policy):
    with tf.Graph().as_default(), tf.Session() as sess:
        step = tf.placeholder(tf.int64, [])
        lr = training.learning_rate(0.1, step, policy, total_steps=4)
        assert sess.run(lr, {step: 0}) == pytest.approx(0.1)
        assert 0 < sess.run(lr, {step: 3}) < sess.run(lr, {step: 2}) < 0.1


def test_warmup_not_shorter_than_training_is_one_line():
    with pytest.raises(SegMentorError, match=r"^--warmup_steps 9 is not shorter than the 9 "
                                             r"training steps: lower --warmup_steps or raise "
                                             r"--epochs$"):
        training_loop.make_plan(plan_settings(warmup_steps=9), num_train_images=10)
    assert training_loop.make_plan(plan_settings(warmup_steps=8), 10).total_steps == 9


# --- optimizer ------------------------------------------------------------------------

@pytest.mark.parametrize("optimizer", list(training.OPTIMIZERS))
@pytest.mark.parametrize("difflr, expected_ratio", [(False, 1.0), (True, training.DIFFLR_FACTOR)])
def test_difflr_moves_decoder_variables_ten_times_further(optimizer, difflr, expected_ratio):
    """Same gradient on an encoder and a decoder weight; compare one step's change."""
    lr = 1e-3
    with tf.Graph().as_default(), tf.Session() as sess:
        encoder = tf.get_variable("encoder_w", initializer=1.0)
        decoder = tf.get_variable("decoder_w", initializer=1.0)
        counter = tf.get_variable("bn_updates", initializer=0, trainable=False)
        tf.add_to_collection(tf.GraphKeys.UPDATE_OPS, tf.assign_add(counter, 1))
        global_step = tf.train.get_or_create_global_step()
        train_op = training.make_train_op(3.0 * (encoder + decoder), global_step, lr, optimizer,
                                          momentum=0.9, epsilon=1e-8, pretrained_vars=[encoder],
                                          new_vars=[decoder], difflr=difflr)
        sess.run(tf.global_variables_initializer())
        sess.run(train_op)
        encoder_step, decoder_step = (1.0 - value for value in sess.run([encoder, decoder]))
        assert sess.run([global_step, counter]) == [1, 1]  # stepped once, UPDATE_OPS ran
    assert encoder_step > 0
    assert decoder_step / encoder_step == pytest.approx(expected_ratio, rel=1e-4)


def test_stop_requests_turn_the_first_signal_into_a_flag():
    with training.StopRequests() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signal_name == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is not stop._handle


# --- checkpoints ------------------------------------------------------------------------

def variables_graph():
    weights = tf.get_variable("w", initializer=np.zeros(1000, np.float32))
    global_step = tf.train.get_or_create_global_step()
    return weights, global_step


def save_at(sess, keeper, weights, global_step, step, snapshot):
    sess.run([tf.assign(weights, tf.fill([1000], float(step))), tf.assign(global_step, step)])
    keeper.save(sess, step, snapshot)


def test_saves_write_latest_snapshots_and_the_state_file(tmp_path):
    with tf.Graph().as_default(), tf.Session() as sess:
        weights, global_step = variables_graph()
        keeper = checkpoints.CheckpointKeeper(str(tmp_path))
        assert checkpoints.newest_intact(str(tmp_path)) is None
        for step, snapshot in ((5, True), (10, False), (15, True), (20, False)):
            save_at(sess, keeper, weights, global_step, step, snapshot)
    assert checkpoints.snapshot_steps(str(tmp_path)) == [5, 15]
    assert tf.train.latest_checkpoint(str(tmp_path)) == str(tmp_path / "fcn.ckpt")
    state = tf.train.get_checkpoint_state(str(tmp_path))
    assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == [
        "fcn.ckpt_5", "fcn.ckpt_15", "fcn.ckpt"]
    assert "/" not in (tmp_path / "checkpoint").read_text()  # relative: the folder can move
    assert tf.train.load_variable(str(tmp_path / "fcn.ckpt_15"), "global_step") == 15
    assert tf.train.load_variable(str(tmp_path / "fcn.ckpt"), "global_step") == 20
    # Between saves the previous state is a second name of the latest: no extra disk.
    for suffix in (".index", ".data-00000-of-00001"):
        assert os.path.samefile(tmp_path / f"fcn.ckpt{suffix}", tmp_path / f"fcn.ckpt_prev{suffix}")
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".") or "tempstate" in p]


def adam_graph():
    """A weight, a batch-norm-like statistic and Adam's slots: (weights, global_step,
    train_op, model variables)."""
    weights = tf.get_variable("w", initializer=np.zeros(1000, np.float32))
    moving_mean = tf.get_variable("moving_mean", initializer=np.ones(3, np.float32),
                                  trainable=False)
    global_step = tf.train.get_or_create_global_step()
    model_variables = tuple(tf.global_variables())
    train_op = training.make_train_op(tf.reduce_sum(weights - 1.0) ** 2, global_step, 0.1,
                                      "adam", 0.9, 1e-8, [], [weights])
    return weights, global_step, train_op, model_variables


def test_snapshots_hold_the_model_only_and_the_newest_are_kept(tmp_path):
    with tf.Graph().as_default(), tf.Session() as sess:
        weights, global_step, train_op, model_variables = adam_graph()
        sess.run(tf.global_variables_initializer())
        keeper = checkpoints.CheckpointKeeper(str(tmp_path), model_variables, keep_snapshots=2)
        for _ in range(4):
            sess.run(train_op)
            keeper.save(sess, int(sess.run(global_step)), snapshot=True)
    assert checkpoints.snapshot_steps(str(tmp_path)) == [3, 4]
    snapshot = {name for name, _ in tf.train.list_variables(str(tmp_path / "fcn.ckpt_4"))}
    latest = {name for name, _ in tf.train.list_variables(str(tmp_path / "fcn.ckpt"))}
    assert snapshot == {"w", "moving_mean", "global_step"}
    assert {"w/Adam", "w/Adam_1", "beta1_power", "beta2_power"} <= latest - snapshot
    size = lambda name: sum(f.stat().st_size for f in tmp_path.glob(name + ".*"))  # noqa: E731
    assert size("fcn.ckpt_4") < size("fcn.ckpt") / 2.5  # Adam: 3x the weights
    assert not list(tmp_path.glob("fcn.ckpt_[12].*"))  # older snapshots deleted whole


def test_keep_snapshots_zero_writes_none(tmp_path):
    with tf.Graph().as_default(), tf.Session() as sess:
        weights, global_step = variables_graph()
        keeper = checkpoints.CheckpointKeeper(str(tmp_path), keep_snapshots=0)
        save_at(sess, keeper, weights, global_step, 5, snapshot=True)
    assert checkpoints.snapshot_steps(str(tmp_path)) == []
    assert tf.train.load_variable(str(tmp_path / "fcn.ckpt"), "global_step") == 5


def test_resume_from_a_snapshot_alone_starts_a_fresh_optimizer_state(tmp_path):
    with tf.Graph().as_default(), tf.Session() as sess:
        weights, global_step, train_op, model_variables = adam_graph()
        sess.run(tf.global_variables_initializer())
        keeper = checkpoints.CheckpointKeeper(str(tmp_path), model_variables)
        sess.run(train_op)
        sess.run(train_op)
        trained = sess.run(weights)
        keeper.save(sess, 2, snapshot=True)
    for name in ("fcn.ckpt", "fcn.ckpt_prev"):
        for path in tmp_path.glob(name + ".*"):
            path.unlink()
    with tf.Graph().as_default(), tf.Session() as sess:
        weights, global_step, train_op, model_variables = adam_graph()
        found = checkpoints.newest_intact(str(tmp_path))
        assert found == checkpoints.Checkpoint(str(tmp_path / "fcn.ckpt_2"), 2)
        keeper = checkpoints.CheckpointKeeper(str(tmp_path), model_variables,
                                              verified=found.prefix)
        assert training_loop.initialise(sess, keeper, found, None) == (
            f"{found.prefix} (a snapshot: model only, fresh optimizer state)")
        np.testing.assert_array_equal(sess.run(weights), trained)
        assert sess.run(global_step) == 2
        assert not sess.run(tf.global_variables("w/Adam:0")[0]).any()  # fresh slots
        sess.run(train_op)  # and it trains on
        keeper.save(sess, 3)
    assert tf.train.load_variable(str(tmp_path / "fcn.ckpt"), "global_step") == 3


def kill_between_renames(tmp_path, monkeypatch, save):
    """Run `save` as if killed between TF's two renames: the new data file beside the
    old index (renamed in, as TF does), and nothing after."""
    old_index = (tmp_path / "fcn.ckpt.index").read_bytes()

    def killed(prefix):
        raise KeyboardInterrupt
    monkeypatch.setattr(checkpoints, "_verify_save", killed)
    with pytest.raises(KeyboardInterrupt):
        save()
    monkeypatch.undo()
    (tmp_path / "fcn.ckpt.index").unlink()
    (tmp_path / "fcn.ckpt.index").write_bytes(old_index)


class _NoEvents:
    def add_summary(self, *args):
        pass

    def flush(self):
        pass


def test_best_checkpoint_is_replaced_only_when_val_miou_improves(tmp_path, monkeypatch):
    val_mious = iter([0.3, 0.2, 0.5, 0.4, 0.45])
    monkeypatch.setattr(training_loop, "validate",
                        lambda *args: (1.0, next(val_mious), None))
    best = tmp_path / checkpoints.BEST_NAME

    def best_step():
        return tf.train.load_variable(str(best), "global_step")

    with tf.Graph().as_default(), tf.Session() as sess:
        weights, global_step = variables_graph()
        sess.run(tf.global_variables_initializer())
        keeper = checkpoints.CheckpointKeeper(str(tmp_path))
        graph = SimpleNamespace(global_step=global_step)
        spec = SimpleNamespace(num_classes=2)

        def validate_at(loop, step):
            sess.run(tf.assign(global_step, step))
            loop.step = step
            loop.validate()

        with run_folder.RunLog(str(tmp_path)) as log:
            loop = training_loop.TrainingLoop(sess, graph, None, spec, None, keeper, log,
                                              _NoEvents(), keep_best=True)
            validate_at(loop, 10)                     # 0.3: the first is the best so far
            assert best_step() == 10
            validate_at(loop, 20)                     # 0.2: kept the step-10 state
            assert best_step() == 10
            validate_at(loop, 30)                     # 0.5: replaced
            assert best_step() == 30
        # A resumed run knows the best from the runlog: 0.4 is no gain, 0.45 neither.
        with run_folder.RunLog(str(tmp_path)) as log:
            loop = training_loop.TrainingLoop(sess, graph, None, spec, None, keeper, log,
                                              _NoEvents(), keep_best=True)
            assert loop.best_miou == 0.5
            validate_at(loop, 40)
            validate_at(loop, 50)
    assert best_step() == 30
    best_lines = [line for line in run_folder.parse_runlog(str(tmp_path / "runlog"))
                  if line.get("event") == training_loop.BEST_EVENT]
    assert [(line["step"], line["val_miou"]) for line in best_lines] == [(10, 0.3), (30, 0.5)]
    assert checkpoints.newest_intact(str(tmp_path)) is None  # never a resume candidate
    assert not list(tmp_path.glob(".*"))  # no staging files left


def test_the_best_checkpoint_holds_the_model_only_and_survives_rotation(tmp_path):
    with tf.Graph().as_default(), tf.Session() as sess:
        weights, global_step, train_op, model_variables = adam_graph()
        sess.run(tf.global_variables_initializer())
        keeper = checkpoints.CheckpointKeeper(str(tmp_path), model_variables, keep_snapshots=1)
        sess.run(train_op)
        keeper.save_best(sess)
        for _ in range(3):
            sess.run(train_op)
            keeper.save(sess, int(sess.run(global_step)), snapshot=True)
    best = str(tmp_path / checkpoints.BEST_NAME)
    assert {name for name, _ in tf.train.list_variables(best)} == {"w", "moving_mean",
                                                                   "global_step"}
    assert tf.train.load_variable(best, "global_step") == 1
    assert checkpoints.snapshot_steps(str(tmp_path)) == [4]


def restore_newest(sess, keeper, run_dir, skipped=None):
    """What a resumed run does: find the newest intact checkpoint, then restore it."""
    found = checkpoints.newest_intact(str(run_dir), on_skip=lambda path, why: skipped.append(path)
                                      if skipped is not None else None)
    keeper.restore(sess, found.prefix)
    return found


def test_resume_skips_damaged_checkpoints_down_to_an_intact_snapshot(tmp_path):
    with tf.Graph().as_default(), tf.Session() as sess:
        weights, global_step = variables_graph()
        keeper = checkpoints.CheckpointKeeper(str(tmp_path))
        save_at(sess, keeper, weights, global_step, 5, snapshot=True)
        save_at(sess, keeper, weights, global_step, 10, snapshot=True)
        # As a kill between TF's two renames leaves it: the new data file beside
        # the old index (the layout is the same, only the bytes differ).
        old_index = (tmp_path / "fcn.ckpt.index").read_bytes()
        save_at(sess, keeper, weights, global_step, 15, snapshot=False)
        (tmp_path / "fcn.ckpt.index").write_bytes(old_index)
        for name in ("fcn.ckpt_prev", "fcn.ckpt_10"):  # both step 10: truncate, each its own file
            data = tmp_path / f"{name}.data-00000-of-00001"
            data.unlink()
            data.write_bytes(b"truncated")
        (tmp_path / "fcn.ckpt.data-00000-of-00001.tempstate123").write_bytes(b"half")
        skipped = []
        found = restore_newest(sess, keeper, tmp_path, skipped)
        assert list(tmp_path.glob("*tempstate*")), "looking for a checkpoint deletes nothing"
        checkpoints.remove_unfinished_saves(str(tmp_path))
        assert found == checkpoints.Checkpoint(str(tmp_path / "fcn.ckpt_5"), 5)
        assert skipped == [str(tmp_path / name) for name in ("fcn.ckpt", "fcn.ckpt_prev",
                                                             "fcn.ckpt_10")]
        assert sess.run(global_step) == 5
        np.testing.assert_array_equal(sess.run(weights), np.full(1000, 5.0))
    assert not list(tmp_path.glob("*tempstate*"))


def test_a_kill_inside_a_save_loses_only_the_steps_since_the_previous_save(tmp_path,
                                                                           monkeypatch):
    with tf.Graph().as_default(), tf.Session() as sess:
        weights, global_step = variables_graph()
        keeper = checkpoints.CheckpointKeeper(str(tmp_path))
        save_at(sess, keeper, weights, global_step, 5, snapshot=True)
        for step in (10, 15):  # plain saves: no snapshot to fall back on
            save_at(sess, keeper, weights, global_step, step, snapshot=False)
        assert checkpoints.checkpoint_candidates(str(tmp_path)) == [
            str(tmp_path / name) for name in ("fcn.ckpt", "fcn.ckpt_prev", "fcn.ckpt_5")]
        kill_between_renames(tmp_path, monkeypatch,
                             lambda: save_at(sess, keeper, weights, global_step, 20, False))
        skipped = []
        found = restore_newest(sess, keeper, tmp_path, skipped)
        assert skipped == [str(tmp_path / "fcn.ckpt")]
        assert found.step == 15 and sess.run(global_step) == 15
        np.testing.assert_array_equal(sess.run(weights), np.full(1000, 15.0))


def test_after_a_fallback_resume_the_intact_state_survives_until_a_save_reads_back(
        tmp_path, monkeypatch):
    """A damaged fcn.ckpt, resume from fcn.ckpt_prev, a save that fails, then two saves."""
    with tf.Graph().as_default(), tf.Session() as sess:
        weights, global_step = variables_graph()
        keeper = checkpoints.CheckpointKeeper(str(tmp_path), keep_snapshots=0)
        save_at(sess, keeper, weights, global_step, 10, snapshot=False)
        kill_between_renames(tmp_path, monkeypatch,
                             lambda: save_at(sess, keeper, weights, global_step, 15, False))
    with tf.Graph().as_default(), tf.Session() as sess:  # the resumed process
        weights, global_step = variables_graph()
        found = checkpoints.newest_intact(str(tmp_path))
        assert found.prefix == str(tmp_path / "fcn.ckpt_prev") and found.step == 10
        keeper = checkpoints.CheckpointKeeper(str(tmp_path), keep_snapshots=0,
                                              verified=found.prefix)
        keeper.restore(sess, found.prefix)

        def failing_save(*args, **kwargs):
            raise tf.errors.UnknownError(None, None, "disk went away")
        monkeypatch.setattr(keeper._saver, "save", failing_save)
        with pytest.raises(tf.errors.UnknownError):
            save_at(sess, keeper, weights, global_step, 11, snapshot=False)
        monkeypatch.undo()
        assert checkpoints.newest_intact(str(tmp_path)) == found  # the damaged one was not linked
        for step in (12, 13):
            save_at(sess, keeper, weights, global_step, step, snapshot=False)
            for name in ("fcn.ckpt", "fcn.ckpt_prev"):
                assert checkpoints.newest_intact(str(tmp_path)).step == step
                np.testing.assert_array_equal(
                    tf.train.load_variable(str(tmp_path / name), "w"), np.full(1000, step))


def test_a_save_onto_hard_links_of_one_file_leaves_no_temporary_files(tmp_path):
    with tf.Graph().as_default(), tf.Session() as sess:
        weights, global_step = variables_graph()
        keeper = checkpoints.CheckpointKeeper(str(tmp_path), keep_snapshots=0)
        save_at(sess, keeper, weights, global_step, 5, snapshot=False)
        for path in tmp_path.glob("fcn.ckpt_prev.*"):  # as an older version could leave them
            path.unlink()
            os.link(tmp_path / path.name.replace("fcn.ckpt_prev", "fcn.ckpt"), path)
        resumed = checkpoints.CheckpointKeeper(str(tmp_path), keep_snapshots=0,
                                               verified=str(tmp_path / "fcn.ckpt"))
        for step in (6, 7):
            save_at(sess, resumed, weights, global_step, step, snapshot=False)
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["checkpoint"] + [f"fcn.ckpt{name}.{ext}" for name in ("", "_prev")
                          for ext in ("index", "data-00000-of-00001")])
    assert tf.train.load_variable(str(tmp_path / "fcn.ckpt_prev"), "global_step") == 7


def test_a_full_disk_stops_a_save_before_it_writes_anything(tmp_path, monkeypatch):
    with tf.Graph().as_default(), tf.Session() as sess:
        weights, global_step = variables_graph()
        keeper = checkpoints.CheckpointKeeper(str(tmp_path))
        save_at(sess, keeper, weights, global_step, 5, snapshot=True)
        before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
        monkeypatch.setattr(files, "free_bytes", lambda path: 3 * files.MB // 2)
        with pytest.raises(SegMentorError, match=rf"^no space left on {tmp_path}: 1.5 MB free, "
                                                 rf"a checkpoint needs 2.0 MB"):
            save_at(sess, keeper, weights, global_step, 10, snapshot=True)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before


def test_a_save_failing_with_enospc_names_the_disk_and_removes_its_temporary_files(
        tmp_path, monkeypatch):
    with tf.Graph().as_default(), tf.Session() as sess:
        weights, global_step = variables_graph()
        keeper = checkpoints.CheckpointKeeper(str(tmp_path))
        save_at(sess, keeper, weights, global_step, 5, snapshot=False)

        def disk_full(sess, prefix, **kwargs):  # what TF's writer leaves and raises
            open(prefix + ".data-00000-of-00001.tempstate123", "wb").write(b"half")
            raise tf.errors.ResourceExhaustedError(
                None, None, f"{prefix}.data-00000-of-00001.tempstate123; No space left on device")
        monkeypatch.setattr(keeper._saver, "save", disk_full)
        with pytest.raises(SegMentorError, match=rf"^no space left on {tmp_path}: [\d.]+ MB "
                                                 rf"free, a checkpoint needs [\d.]+ MB"):
            with training_loop.out_of_memory_errors(16):  # not taken for out of memory
                save_at(sess, keeper, weights, global_step, 10, snapshot=False)
    assert not list(tmp_path.glob("*tempstate*"))
    assert checkpoints.newest_intact(str(tmp_path)).step == 5


def test_a_second_signal_inside_a_save_leaves_the_previous_state_and_no_temporary_files(
        tmp_path, monkeypatch):
    with tf.Graph().as_default(), tf.Session() as sess:
        weights, global_step = variables_graph()
        keeper = checkpoints.CheckpointKeeper(str(tmp_path))
        save_at(sess, keeper, weights, global_step, 5, snapshot=False)

        def interrupted(sess, prefix, **kwargs):
            open(prefix + ".index.tempstate77", "wb").write(b"half")
            raise training.Interrupted("SIGINT")
        monkeypatch.setattr(keeper._saver, "save", interrupted)
        with pytest.raises(training.Interrupted):
            save_at(sess, keeper, weights, global_step, 10, snapshot=True)
    assert not list(tmp_path.glob("*tempstate*")) and not list(tmp_path.glob(".*"))
    assert checkpoints.newest_intact(str(tmp_path)).step == 5


def test_a_signal_outside_the_loop_says_what_the_run_folder_keeps(tmp_path):
    assert training_loop.interrupted_line("SIGINT", None) == (
        "stopped by SIGINT before a run folder was made: nothing was kept")
    assert "holds no checkpoint" in training_loop.interrupted_line("SIGTERM", str(tmp_path))
    with tf.Graph().as_default(), tf.Session() as sess:
        weights, global_step = variables_graph()
        save_at(sess, checkpoints.CheckpointKeeper(str(tmp_path)), weights, global_step, 5, False)
    assert training_loop.interrupted_line("SIGTERM", str(tmp_path)) == (
        f"stopped by SIGTERM: {tmp_path} keeps fcn.ckpt (step 5); continue with --resume "
        f"{tmp_path}")


def test_signals_as_interrupts_raise_where_the_program_is():
    with pytest.raises(training.Interrupted) as stop:
        with training.signals_as_interrupts():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs between bytecodes
                pass
    assert stop.value.signal_name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_the_next_start_sweeps_leftovers_of_killed_writes(tmp_path):
    leftovers = ["fcn.ckpt.data-00000-of-00001.tempstate8812", "fcn.ckpt_9.index.tempstate1",
                 "checkpoint.tmp3f2a", ".runargs.0123abcd.partial",
                 ".fcn.ckpt_prev.index.89ab.partial"]
    for name in leftovers + ["runargs", "runlog"]:
        (tmp_path / name).write_text("x")
    with run_folder.RunFolderLock(str(tmp_path)):
        checkpoints.remove_unfinished_saves(str(tmp_path))
        with pytest.raises(SegMentorError, match="in use by another fcn_train.py"):
            with run_folder.RunFolderLock(str(tmp_path)):
                pass
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "runargs", "runlog"]


def test_resume_with_only_damaged_checkpoints_is_a_user_error(tmp_path):
    with tf.Graph().as_default(), tf.Session() as sess:
        weights, global_step = variables_graph()
        keeper = checkpoints.CheckpointKeeper(str(tmp_path))
        save_at(sess, keeper, weights, global_step, 5, snapshot=True)
        for data in tmp_path.glob("*.data-*"):
            data.write_bytes(b"")
        with pytest.raises(SegMentorError, match="none of the 3 checkpoints"):
            checkpoints.newest_intact(str(tmp_path))


def test_restoring_a_checkpoint_of_another_network_is_a_user_error(tmp_path):
    with tf.Graph().as_default(), tf.Session() as sess:
        weights, global_step = variables_graph()
        keeper = checkpoints.CheckpointKeeper(str(tmp_path))
        save_at(sess, keeper, weights, global_step, 5, snapshot=False)
    with tf.Graph().as_default(), tf.Session() as sess:
        tf.get_variable("other", initializer=np.zeros(3, np.float32))
        keeper = checkpoints.CheckpointKeeper(str(tmp_path))
        with pytest.raises(SegMentorError, match="different network"):
            restore_newest(sess, keeper, tmp_path)


def test_all_finite_spots_nan_and_inf_in_any_float_variable():
    with tf.Graph().as_default(), tf.Session() as sess:
        weights = tf.get_variable("w", initializer=[1.0, 2.0])
        tf.train.get_or_create_global_step()  # an integer variable: never checked
        finite = training.all_finite(tf.global_variables())
        sess.run(tf.global_variables_initializer())
        assert sess.run(finite)
        for bad in (np.nan, np.inf):
            sess.run(tf.assign(weights, [1.0, bad]))
            assert not sess.run(finite)


# --- batch-norm decay, step plan, end of a run (utils/training.py, utils/training_loop.py) ----

def test_batch_norm_decay_is_the_default_for_nets_with_batch_norm_only():
    assert training.batch_norm_decay_for("mobilenet_v1") == training.DEFAULT_BATCH_NORM_DECAY
    assert training.batch_norm_decay_for("mobilenet_v1", 0.99) == 0.99
    assert training.batch_norm_decay_for("vgg_16") is None


def plan_settings(**changes):
    return RunSettings(**{**dict(batch_size=4, epochs=3, decaylr=True, log_every=1,
                                 dataset="toy"), **changes})


def test_the_step_plan_round_trips_through_runargs():
    plan = training_loop.make_plan(plan_settings(), num_train_images=10)
    assert (plan.steps_per_epoch, plan.total_steps, plan.lr_drop_steps) == (3, 9, (3, 6))
    # Once an epoch, but not more often than every MIN_DEFAULT_EVERY_STEPS.
    assert (plan.val_every, plan.save_every, plan.snapshot_every) == (
        training_loop.MIN_DEFAULT_EVERY_STEPS, training_loop.MIN_DEFAULT_EVERY_STEPS, 3)
    saved = json.loads(json.dumps(plan.as_runargs()))  # as runargs holds it
    resumed = RunSettings.from_runargs(dict(saved, dataset="toy"))
    assert training_loop.resumed_plan(resumed, 10, "run") == plan


def test_validation_and_saves_default_to_once_an_epoch():
    plan = training_loop.make_plan(plan_settings(epochs=2), num_train_images=400)
    assert plan.steps_per_epoch == 100 > training_loop.MIN_DEFAULT_EVERY_STEPS
    assert (plan.val_every, plan.save_every, plan.snapshot_every) == (100, 100, 50)
    explicit = training_loop.make_plan(plan_settings(val_every=7, save_every=9, snapshot_every=5),
                                       num_train_images=400)
    assert (explicit.val_every, explicit.save_every, explicit.snapshot_every) == (7, 9, 5)


def test_resuming_on_a_training_set_of_another_size_is_a_user_error():
    saved = training_loop.make_plan(plan_settings(), num_train_images=10).as_runargs()
    with pytest.raises(SegMentorError, match="now has 12 training images.*planned for 10"):
        training_loop.resumed_plan(RunSettings.from_runargs(dict(saved, dataset="toy")), 12,
                                   "run")


def test_a_full_disk_under_the_event_writer_thread_is_reported_once(tmp_path, capfd):
    def writer_thread():  # as TF's EventLoggerThread dies when its file cannot grow
        tf.get_logger().error("EventFileWriter writer thread error: %s",
                              "events.out; No space left on device")
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(SegMentorError, match=rf"^no space left on {tmp_path}: .* MB free "
                                             rf"\(writing TensorBoard events\)"):
        with training_loop.event_file_disk_errors(str(tmp_path)):
            thread = threading.Thread(target=writer_thread, name="EventLoggerThread")
            thread.start()
            thread.join()
            raise tf.errors.ResourceExhaustedError(None, None, "events.out; No space left on "
                                                               "device")
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err and "writer thread error" not in captured.err


def test_out_of_memory_is_one_line_saying_what_to_lower():
    with pytest.raises(SegMentorError, match="out of memory with --batch_size 16; lower "
                                             "--batch_size or --pixels"):
        with training_loop.out_of_memory_errors(16):
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")


@pytest.mark.parametrize("step, expected_event", [(10, "done"), (7, "stop")])
def test_a_stop_signal_during_the_last_step_still_ends_the_run_as_done(tmp_path, capsys, step,
                                                                        expected_event):
    with run_folder.RunLog(tmp_path) as log:
        if expected_event == "stop":
            with pytest.raises(SystemExit) as exit_info:
                training_loop.finish(str(tmp_path), log, step, 10, "SIGTERM",
                                     training_loop.PhaseClock())
            assert exit_info.value.code == 128 + signal.SIGTERM
        else:
            training_loop.finish(str(tmp_path), log, step, 10, "SIGTERM",
                                     training_loop.PhaseClock())
    (line,) = run_folder.parse_runlog(tmp_path / run_folder.RUNLOG_FILE)
    assert line["event"] == expected_event and line["step"] == step
    assert {"secs", "step_secs", "outside_secs", "validation_secs", "saves_secs"} <= set(line)


def test_the_phase_clock_splits_a_run_into_steps_and_the_rest(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(training_loop.time, "perf_counter", lambda: now[0])
    clock = training_loop.PhaseClock()
    now[0] += 4.0  # graph, session: `start`
    for phase, secs in [("first_step", 3.0), ("steps", 10.0), ("steps", 10.0),
                        ("validation", 2.0), ("saves", 1.5)]:
        with clock.timing(phase):
            now[0] += secs
    now[0] += 0.5  # the closing line: `other`
    split = clock.split()
    assert split["secs"] == 31 and split["step_secs"] == 20.0 and split["outside_secs"] == 11.0
    assert (split["start_secs"], split["first_step_secs"], split["validation_secs"],
            split["saves_secs"], split["logging_secs"], split["other_secs"]) == \
        (4.0, 3.0, 2.0, 1.5, 0.0, 0.5)
