"""Few-shot evaluation: accuracy with a 95% confidence interval over test episodes.

    python -m h_model.evaluate --checkpoint runs/proto --way 20 --shot 1 --episodes 1000
    python -m h_model.evaluate --checkpoint runs/proto --lake-runs all_runs.zip
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

import torch
from tqdm import tqdm

from .data.imageset import ImageSet
from .episodes import EpisodeSampler, split_support_query
from .models import FewShotModel
from .test_time import TestTime, parse_test_time, tta_embed, tt_head


def mean_ci95(values: torch.Tensor) -> tuple[float, float]:
    """Mean and the half-width of its normal-approximation 95% confidence interval."""
    v = values.double()
    if len(v) < 2:
        return float(v.mean()), float("nan")
    return float(v.mean()), float(1.96 * v.std(unbiased=True) / math.sqrt(len(v)))


@torch.inference_mode()
def embed_all(model: FewShotModel, data: ImageSet, device: str | torch.device, batch: int = 512,
              test_time: TestTime | None = None) -> torch.Tensor:
    """Every image's embedding ``[N, D]``, in eval mode (BatchNorm running statistics),
    averaged over ``test_time``'s augmented views when it has any."""
    was = model.training
    model.eval()
    tt = test_time or TestTime()
    z = [(tta_embed(model, x, tt, batch) if tt.augments else model.embed(x))
         for x in (data.preprocess.normalize(data.images[i:i + batch].to(device)) for i in range(0, len(data), batch))]
    model.train(was)
    return torch.cat(z)


def evaluate(model: FewShotModel, data: ImageSet, way: int, shot: int, query: int = 15, episodes: int = 1000,
             seed: int = 1234, device: str | torch.device = "cpu", embeddings: torch.Tensor | None = None,
             progress: bool = False, test_time: TestTime | None = None) -> dict[str, Any]:
    """Mean accuracy over ``episodes`` test episodes (fixed by ``seed``).

    When ``model.embeds_independently`` (every H-network variant), an image's eval-mode
    embedding does not depend on its episode, so every test image is embedded once
    (``embeddings``, computed here when not given) and each episode only runs the variant's
    head on gathered embeddings: identical results, hundreds of times cheaper. Other models
    (MAML and kin) run ``model(...)`` on every episode. ``test_time`` options
    (:class:`h_model.test_time.TestTime`) need such a model; ``embeddings`` must then be its own.
    """
    fast = model.embeds_independently
    tt = test_time or TestTime()
    if not fast and not tt.is_default:
        raise ValueError(f"test-time options {tt.to_dict()} need a model that embeds images independently")
    z = (embed_all(model, data, device, test_time=tt) if embeddings is None else embeddings) if fast else None
    images = way * (shot + query)
    # bound the head's largest intermediate (Siamese: [B, Q, S, D] pair differences) to ~200 MB
    pair_elems = way * query * way * shot * (z.shape[1] if fast else 1)
    per_batch = max(1, min(episodes, 50_000_000 // pair_elems if fast else 2000 // images))
    sampler = EpisodeSampler(data, way, shot, query, per_batch, seed=seed)
    was = model.training
    model.eval()
    accs = []
    done = 0
    with tqdm(total=episodes, desc=f"eval {way}w{shot}s", leave=False, disable=not progress) as bar:
        while done < episodes:
            if fast:
                with torch.inference_mode():
                    idx, _ = sampler.sample_indices()
                    sz, sy, qz, qy = split_support_query(z[idx.to(z.device)], shot)  # from [B, N, K+Q, D]
                    B = sz.shape[0]
                    logits = tt_head(model, tt, sz, sy, qz, way)
            else:
                with torch.no_grad():
                    ep = sampler.sample().to(device, data.preprocess)
                    qy, B = ep.query_y, ep.query_y.shape[0]
                    logits = model(ep.support_x, ep.support_y, ep.query_x, way=way)
            accs.append((logits.argmax(-1) == qy).float().mean(-1).cpu())
            done += B
            bar.update(B)
    model.train(was)
    acc, ci = mean_ci95(torch.cat(accs)[:episodes])
    return {"accuracy": acc, "ci95": ci, "episodes": episodes, "way": way, "shot": shot, "query": query}


def parse_setting(s: str) -> tuple[int, int]:
    """'20w5s' -> (20, 5)."""
    w, _, rest = s.lower().partition("w")
    return int(w), int(rest.rstrip("s"))


def main(argv: list[str] | None = None) -> int:
    from .checkpoint import load_checkpoint
    from .data import DataNotFoundError, load_splits
    from .learner import pick_device
    from .preprocess import Preprocess

    ap = argparse.ArgumentParser(prog="python -m h_model.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="run directory or model.safetensors")
    ap.add_argument("--way", type=int, default=5)
    ap.add_argument("--shot", type=int, default=1)
    ap.add_argument("--query", type=int, default=15)
    ap.add_argument("--episodes", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--data-root", default=None, help="overrides the data root stored in the checkpoint")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--lake-runs", default=None, help="Lake et al. all_runs.zip (or its unpacked folder)")
    ap.add_argument("--test-time", nargs="+", default=[], metavar="KEY=VALUE",
                    help="test-time options over the checkpoint's own (config 'test_time'), e.g. shift=1 "
                         "rotate=10,-10 scale=0.9,1.1 center=true l2=true transductive_steps=3 "
                         "transductive_temperature=1; 'none' first turns the checkpoint's off")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    a = ap.parse_args(argv)
    device = pick_device(a.device)
    try:
        model, config = load_checkpoint(a.checkpoint, device)
        tt = parse_test_time(a.test_time, config.get("test_time"))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not tt.is_default:
        print(f"test-time options: {tt.to_dict()}")
    if a.lake_runs:
        from .lake import evaluate_lake_runs, format_lake_table
        from .learner import Learner
        res = evaluate_lake_runs(Learner(model, Preprocess.from_dict(config["preprocess"]), config, device, tt),
                                 a.lake_runs)
        print(format_lake_table(res))
    else:
        data_cfg = dict(config.get("data", {}))
        if a.data_root:
            data_cfg["data_root"] = a.data_root
        try:
            _, _, test = load_splits(data_cfg.pop("name", "omniglot"), **data_cfg)
        except DataNotFoundError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        try:
            res = evaluate(model, test, a.way, a.shot, a.query, a.episodes, a.seed, device, progress=True,
                           test_time=tt)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"{a.way}-way {a.shot}-shot: {100 * res['accuracy']:.2f} +- {100 * res['ci95']:.2f} % "
              f"({a.episodes} episodes, {a.query} queries per class, test classes)")
    if a.json:
        from .checkpoint import write_json
        write_json(a.json, {**res, "test_time": tt.to_dict()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
