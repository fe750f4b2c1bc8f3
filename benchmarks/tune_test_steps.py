#!/usr/bin/env python
"""Test-time inner steps of a MAML-family checkpoint: chosen on validation classes, then measured on test.

    python benchmarks/tune_test_steps.py RUN_DIR [--steps 3 5 10] [--val-episodes 500] [--out results.json] [--write]

For each candidate ``test_steps``, 5-way 1-shot accuracy on the checkpoint's validation classes
(``--val-episodes`` episodes, one fixed seed for all); the best one is then measured on the test
classes at 5-way and 20-way 1-shot (1000 episodes each, the evaluator's default seed). With
``--write`` the chosen value goes into the checkpoint's ``config.json`` (so ``h_model.load`` and
the evaluator adapt with it); otherwise the checkpoint is not changed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--steps", type=int, nargs="+", default=[3, 5, 10])
    ap.add_argument("--val-episodes", type=int, default=500)
    ap.add_argument("--test-episodes", type=int, default=1000)
    ap.add_argument("--query", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--write", action="store_true", help="store the chosen test_steps in RUN_DIR/config.json")
    a = ap.parse_args(argv)

    import torch

    from h_model.checkpoint import CONFIG, load_checkpoint, write_json
    from h_model.data import load_splits
    from h_model.evaluate import evaluate

    torch.set_num_threads(a.threads)
    run = Path(a.run_dir)
    cfg = json.loads((run / "config.json").read_text())
    data = dict(cfg["data"])
    _, val, test = load_splits(data.pop("name"), **data)
    model, _ = load_checkpoint(run / "model.safetensors", "cpu")
    if not hasattr(model, "test_steps"):
        raise SystemExit(f"{run} is a {cfg['model']['variant']} model: it has no test-time inner steps")
    out: dict = {"run": str(run), "trained_test_steps": model.test_steps, "validation_5w1s": {}}
    for steps in a.steps:
        model.test_steps = steps
        t0 = time.perf_counter()
        r = evaluate(model, val, 5, 1, a.query, a.val_episodes, seed=99, device="cpu")
        out["validation_5w1s"][str(steps)] = r
        print(f"validation 5w1s, {steps:3d} test steps: {100 * r['accuracy']:.2f} +- {100 * r['ci95']:.2f} % "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    best = max(a.steps, key=lambda s: out["validation_5w1s"][str(s)]["accuracy"])
    model.test_steps = out["chosen_test_steps"] = best
    for way in (5, 20):
        r = evaluate(model, test, way, 1, a.query, a.test_episodes, device="cpu")
        out[f"{way}w1s"] = r
        print(f"test {way}w1s with {best} test steps: {100 * r['accuracy']:.2f} +- {100 * r['ci95']:.2f} %", flush=True)
    if a.write:
        cfg["model"].setdefault("model_kwargs", {})["test_steps"] = best
        cfg["test_steps_tuning"] = {k: out[k] for k in ("trained_test_steps", "validation_5w1s", "chosen_test_steps")}
        write_json(run / CONFIG, cfg)
        print(f"wrote test_steps={best} into {run / CONFIG}")
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
