#!/usr/bin/env python
"""Test-time options of a checkpoint chosen on within-alphabet runs of validation characters,
then measured once on runs of the evaluation alphabets (Lake et al. 2015's protocol).

    python benchmarks/tune_lake.py h_model/bundled/omniglot_proto_resnet12 [--val-seeds 0 1 2 3 4] [--write]

Validation runs: ``python -m h_model.lake make --validation`` (the 64 background characters the
trainer holds out, with their rotations as classes), one file of 20 runs per ``--val-seeds``
seed. Every candidate in ``CANDIDATES`` is scored by its mean error over all of them (each warped
view of every drawing is embedded once and shared by the candidates that use it). Two choices
are made, each the lowest (ties: the earlier, simpler one) that does not lower 5-way or 20-way
1-shot accuracy on ``--val-episodes`` episodes of the validation classes:

- ``per_drawing``: among the options that classify each query without assuming how the queries
  fall into the classes (augmentation, normalisation, transductive prototypes);
- ``balanced``: among the same options with ``balanced=true``, which assumes every class has as
  many queries (true of Lake's runs: one test drawing per class, and of evaluation episodes).

Both are then measured on ``--eval-seeds`` files of runs from ``images_evaluation`` (seed 0 is
``python -m h_model.lake make``'s default file), and on 1000 5-way and 20-way 1-shot test
episodes beside no options. With ``--write`` the per-drawing choice becomes the checkpoint's
``"test_time"`` config entry, unless it lowers either test-episode figure; ``balanced`` belongs to
the call (``Learner.predict(..., balanced=True)``, ``--test-time balanced=true``), as only the
caller knows whether its queries are balanced. Shifts are listed in pixels of a 28-pixel input
and scaled to the checkpoint's input size; options the model's head refuses (transductive steps
without a Prototypical head) are recorded and skipped. The run files go to ``--runs-dir``
(outside the repo).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_TTA = [{"shift": [s]} for s in (0.5, 1, 2)] + [{"rotate": [r, -r]} for r in (5, 10, 15)] \
    + [{"scale": [1 - s, 1 + s]} for s in (0.05, 0.1)] \
    + [{"shift": [1], "rotate": [10, -10]}, {"shift": [1], "rotate": [5, -5]},
       {"shift": [0.5, 1], "rotate": [5, -5, 10, -10]}, {"shift": [1], "rotate": [10, -10], "scale": [0.95, 1.05]}]
_NORM = [{"l2": True}, {"center": True}, {"center": True, "l2": True}]
_TRANS = [{"transductive_steps": n, "transductive_temperature": t} for n in (1, 3, 10) for t in (1, 10, 100)]
PER_DRAWING = [{}] + _TTA + _NORM + _TRANS \
    + [{**a, **b} for a in (_TTA[1], _TTA[4], _TTA[8], _TTA[10]) for b in (_TRANS[4], _TRANS[5], _TRANS[7])]
CANDIDATES = PER_DRAWING + [{**c, "balanced": True} for c in PER_DRAWING]


def scaled_to(candidate: dict, size: int) -> dict:
    """``candidate`` with its shifts (pixels of a 28-pixel input) scaled to a ``size``-pixel input."""
    if "shift" not in candidate or size == 28:
        return candidate
    return {**candidate, "shift": [round(s * size / 28, 2) for s in candidate["shift"]]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--runs-dir", default="lake_runs")
    ap.add_argument("--val-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--eval-seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--episodes", type=int, default=1000, help="test episodes per setting")
    ap.add_argument("--val-episodes", type=int, default=500, help="validation episodes per setting")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "lake.json"))
    ap.add_argument("--write", action="store_true", help="store the choice in the checkpoint's config.json")
    a = ap.parse_args(argv)

    import torch

    from h_model.checkpoint import write_json
    from h_model.data import load_splits
    from h_model.data.omniglot import find_omniglot
    from h_model.evaluate import evaluate
    from h_model.lake import BPL_ERROR, HUMAN_ERROR, evaluate_lake_runs, make_lake_runs, make_validation_runs, read_lake_runs
    from h_model.learner import Learner, pick_device
    from h_model.runtime import cpu_description
    from h_model.test_time import TestTime, embed_view, tt_head

    torch.set_num_threads(a.threads)
    device = pick_device(a.device)
    learner = Learner.load(a.checkpoint, device)
    runs_dir = Path(a.runs_dir)
    bg, ev = (find_omniglot(a.data_root, s, download=False) for s in ("background", "evaluation"))
    val = [r for s in a.val_seeds for r in read_lake_runs(make_validation_runs(bg, runs_dir / f"val_seed{s}.zip", seed=s))]
    test = [r for s in a.eval_seeds for r in read_lake_runs(make_lake_runs(ev, runs_dir / f"eval_seed{s}.zip", seed=s))]

    def lake(tt: TestTime, runs) -> float:
        learner.test_time = tt
        return evaluate_lake_runs(learner, runs)["mean_error"]

    # validation runs: every drawing decoded once, every warped view embedded once
    decoded = [(learner.tensors([r.train[c] for c in r.train]), learner.tensors([b for b, _ in r.test]),
                torch.tensor([list(r.train).index(c) for _, c in r.test])) for r in val]
    view_cache: dict[tuple, list] = {}

    def view_embeddings(view: tuple) -> list:
        if view not in view_cache:
            view_cache[view] = [(embed_view(learner.model, sx, view), embed_view(learner.model, qx, view))
                                for sx, qx, _ in decoded]
        return view_cache[view]

    def val_error(tt: TestTime) -> float:
        per_view = [view_embeddings(v) for v in tt._views]
        wrong = total = 0
        for i, (sx, _, truth) in enumerate(decoded):
            sz = torch.stack([pv[i][0] for pv in per_view]).mean(0)
            qz = torch.stack([pv[i][1] for pv in per_view]).mean(0)
            with torch.inference_mode():
                logits = tt_head(learner.model, tt, sz[None], torch.arange(len(sx))[None], qz[None], len(sx))[0]
            wrong += int((logits.argmax(-1) != truth).sum())
            total += len(truth)
        return 100.0 * wrong / total

    out: dict = {"checkpoint": str(a.checkpoint), "cpu": cpu_description(), "threads": a.threads,
                 "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                 "validation_runs": len(val), "validation_seeds": a.val_seeds, "evaluation_runs": len(test),
                 "evaluation_seeds": a.eval_seeds, "human_error": HUMAN_ERROR, "bpl_error": BPL_ERROR,
                 "validation": []}
    size = learner.preprocess.size[0]
    for c in CANDIDATES:
        c = scaled_to(c, size)
        t0 = time.perf_counter()
        try:
            err = val_error(TestTime.from_dict(c))
        except ValueError as e:  # an option the model's head refuses (transductive steps, not a Prototypical head)
            out.setdefault("refused", []).append({"test_time": c, "reason": str(e)})
            print(f"refused {c}: {e}", flush=True)
            continue
        out["validation"].append({"test_time": c, "mean_error": err})
        print(f"validation {err:5.2f} %  {c}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    cfg = json.loads((Path(a.checkpoint) / "config.json").read_text())
    data = dict(cfg["data"])
    if a.data_root:
        data["data_root"] = a.data_root
    _, val_set, test_set = load_splits(data.pop("name"), **data)

    def episodes(tt: TestTime, data_set, n: int, seed: int) -> dict:
        return {f"{w}w1s": evaluate(learner.model, data_set, w, 1, episodes=n, seed=seed, device=device, test_time=tt)
                for w in (5, 20)}

    # per group, the lowest validation-run error (first of equals: the simpler) that keeps the
    # validation classes' 5-way and 20-way 1-shot episode accuracy at least that of no options
    plain = episodes(TestTime(), val_set, a.val_episodes, 99)
    out["validation_episodes"] = {"none": plain}
    out["chosen"], out["evaluation"], out["episodes"] = {}, {"none": lake(TestTime(), test)}, {}
    for name, tt in (("none", TestTime()),):
        for way in (5, 20):
            out["episodes"][f"{name}_{way}w1s"] = evaluate(learner.model, test_set, way, 1, episodes=a.episodes,
                                                            device=device, test_time=tt)
    for group in ("per_drawing", "balanced"):
        rows = [r for r in out["validation"] if r["test_time"].get("balanced", False) == (group == "balanced")]
        best = None
        for r in sorted(rows, key=lambda r: r["mean_error"]):
            ep = episodes(TestTime.from_dict(r["test_time"]), val_set, a.val_episodes, 99)
            out["validation_episodes"][json.dumps(r["test_time"])] = ep
            ok = all(ep[k]["accuracy"] >= plain[k]["accuracy"] for k in ep)
            print(f"validation episodes {r['test_time']}: " + ", ".join(
                f"{k} {100 * ep[k]['accuracy']:.2f} % (none {100 * plain[k]['accuracy']:.2f})" for k in ep)
                + ("" if ok else ": lower, skipped"), flush=True)
            if ok:
                best = r
                break
        if best is None:
            continue
        chosen = TestTime.from_dict(best["test_time"])
        out["chosen"][group] = best
        out["evaluation"][group] = lake(chosen, test)
        print(f"{group}: chosen {best['test_time']}: validation {best['mean_error']:.2f} %, evaluation runs "
              f"{out['evaluation'][group]:.2f} % (no options: {out['evaluation']['none']:.2f} %; "
              f"people {HUMAN_ERROR} %, BPL {BPL_ERROR} %)", flush=True)
        for way in (5, 20):
            r = evaluate(learner.model, test_set, way, 1, episodes=a.episodes, device=device, test_time=chosen)
            out["episodes"][f"{group}_{way}w1s"] = r
            print(f"{group}: {way}-way 1-shot {100 * r['accuracy']:.2f} +- {100 * r['ci95']:.2f} % (none "
                  f"{100 * out['episodes'][f'none_{way}w1s']['accuracy']:.2f} %)", flush=True)
    worse = [k for k in ("5w1s", "20w1s") if "per_drawing" in out["chosen"]
             and out["episodes"][f"per_drawing_{k}"]["accuracy"] < out["episodes"][f"none_{k}"]["accuracy"]]
    out["test_episodes_worse"] = worse
    write_json(a.out, out)
    if a.write and worse:
        print(f"not written: the per-drawing choice lowers test {', '.join(worse)} accuracy")
    elif a.write and "per_drawing" in out["chosen"]:
        chosen = TestTime.from_dict(out["chosen"]["per_drawing"]["test_time"])
        cfg["test_time"] = chosen.to_dict()
        write_json(Path(a.checkpoint) / "config.json", cfg)
        print(f"wrote test_time {chosen.to_dict()} to {Path(a.checkpoint) / 'config.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
