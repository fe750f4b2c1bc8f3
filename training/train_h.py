#!/usr/bin/env python
"""Train an H-network episodically, validate, keep the best checkpoint, evaluate it.

    python training/train_h.py                                   # Prototypical, Conv-4, Omniglot
    python training/train_h.py --config training/configs/matching_omniglot.yaml
    torchrun --nproc_per_node=2 training/train_h.py --episodes 500
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from h_model.data import DataNotFoundError  # noqa: E402
from h_model.trainer import TrainConfig, train  # noqa: E402

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"

# flag -> (TrainConfig field, type, help)
FLAGS = {
    "--variant": ("variant", str, "a registered learner: proto, matching, siamese, ..."),
    "--method": ("variant", str, "same as --variant (the name used for meta-learning baselines)"),
    "--backbone": ("backbone", str, "conv4, resnet12, inception_resnet_v1 or nas_cnn (found by training/search_nas.py)"),
    "--dataset": ("dataset", str, "omniglot or folder"),
    "--data-root": ("data_root", str, "data folder (default: $H_DATA_ROOT, else ~/.cache/h_model/data)"),
    "--image-size": ("image_size", int, "input size in pixels (28 or 84 for Omniglot)"),
    "--episodes": ("episodes", int, "number of training episodes"),
    "--train-way": ("train_way", int, "classes per training episode"),
    "--train-shot": ("train_shot", int, "support examples per class in training"),
    "--train-query": ("train_query", int, "query examples per class in training"),
    "--episodes-per-batch": ("episodes_per_batch", int, "episodes per optimiser step"),
    "--test-way": ("test_way", int, "classes per validation episode"),
    "--test-shot": ("test_shot", int, "support examples per class in validation"),
    "--val-every": ("val_every", int, "validate every N episodes"),
    "--eval-episodes": ("eval_episodes", int, "test episodes per final evaluation setting"),
    "--lr": ("lr", float, "Adam learning rate"),
    "--lr-schedule": ("lr_schedule", str, "step, cosine or constant"),
    "--lr-step": ("lr_step", int, "episodes between learning-rate decays (step schedule)"),
    "--time-limit-min": ("time_limit_min", float, "stop training after this many minutes"),
    "--seed": ("seed", int, "random seed"),
    "--device": ("device", str, "auto, cpu, cuda or cuda:N"),
    "--out": ("out", str, "run directory"),
}


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML config (flags override it)")
    for flag, (dest, typ, help_) in FLAGS.items():
        ap.add_argument(flag, dest=dest, type=typ, default=None, help=help_)
    ap.add_argument("--amp", action="store_true", default=None, help="mixed precision (CUDA only)")
    ap.add_argument("--resume", action="store_true", default=None, help="continue the run in --out")
    a = ap.parse_args(argv)
    cfg_path = Path(a.config)
    if not cfg_path.is_file():
        ap.error(f"config file not found: {cfg_path}")
    values = yaml.safe_load(cfg_path.read_text()) or {}
    values.update({k: v for k, v in vars(a).items() if k != "config" and v is not None})
    try:
        return TrainConfig.from_dict(values)
    except (TypeError, ValueError) as e:
        ap.error(str(e))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = parse_args(argv)
    try:
        train(cfg)
    except DataNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
