"""utils/run_settings.py: a run's settings as one typed object, from fcn_train's flags to
runargs and back, and from the runargs of older run folders."""
import dataclasses

import pytest

import fcn_train
from utils import training_loop
from utils.errors import SegMentorError
from utils.run_folder import read_runargs, write_runargs
from utils.run_settings import PLAN_KEYS, RunSettings, StepPlan, read_run_settings


def test_every_fcn_train_flag_is_a_setting_whose_default_is_the_flags():
    args = fcn_train.build_parser().parse_args([])
    fields = {field.name for field in dataclasses.fields(RunSettings)}
    assert set(vars(args)) == fields - {"plan"}
    defaults = RunSettings.from_runargs(vars(args))
    assert defaults == RunSettings() == fcn_train.DEFAULTS


def test_runargs_hold_every_setting_and_read_back_to_the_same_object(tmp_path):
    args = fcn_train.build_parser().parse_args(
        ["--basenet", "resnet_v1_18", "--fcn8", "--crop", "24", "32", "--epochs", "8",
         "--lr_schedule", "3", "5", "--scale_range", "0.5", "1", "--seed", "4"])
    settings = fcn_train.run_settings(args)
    assert settings.learnrate == fcn_train.FINETUNE_LEARNRATE and settings.batch_norm_decay
    assert (settings.crop, settings.lr_schedule, settings.scale_range) == (
        (24, 32), (3.0, 5.0), (0.5, 1.0))
    settings = settings.replace(pixels=0, plan=training_loop.make_plan(settings, 40))
    write_runargs(tmp_path, settings.as_runargs())
    runargs = read_runargs(tmp_path)
    # The file's format: one key per flag but --resume, and the plan's keys beside them.
    assert set(runargs) == set(vars(args)) - {"resume"} | set(PLAN_KEYS)
    assert runargs["crop"] == [24, 32] and runargs["lr_drop_steps"] == list(
        settings.plan.lr_drop_steps)
    # The plan's cadence stands in for the flags' None ("once per epoch") under their names.
    plan = settings.plan
    assert read_run_settings(tmp_path) == settings.replace(
        val_every=plan.val_every, save_every=plan.save_every, snapshot_every=plan.snapshot_every)
    assert isinstance(read_run_settings(tmp_path).plan, StepPlan)


def test_an_old_run_folder_reads_with_the_defaults_for_what_it_lacks(tmp_path):
    write_runargs(tmp_path, dict(basenet="vgg_16", dataset="camvid", pixels=256, fcn16=True,
                                 init_checkpoint=None, init_decoder="fresh"))
    settings = read_run_settings(tmp_path)
    assert (settings.basenet, settings.fcn16, settings.pixels) == ("vgg_16", True, 256)
    assert settings.output_stride == 32 and settings.extended_arch == "fcn"
    assert settings.plan is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.pixels = 0


def test_a_runargs_without_the_network_or_data_is_one_error(tmp_path):
    write_runargs(tmp_path, dict(basenet="vgg_16", fcn16=True))
    with pytest.raises(SegMentorError, match="lacks dataset, pixels; the run folder is damaged"):
        read_run_settings(tmp_path)
