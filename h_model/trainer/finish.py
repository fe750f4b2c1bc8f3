"""After training: the best checkpoint on the test classes, post-training hooks, results.json, curves.png."""
from __future__ import annotations

import logging
import resource
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ..checkpoint import WEIGHTS, load_checkpoint, write_json
from ..data import ImageSet
from ..evaluate import embed_all, evaluate, parse_setting
from ..models import FewShotModel
from ..runtime import cpu_has_native_bf16, restore_malloc_defaults
from .config import TrainConfig

log = logging.getLogger("h_model.train")


@dataclass
class FinishedRun:
    """What a post-training hook is given: the run, its best checkpoint's model (loaded), the data,
    the test embeddings (when the model embeds images independently) and the results so far."""

    cfg: TrainConfig
    out: Path
    model: FewShotModel
    val_set: ImageSet | None
    test_set: ImageSet
    device: torch.device
    test_embeddings: torch.Tensor | None
    results: dict[str, Any]


class PostTrainingHook(ABC):
    """A step after the test evaluation and before ``results.json`` is written (e.g. calibrating a
    face model's threshold); what it returns is stored under ``results[key]``, None stores nothing."""

    key: str = ""

    @abstractmethod
    def __call__(self, run: FinishedRun) -> dict[str, Any] | None:
        ...

    def summary(self, result: dict[str, Any]) -> str | None:
        """A line for the printed results table (None: no line)."""
        return None


def check_hooks(hooks: Sequence[PostTrainingHook]) -> None:
    """Each hook needs its own results key (checked before training, not after)."""
    keys = [h.key for h in hooks]
    if not all(keys) or len(set(keys)) != len(keys):
        raise ValueError(f"post-training hooks need distinct, non-empty results keys; got {keys}")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def finish(cfg: TrainConfig, out: Path, test_set: ImageSet, device: torch.device, episodes: int, elapsed: float,
           best_val: float, val_set: ImageSet | None = None,
           hooks: Sequence[PostTrainingHook] = ()) -> dict[str, Any]:
    """Evaluate the best checkpoint on the test classes, run ``hooks``; write results.json and curves.png."""
    from ..plots import plot_curves

    check_hooks(hooks)
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
    for h in hooks:
        r = h(FinishedRun(cfg, Path(out), model, val_set, test_set, device, z, results))
        if r is not None:
            results[h.key] = r
    write_json(out / "results.json", results)
    try:
        plot_curves(out / "metrics.csv", out / "curves.png", title=f"{cfg.variant} / {cfg.backbone} / {cfg.dataset}")
    except Exception as e:  # a plotting problem never loses the results
        log.warning("could not draw curves.png: %s", e)
    print(format_results(results, hooks))
    return results


def format_results(results: dict[str, Any], hooks: Sequence[PostTrainingHook] = ()) -> str:
    lines = ["| setting | accuracy (%) | 95% CI | episodes |", "|---|---|---|---|"]
    for k, v in results.items():
        if isinstance(v, dict) and "ci95" in v:
            lines.append(f"| {k} | {100 * v['accuracy']:.2f} | +-{100 * v['ci95']:.2f} | {v['episodes']} |")
    for h in hooks:
        line = h.summary(results[h.key]) if results.get(h.key) else None
        if line:
            lines.append(line)
    t = results.get("train", {})
    if t:
        lines.append(f"trained {t['episodes']} episodes in {t['time_s']:.0f} s on {t['device']} "
                     f"({t['episodes_per_s']:.2f} episodes/s), peak memory {t['peak_rss_mb']:.0f} MB")
    return "\n".join(lines)
