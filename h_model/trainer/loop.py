"""``train(cfg)``: setup, the loop (validation, checkpoints, time limit, SIGTERM, DDP), then finish."""
from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from ..augment import Augment
from ..checkpoint import write_json
from ..data import ImageSet, load_splits
from ..distill import DistillLoss, TeacherTargets
from ..episodes import EpisodeSampler
from ..evaluate import evaluate, parse_setting
from ..learner import pick_device
from ..models import FewShotModel, create_model
from ..models.base import embedding_dim
from ..preprocess import Preprocess
from ..runtime import default_malloc, keep_freed_memory
from .config import TrainConfig
from .finish import PostTrainingHook, check_hooks, finish
from .log import RunLog, read_metrics
from .state import STATE, RunState
from .step import EpisodeLoss, TrainStep, param_groups

log = logging.getLogger("h_model.train")

Monitor = Callable[[FewShotModel, int, float], None]
#: builds a teacher's targets for the training set (``cfg.teacher`` names the teacher)
TeacherSource = Callable[[ImageSet], TeacherTargets]


class Stop(Exception):
    """Raised from the SIGTERM handler so a killed run saves its state first."""


def raise_stop(signum: int, frame: Any) -> None:
    raise Stop()


def in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def init_distributed(device: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device); starts a process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, pick_device(device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return rank, world, dev


def check_settings(cfg: TrainConfig, val_set: ImageSet, test_set: ImageSet) -> None:
    """Fail before training, not after: the validation setting must fit the validation classes
    (whatever the test settings are), each test setting the test classes (``ValueError``)."""
    EpisodeSampler(val_set, cfg.val_way, cfg.val_shot, cfg.val_query)
    for s in cfg.eval_settings:
        EpisodeSampler(test_set, *parse_setting(s), cfg.eval_query)


def build_model(cfg: TrainConfig, sets: Sequence[ImageSet], device: torch.device) -> tuple[FewShotModel, Preprocess]:
    """The model to train and the preprocessing that feeds it (a pretrained backbone's own input
    normalisation replaces the data's, in every set)."""
    prep = sets[0].preprocess
    model = create_model(cfg.variant, cfg.backbone, cfg.backbone_kwargs,
                         input_shape=(prep.channels, *prep.size), **cfg.model_kwargs).to(device)
    # pretrained weights are in the checkpoint from now on: its config must not point at the file
    model.spec["backbone_kwargs"].pop("weights_path", None)
    norm = getattr(model.backbone, "input_norm", None)
    if norm:
        prep = dataclasses.replace(prep, mean=tuple(norm["mean"]), std=tuple(norm["std"]))
        for s in sets:
            s.preprocess = prep
    return model, prep


def train(cfg: TrainConfig, monitor: Monitor | None = None, hooks: Sequence[PostTrainingHook] = (),
          teacher: TeacherSource | None = None) -> dict[str, Any]:
    """Run training, validation, checkpointing and the final test evaluation; returns results.

    The clock (``time_limit_min``, the time-based learning-rate schedule, ``train.time_s``) counts
    training steps only: time spent validating is not training time. ``monitor(model, episode,
    train_s)``, when given, is called after every optimiser step on the main process (benchmarks use
    it for their own timed validation); its time is not counted either. ``hooks`` run after the test
    evaluation (:class:`~h_model.trainer.finish.PostTrainingHook`); ``teacher`` gives the targets
    of the teacher ``cfg.teacher`` names, distilled into the backbone.
    """
    cfg.validate()
    check_hooks(hooks)
    if cfg.teacher and teacher is None:
        raise ValueError(f"the config names teacher {cfg.teacher!r}: give train() its targets (teacher=...; "
                         "h_model.faces.training.face_extras builds them for the face teachers)")
    rank, world, device = init_distributed(cfg.device)
    main = rank == 0
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed + rank)

    data_kwargs = {"data_root": cfg.data_root, "image_size": cfg.image_size, "seed": cfg.seed, **cfg.data_kwargs}
    train_set, val_set, test_set = load_splits(cfg.dataset, **data_kwargs)
    keep_freed_memory()  # from here on: training steps, which reuse the same blocks (after decoding)
    model, prep = build_model(cfg, (train_set, val_set, test_set), device)
    run_config = {"preprocess": prep.to_dict(), "data": {"name": cfg.dataset, **data_kwargs},
                  "train": dataclasses.asdict(cfg)}
    sampler = EpisodeSampler(train_set, cfg.train_way, cfg.train_shot, cfg.train_query,
                             cfg.episodes_per_batch, seed=cfg.seed * 1000 + rank)
    check_settings(cfg, val_set, test_set)

    augment = Augment.from_config(cfg.augment)
    aug_gen = torch.Generator().manual_seed(cfg.seed * 7919 + rank)
    distill, targets = None, None
    if teacher is not None:
        targets = teacher(train_set)
        student_dim = embedding_dim(model.backbone, (prep.channels, *prep.size))
        distill = DistillLoss(student_dim, targets.dim, cfg.distill_embed, cfg.distill_relation).to(device)
        targets = targets.to(device)
        run_config["distill"] = {"teacher": targets.teacher_id, "embed": cfg.distill_embed,
                                 "relation": cfg.distill_relation}
    opt = torch.optim.Adam(param_groups(model, distill, cfg.backbone_lr_scale), lr=cfg.lr,
                           weight_decay=cfg.weight_decay)
    state = RunState(out, model, opt, sampler.generator, distill)
    if cfg.resume and state.resume():
        if main:
            log.info("resumed %s at episode %d (best validation %.4f)", out, state.episode, state.best_val)
    elif cfg.resume and main:
        log.info("no %s in %s: starting from scratch", STATE, out)
    rows = read_metrics(out / "metrics.csv", state.episode) if cfg.resume else []

    net: nn.Module = EpisodeLoss(model, distill, cfg.both_ways)
    if world > 1:
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    step = TrainStep(cfg, model, net, opt, device, prep, augment, aug_gen, targets)

    def save() -> None:
        if main:
            state.save()
            runlog.write()

    def validate() -> tuple[float, float]:
        with default_malloc():
            r = evaluate(model, val_set, cfg.val_way, cfg.val_shot, cfg.val_query, cfg.val_episodes,
                         seed=4321, device=device)
        return r["accuracy"], r["ci95"]

    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "train_config.json", dataclasses.asdict(cfg))
    runlog = RunLog(out / "metrics.csv", rows, distill=distill is not None, tensorboard=main)
    old_handler = signal.signal(signal.SIGTERM, raise_stop) if main and in_main_thread() else None
    bar = tqdm(total=cfg.episodes, initial=state.episode, desc=f"train {cfg.variant}", unit="ep",
               disable=not main, dynamic_ncols=True)
    t0 = time.time() - state.elapsed
    model.train()
    try:
        while state.episode < cfg.episodes:
            now = time.time() - t0
            if world > 1:  # every rank stops at the same episode
                flag = torch.tensor([float(now)])
                dist.broadcast(flag, 0)
                now = float(flag)
            if cfg.time_limit_min and now > 60 * cfg.time_limit_min:
                if main:
                    log.info("time limit of %.1f min reached at episode %d", cfg.time_limit_min, state.episode)
                break
            step.set_lr(state.episode, now)
            runlog.add_step(*step(sampler.sample()))
            state.episode += cfg.episodes_per_batch
            episode = state.episode
            bar.update(cfg.episodes_per_batch)
            validating = episode % cfg.val_every < cfg.episodes_per_batch or episode >= cfg.episodes
            if (episode % cfg.log_every < cfg.episodes_per_batch or validating) and main:
                state.elapsed = time.time() - t0
                row = runlog.train_row(episode, step.lr, state.elapsed)
                if validating:
                    v0 = time.time()
                    va, vci = validate()
                    row.update(val_acc=round(va, 5), val_ci95=round(vci, 5))
                    state.keep_if_best(va, run_config)
                    t0 += time.time() - v0  # validation is not training time
                runlog.append(row)
                bar.set_postfix(loss=row["loss"], acc=row["train_acc"],
                                val=f"{state.best_val:.4f}" if state.best_val >= 0 else "-")
            if monitor is not None and main:
                m0 = time.time()
                monitor(model, episode, m0 - t0)
                t0 += time.time() - m0
            if validating and world > 1:
                dist.barrier()
            if episode % cfg.checkpoint_every < cfg.episodes_per_batch:
                state.elapsed = time.time() - t0
                save()
    except (KeyboardInterrupt, Stop):
        state.elapsed = time.time() - t0
        save()
        bar.close()
        if main:
            log.warning("interrupted at episode %d; state saved, continue with --resume", state.episode)
        raise
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)
    bar.close()
    state.elapsed = time.time() - t0
    if main and runlog.last_validated() != state.episode:  # stopped by the time limit
        va, vci = validate()
        runlog.append({"episode": state.episode, "loss": "", "train_acc": "", "val_acc": round(va, 5),
                       "val_ci95": round(vci, 5), "lr": step.lr, "elapsed_s": round(state.elapsed, 2)},
                      tensorboard=False)
        state.keep_if_best(va, run_config)
    save()
    if world > 1:
        dist.barrier()
    if not main:
        return {}
    return finish(cfg, out, test_set, device, state.episode, state.elapsed, state.best_val, val_set, hooks)
