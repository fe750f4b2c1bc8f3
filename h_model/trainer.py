"""Episodic training: the machinery behind ``python training/train_h.py``.

One loop for every registered variant: sample a batch of episodes, compute the variant's
episode loss, step Adam; validate on held-out classes, keep the best checkpoint, save a
resumable state, and finally evaluate the best model on the test classes.
"""
from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
import resource
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from .checkpoint import WEIGHTS, atomic_write, load_checkpoint, save_checkpoint, write_json
from .data import load_splits
from .episodes import EpisodeSampler
from .evaluate import embed_all, evaluate, parse_setting
from .augment import Augment
from .learner import pick_device
from .models import FewShotModel, create_model
from .models.base import embedding_dim
from .runtime import cpu_has_native_bf16, default_malloc, keep_freed_memory, restore_malloc_defaults

log = logging.getLogger("h_model.train")
STATE = "state.pt"
METRIC_FIELDS = ["episode", "loss", "train_acc", "val_acc", "val_ci95", "lr", "elapsed_s", "distill_loss"]


@dataclass
class TrainConfig:
    """Every knob of a training run; YAML configs and command-line flags fill it."""

    variant: str = "proto"
    backbone: str = "conv4"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    dataset: str = "omniglot"
    data_root: str | None = None
    image_size: int = 28
    data_kwargs: dict[str, Any] = field(default_factory=dict)
    episodes: int = 2000
    train_way: int = 60
    train_shot: int = 5
    train_query: int = 5
    episodes_per_batch: int = 1
    test_way: int = 5
    test_shot: int = 1
    test_query: int = 15
    val_every: int = 250
    val_episodes: int = 300
    eval_settings: list[str] = field(default_factory=lambda: ["5w1s", "5w5s", "20w1s", "20w5s"])
    eval_episodes: int = 1000
    eval_query: int = 15
    lr: float = 1e-3
    lr_schedule: str = "step"  # step | cosine | constant
    lr_step: int = 2000
    lr_gamma: float = 0.5
    weight_decay: float = 0.0
    time_limit_min: float | None = None
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    out: str = "runs/default"
    resume: bool = False
    checkpoint_every: int = 100
    log_every: int = 10
    augment: bool | dict[str, Any] = False  # True or {flip, brightness, contrast, rotate_deg, scale, shift}
    teacher: str | None = None  # distil a pretrained embedder (h_model.faces.teachers) into the backbone
    teacher_kwargs: dict[str, Any] = field(default_factory=dict)
    distill_embed: float = 1.0  # weight of the embedding-matching term
    distill_relation: float = 1.0  # weight of the pairwise-similarity (relational) term
    face_far: float = 1e-3  # face runs: false-accept rate at which the threshold is calibrated
    backbone_lr_scale: float = 1.0  # fine-tuning: the backbone learns at lr * this (the head at lr)
    freeze_bn: bool = False  # fine-tuning: BatchNorm layers keep their running statistics (eval mode)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown training option(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    def validate(self) -> None:
        if self.variant == "siamese" and self.train_shot < 1:
            raise ValueError("siamese training needs train_shot >= 1")
        if self.lr_schedule not in ("step", "cosine", "constant"):
            raise ValueError("lr_schedule must be step, cosine or constant")
        if self.backbone_lr_scale < 0:
            raise ValueError(f"backbone_lr_scale must be >= 0, got {self.backbone_lr_scale}")
        for s in self.eval_settings:
            parse_setting(s)


def progress(cfg: TrainConfig, episode: int, elapsed_s: float) -> float:
    """Fraction of the run done: by episodes, or by wall time when a time limit comes first."""
    p = episode / max(cfg.episodes, 1)
    if cfg.time_limit_min:
        p = max(p, elapsed_s / (60.0 * cfg.time_limit_min))
    return min(p, 1.0)


def lr_factor(cfg: TrainConfig, episode: int, elapsed_s: float = 0.0) -> float:
    """Step decay by episodes; cosine decay over the run's progress (so a time-limited run
    still anneals fully within its budget); or constant."""
    if cfg.lr_schedule == "step":
        return cfg.lr_gamma ** (episode // cfg.lr_step)
    if cfg.lr_schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress(cfg, episode, elapsed_s)))
    return 1.0


class EpisodeLoss(nn.Module):
    """Wraps a model's ``episode_loss`` as ``forward`` so DistributedDataParallel can hook it.

    With a ``distill`` loss, the backbone's output for the episode (support then query, one
    call) is captured and matched to the teacher's embeddings of the same images.
    """

    def __init__(self, model: FewShotModel, distill: nn.Module | None = None) -> None:
        super().__init__()
        self.model = model
        self.distill = distill

    def forward(self, sx, sy, qx, qy, way: int, teacher_z: torch.Tensor | None = None):
        if self.distill is None or teacher_z is None:
            loss, logits = self.model.episode_loss(sx, sy, qx, qy, way)
            return loss, logits, None
        seen: list[torch.Tensor] = []
        hook = self.model.backbone.register_forward_hook(lambda m, i, o: seen.append(o))
        try:
            loss, logits = self.model.episode_loss(sx, sy, qx, qy, way)
        finally:
            hook.remove()
        if len(seen) != 1:
            raise RuntimeError(f"distillation needs a learner that embeds an episode in one backbone call; "
                               f"{type(self.model).__name__} made {len(seen)}")
        z = seen[0].reshape(teacher_z.shape[0], teacher_z.shape[1], -1)
        d, _ = self.distill(z, teacher_z)
        return loss + d, logits, d.detach()


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


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def read_metrics(path: Path, upto: int) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path) as f:
        return [r for r in csv.DictReader(f) if int(r["episode"]) <= upto]


def write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    def w(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            wr = csv.DictWriter(f, METRIC_FIELDS)
            wr.writeheader()
            wr.writerows(rows)
    atomic_write(path, w)


def amp_settings(amp: bool, device: torch.device) -> tuple[torch.dtype, bool]:
    """(autocast dtype, whether to autocast): bf16 on CUDA where supported (else fp16 with a
    gradient scaler) and on CPUs with native bf16; on other CPUs float32 (bf16 would be emulated, slower)."""
    if device.type == "cuda":
        return (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16), amp
    if amp and not cpu_has_native_bf16():
        log.info("amp: this CPU has no native bfloat16 (AMX / AVX-512 BF16); training in float32")
        return torch.bfloat16, False
    return torch.bfloat16, amp


class Stop(Exception):
    """Raised from the SIGTERM handler so a killed run saves its state first."""


Monitor = Callable[[FewShotModel, int, float], None]


def train(cfg: TrainConfig, monitor: Monitor | None = None) -> dict[str, Any]:
    """Run training, validation, checkpointing and the final test evaluation; returns results.

    The clock (``time_limit_min``, the time-based learning-rate schedule, ``train.time_s``) counts
    training steps only: time spent validating is not training time. ``monitor(model, episode,
    train_s)``, when given, is called after every optimiser step on the main process (benchmarks use
    it for their own timed validation); its time is not counted either.
    """
    cfg.validate()
    rank, world, device = init_distributed(cfg.device)
    main = rank == 0
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed + rank)

    data_kwargs = {"data_root": cfg.data_root, "image_size": cfg.image_size, "seed": cfg.seed, **cfg.data_kwargs}
    train_set, val_set, test_set = load_splits(cfg.dataset, **data_kwargs)
    keep_freed_memory()  # from here on: training steps, which reuse the same blocks (after decoding)
    prep = train_set.preprocess
    model = create_model(cfg.variant, cfg.backbone, cfg.backbone_kwargs,
                         input_shape=(prep.channels, *prep.size), **cfg.model_kwargs).to(device)
    # pretrained weights are in the checkpoint from now on: its config must not point at the file
    model.spec["backbone_kwargs"].pop("weights_path", None)
    norm = getattr(model.backbone, "input_norm", None)
    if norm:  # a pretrained backbone's own input normalisation
        prep = dataclasses.replace(prep, mean=tuple(norm["mean"]), std=tuple(norm["std"]))
        for s in (train_set, val_set, test_set):
            s.preprocess = prep
    run_config = {"preprocess": prep.to_dict(), "data": {"name": cfg.dataset, **data_kwargs},
                  "train": dataclasses.asdict(cfg)}
    sampler = EpisodeSampler(train_set, cfg.train_way, cfg.train_shot, cfg.train_query,
                             cfg.episodes_per_batch, seed=cfg.seed * 1000 + rank)
    # fail before training, not after: validation episodes must fit the validation classes, test ones the test classes
    EpisodeSampler(val_set, cfg.test_way, cfg.test_shot, cfg.test_query)
    for s in cfg.eval_settings:
        EpisodeSampler(test_set, *parse_setting(s), cfg.eval_query)

    augment = Augment.from_config(cfg.augment)
    aug_gen = torch.Generator().manual_seed(cfg.seed * 7919 + rank)
    distill, teacher_z = None, None
    if cfg.teacher:
        from .distill import DistillLoss
        from .faces.teachers import embeddings_for, load_teacher

        teacher = load_teacher(cfg.teacher, **{"margin": float(data_kwargs.get("margin", 0.2)), **cfg.teacher_kwargs})
        teacher_z = embeddings_for(teacher, train_set.images, train_set.sources).float()
        student_dim = embedding_dim(model.backbone, (prep.channels, *prep.size))
        distill = DistillLoss(student_dim, teacher_z.shape[1], cfg.distill_embed, cfg.distill_relation).to(device)
        teacher_z = teacher_z.to(device)
        run_config["distill"] = {"teacher": teacher.id, "embed": cfg.distill_embed, "relation": cfg.distill_relation}
    opt = torch.optim.Adam(param_groups(model, distill, cfg.backbone_lr_scale), lr=cfg.lr,
                           weight_decay=cfg.weight_decay)
    episode, best_val, elapsed = 0, -1.0, 0.0
    state_path = out / STATE
    if cfg.resume and state_path.exists():
        st = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(st["model"])
        if distill is not None and "distill" in st:
            distill.load_state_dict(st["distill"])
        opt.load_state_dict(st["optimizer"])
        sampler.generator.set_state(st["sampler_rng"])
        torch.set_rng_state(st["torch_rng"])
        episode, best_val, elapsed = int(st["episode"]), float(st["best_val"]), float(st["elapsed"])
        if main:
            log.info("resumed %s at episode %d (best validation %.4f)", out, episode, best_val)
    elif cfg.resume and main:
        log.info("no %s in %s: starting from scratch", STATE, out)
    rows = read_metrics(out / "metrics.csv", episode) if cfg.resume else []

    net: nn.Module = EpisodeLoss(model, distill)
    if world > 1:
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    amp_dtype, use_amp = amp_settings(cfg.amp, device)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    def save_state() -> None:
        if not main:
            return
        st = {"model": model.state_dict(), "optimizer": opt.state_dict(), "episode": episode,
              **({"distill": distill.state_dict()} if distill is not None else {}),
              "best_val": best_val, "elapsed": elapsed, "sampler_rng": sampler.generator.get_state(),
              "torch_rng": torch.get_rng_state()}
        atomic_write(state_path, lambda tmp: torch.save(st, tmp))
        write_metrics(out / "metrics.csv", rows)

    def validate() -> tuple[float, float]:
        with default_malloc():
            r = evaluate(model, val_set, cfg.test_way, cfg.test_shot, cfg.test_query, cfg.val_episodes,
                         seed=4321, device=device)
        return r["accuracy"], r["ci95"]

    tb = None
    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "train_config.json", dataclasses.asdict(cfg))
        tb = tensorboard_writer(out)
    old_handler = signal.signal(signal.SIGTERM, raise_stop) if main and in_main_thread() else None
    bar = tqdm(total=cfg.episodes, initial=episode, desc=f"train {cfg.variant}", unit="ep",
               disable=not main, dynamic_ncols=True)
    t0 = time.time() - elapsed
    acc_loss = acc_acc = acc_distill = 0.0
    n_acc = 0
    validation_s = 0.0
    model.train()
    try:
        while episode < cfg.episodes:
            now = time.time() - t0
            if world > 1:  # every rank stops at the same episode
                flag = torch.tensor([float(now)])
                dist.broadcast(flag, 0)
                now = float(flag)
            if cfg.time_limit_min and now > 60 * cfg.time_limit_min:
                if main:
                    log.info("time limit of %.1f min reached at episode %d", cfg.time_limit_min, episode)
                break
            for g in opt.param_groups:
                g["lr"] = cfg.lr * g["lr_scale"] * lr_factor(cfg, episode, now)
            set_train_mode(model, cfg.freeze_bn)  # (validation leaves the model in eval mode)
            ep = sampler.sample().to(device, prep)
            sx, qx = ep.support_x, ep.query_x
            if augment is not None:
                sx, qx = augment(sx, aug_gen), augment(qx, aug_gen)
            tz = None if teacher_z is None else teacher_z[torch.cat([ep.support_idx, ep.query_idx], 1).to(device)]
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                loss, logits, dloss = net(sx, ep.support_y, qx, ep.query_y, ep.way, tz)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            episode += cfg.episodes_per_batch
            acc_loss += float(loss.detach())
            acc_distill += 0.0 if dloss is None else float(dloss)
            acc_acc += float((logits.argmax(-1) == ep.query_y).float().mean())
            n_acc += 1
            bar.update(cfg.episodes_per_batch)
            validating = episode % cfg.val_every < cfg.episodes_per_batch or episode >= cfg.episodes
            if (episode % cfg.log_every < cfg.episodes_per_batch or validating) and main:
                elapsed = time.time() - t0
                row = {"episode": episode, "loss": round(acc_loss / n_acc, 5), "train_acc": round(acc_acc / n_acc, 5),
                       "val_acc": "", "val_ci95": "", "lr": opt.param_groups[0]["lr"], "elapsed_s": round(elapsed, 2),
                       "distill_loss": round(acc_distill / n_acc, 5) if distill is not None else ""}
                acc_loss = acc_acc = acc_distill = 0.0
                n_acc = 0
                if validating:
                    v0 = time.time()
                    va, vci = validate()
                    row.update(val_acc=round(va, 5), val_ci95=round(vci, 5))
                    if va > best_val:
                        best_val = va
                        save_checkpoint(out, model, {**run_config, "val_accuracy": va, "episode": episode})
                    validation_s += time.time() - v0
                    t0 += time.time() - v0  # validation is not training time
                rows.append(row)
                if tb is not None:
                    for k in ("loss", "train_acc", "val_acc", "lr"):
                        if row[k] != "":
                            tb.add_scalar(k, float(row[k]), episode)
                bar.set_postfix(loss=row["loss"], acc=row["train_acc"], val=f"{best_val:.4f}" if best_val >= 0 else "-")
            if monitor is not None and main:
                m0 = time.time()
                monitor(model, episode, m0 - t0)
                t0 += time.time() - m0
            if validating and world > 1:
                dist.barrier()
            if episode % cfg.checkpoint_every < cfg.episodes_per_batch:
                elapsed = time.time() - t0
                save_state()
    except (KeyboardInterrupt, Stop):
        elapsed = time.time() - t0
        save_state()
        bar.close()
        if main:
            log.warning("interrupted at episode %d; state saved, continue with --resume", episode)
        raise
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)
    bar.close()
    elapsed = time.time() - t0
    validated = [r for r in rows if r["val_acc"] != ""]
    if main and (not validated or int(validated[-1]["episode"]) != episode):  # stopped by the time limit
        va, vci = validate()
        rows.append({"episode": episode, "loss": "", "train_acc": "", "val_acc": round(va, 5),
                     "val_ci95": round(vci, 5), "lr": opt.param_groups[0]["lr"], "elapsed_s": round(elapsed, 2)})
        if va > best_val:
            best_val = va
            save_checkpoint(out, model, {**run_config, "val_accuracy": va, "episode": episode})
    save_state()
    if world > 1:
        dist.barrier()
    if not main:
        return {}
    return finish(cfg, out, test_set, device, episode, elapsed, best_val, val_set)


def param_groups(model: FewShotModel, distill: nn.Module | None, backbone_lr_scale: float) -> list[dict[str, Any]]:
    """Adam groups: the backbone at ``backbone_lr_scale`` times the learning rate, the rest (head,
    distillation projection) at the learning rate; a scale of 0 leaves the backbone out (frozen)."""
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    ids = {id(p) for p in model.backbone.parameters()}
    rest = [p for p in model.parameters() if id(p) not in ids and p.requires_grad]
    rest += list(distill.parameters()) if distill is not None else []
    groups = [{"params": rest, "lr_scale": 1.0}] if rest else []
    if backbone and backbone_lr_scale > 0:
        groups.append({"params": backbone, "lr_scale": float(backbone_lr_scale)})
    if not groups:
        raise ValueError("nothing to train: the backbone is frozen (backbone_lr_scale 0) and the head has no parameters")
    return groups


def set_train_mode(model: nn.Module, freeze_bn: bool) -> None:
    """Training mode; with ``freeze_bn`` every BatchNorm layer stays in eval mode, so it normalises
    with (and keeps) its running statistics, as fine-tuning a pretrained backbone on small episodes wants."""
    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def tensorboard_writer(out: Path):
    """A TensorBoard writer in ``out/tb`` when the tensorboard package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tb"))


def raise_stop(signum: int, frame: Any) -> None:
    raise Stop()


def in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def finish(cfg: TrainConfig, out: Path, test_set, device: torch.device, episodes: int, elapsed: float,
           best_val: float, val_set=None) -> dict[str, Any]:
    """Evaluate the best checkpoint on the test classes; write results.json and curves.png.

    Face runs also calibrate the verification threshold on validation identities (stored in the
    checkpoint) and report pair verification on the test identities.
    """
    from .plots import plot_curves

    restore_malloc_defaults()  # training is over: stop keeping freed memory
    model, _ = load_checkpoint(out / WEIGHTS, device)
    z = embed_all(model, test_set, device) if model.embeds_independently else None
    results: dict[str, Any] = {}
    for s in cfg.eval_settings:
        w, k = parse_setting(s)
        results[s] = evaluate(model, test_set, w, k, cfg.eval_query, cfg.eval_episodes, device=device,
                              embeddings=z, progress=True)
    results["train"] = {"variant": cfg.variant, "backbone": cfg.backbone, "dataset": cfg.dataset,
                        "episodes": episodes, "time_s": round(elapsed, 1),
                        "episodes_per_s": round(episodes / max(elapsed, 1e-9), 3),
                        "best_val_accuracy": best_val, "peak_rss_mb": round(peak_rss_mb(), 1),
                        "device": str(device),
                        "amp": bool(cfg.amp) and (device.type == "cuda" or cpu_has_native_bf16())}
    if device.type == "cuda":
        results["train"].update(gpu=torch.cuda.get_device_name(device),
                                peak_gpu_mb=round(torch.cuda.max_memory_allocated(device) / 2**20, 1))
    if cfg.dataset == "faces" and val_set is not None:
        from .faces.calibrate import calibrate_checkpoint

        results["verification"] = calibrate_checkpoint(out, model, val_set, test_set, device, cfg.face_far,
                                                       margin=float(cfg.data_kwargs.get("margin", 0.2)),
                                                       alignment=str(cfg.data_kwargs.get("alignment", "eyes")),
                                                       test_embeddings=z)
    write_json(out / "results.json", results)
    try:
        plot_curves(out / "metrics.csv", out / "curves.png", title=f"{cfg.variant} / {cfg.backbone} / {cfg.dataset}")
    except Exception as e:  # a plotting problem never loses the results
        log.warning("could not draw curves.png: %s", e)
    print(format_results(results))
    return results


def format_results(results: dict[str, Any]) -> str:
    lines = ["| setting | accuracy (%) | 95% CI | episodes |", "|---|---|---|---|"]
    for k, v in results.items():
        if isinstance(v, dict) and "ci95" in v:
            lines.append(f"| {k} | {100 * v['accuracy']:.2f} | +-{100 * v['ci95']:.2f} | {v['episodes']} |")
    v = results.get("verification")
    if v:
        lines.append(f"verification on {v['test_pairs']} test-identity pairs: {100 * v['accuracy']:.2f} "
                     f"+-{100 * v['accuracy_std']:.2f} % (10-fold), AUC {v['auc']:.4f}, "
                     f"TAR@FAR1e-3 {v['tar_at_far']['0.001']['tar']:.3f}; threshold {v['threshold']:.4f} at FAR {v['far']:g}")
    t = results.get("train", {})
    if t:
        lines.append(f"trained {t['episodes']} episodes in {t['time_s']:.0f} s on {t['device']} "
                     f"({t['episodes_per_s']:.2f} episodes/s), peak memory {t['peak_rss_mb']:.0f} MB")
    return "\n".join(lines)
