"""Episodic training: the machinery behind ``python training/train_h.py``.

One loop for every registered variant: sample a batch of episodes, compute the variant's
episode loss, step Adam; validate on held-out classes, keep the best checkpoint, save a
resumable state, and finally evaluate the best model on the test classes.

Modules: ``config`` (:class:`TrainConfig`), ``step`` (one optimiser step: schedule, parameter
groups, AMP), ``state`` (the resumable run state, the best checkpoint), ``log`` (``metrics.csv``,
TensorBoard), ``finish`` (test evaluation, post-training hooks, ``results.json``) and ``loop``
(:func:`train`). Dataset-specific steps (a face model's threshold calibration, a teacher to
distil) are given to :func:`train` by the caller: the trainer knows no dataset.
"""
from .config import RENAMED, TrainConfig, renamed_options
from .finish import FinishedRun, PostTrainingHook, check_hooks, finish, format_results, peak_rss_mb
from .log import METRIC_FIELDS, RunLog, read_metrics, tensorboard_writer, write_metrics
from .loop import Monitor, Stop, TeacherSource, build_model, check_settings, in_main_thread, init_distributed, \
    raise_stop, train
from .state import STATE, RunState
from .step import EpisodeLoss, TrainStep, amp_settings, lr_factor, param_groups, progress, set_train_mode

__all__ = ["TrainConfig", "RENAMED", "renamed_options", "train", "Monitor", "TeacherSource", "check_settings",
           "build_model", "init_distributed", "Stop", "raise_stop", "in_main_thread", "RunState", "STATE",
           "RunLog", "METRIC_FIELDS", "read_metrics", "write_metrics", "tensorboard_writer", "TrainStep",
           "EpisodeLoss", "amp_settings", "lr_factor", "progress", "param_groups", "set_train_mode",
           "FinishedRun", "PostTrainingHook", "check_hooks", "finish", "format_results", "peak_rss_mb"]
