#!/usr/bin/env python
"""How fast a training setting learns at first: validation accuracy at fixed episode counts.

    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/screen_early_training.py \\
        --setting '{}' --setting '{"lr": 0.01}' --setting '{"train_way": 30}' --at 65,130,200

Each ``--setting`` (a JSON object of training options over ``--config``, by default the default
run) trains from scratch and, after each episode count of ``--at`` (scaled by 60 / ``train_way``
so that every setting is scored after the same number of training images), embeds the validation
characters and scores the same 300 fixed 5-way 1-shot and 20-way 1-shot episodes as
``bench_vs_easyfsl.py``; the run stops after the last count. Training seconds (validation
excluded) are recorded beside each figure, so settings that change the cost of a step are compared
by time as well. Writes ``--out`` (JSON) with the CPU it ran on.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_vs_easyfsl import FixedEpisodes  # noqa: E402
from h_model.checkpoint import write_json  # noqa: E402
from h_model.data import omniglot_splits  # noqa: E402
from h_model.evaluate import embed_all  # noqa: E402
from h_model.runtime import cpu_description  # noqa: E402
from h_model.trainer import TrainConfig, train  # noqa: E402


class Done(Exception):
    """Raised by the monitor after the last episode count: the screen needs no more training."""


def screen(config: Path, setting: dict[str, Any], at: list[int], val: FixedEpisodes) -> list[dict[str, Any]]:
    """Validation figures of one setting after each of ``at`` episodes (scaled to its episode width)."""
    values = yaml.safe_load(config.read_text()) or {}
    values.update(val_every=10**9, eval_settings=["5w1s"], eval_episodes=50)
    values.update(setting)
    way = int(values.get("train_way", 60))
    counts = sorted({max(1, round(n * 60 / way)) for n in at})
    rows: list[dict[str, Any]] = []

    def monitor(model: torch.nn.Module, episode: int, train_s: float) -> None:
        if episode not in counts:
            return
        z = embed_all(model, val.val, next(model.parameters()).device)
        model.train()
        acc = val.score(z.float().cpu())
        rows.append({"episode": episode, "train_s": round(train_s, 2), **{k: round(v, 5) for k, v in acc.items()}})
        print(f"{json.dumps(setting)}  episode {episode:5d}  {train_s:6.1f} s  " +
              "  ".join(f"{k} {100 * v:.2f}" for k, v in acc.items()), flush=True)
        if episode == counts[-1]:
            raise Done

    with tempfile.TemporaryDirectory() as out:
        values["out"] = out
        try:
            train(TrainConfig.from_dict(values), monitor=monitor)
        except Done:
            pass
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "training" / "configs" / "default.yaml"))
    ap.add_argument("--setting", action="append", default=[], help="JSON object of training options (repeatable)")
    ap.add_argument("--at", default="65,130,200", help="episode counts at 60-way (comma-separated)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "early_training.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    settings = [json.loads(s) for s in a.setting] or [{}]
    if not all(isinstance(s, dict) for s in settings):
        raise SystemExit("each --setting must be a JSON object, e.g. '{\"lr\": 0.01}'")
    at = sorted(int(x) for x in a.at.split(","))
    if a.data_root:
        for s in settings:
            s.setdefault("data_root", a.data_root)
    _, val_set, _ = omniglot_splits(a.data_root)
    val = FixedEpisodes(val_set)
    results = [{"setting": s, "curve": screen(Path(a.config), s, at, val)} for s in settings]
    report = {"command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
              "config": Path(a.config).name, "at_60_way": at, "threads": a.threads, "cpu": cpu_description(),
              "validation": "300 fixed episodes per setting of the validation characters, 15 queries per class",
              "results": results}
    write_json(a.out, report)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
