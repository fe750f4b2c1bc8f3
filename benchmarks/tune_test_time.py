#!/usr/bin/env python
"""A test-time setting of a checkpoint, chosen on validation classes, then measured on test.

    python benchmarks/tune_test_time.py RUN_DIR --knob test_steps --values 3 5 10 [--write]
    python benchmarks/tune_test_time.py RUN_DIR --knob pool --values max mean [--write]

Knobs (model attributes the training loss does not fix):

- ``test_steps``: inner steps at test of a MAML-family model; chosen on 5-way 1-shot, measured
  on 5-way and 20-way 1-shot.
- ``pool``: how a Siamese network pools its pair logits over a class's support examples
  (``max`` or ``mean``); only matters with several shots, so chosen on 5-way 5-shot and
  measured on 5-way and 20-way 5-shot.

For each value, accuracy on the checkpoint's validation classes (``--val-episodes`` episodes, one
fixed seed for all); the best value is then measured on the test classes (1000 episodes each,
the evaluator's default seed). With ``--write`` the choice goes into the checkpoint's
``config.json`` (so ``h_model.load`` and the evaluator use it); otherwise nothing is changed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KNOBS = {  # knob: (value type, validation setting, test settings)
    "test_steps": (int, (5, 1), [(5, 1), (20, 1)]),
    "pool": (str, (5, 5), [(5, 5), (20, 5)]),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--knob", choices=sorted(KNOBS), default="test_steps")
    ap.add_argument("--values", nargs="+", required=True, help="candidate values of the knob")
    ap.add_argument("--val-episodes", type=int, default=500)
    ap.add_argument("--test-episodes", type=int, default=1000)
    ap.add_argument("--query", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--write", action="store_true", help="store the chosen value in RUN_DIR/config.json")
    a = ap.parse_args(argv)
    kind, (vway, vshot), test_settings = KNOBS[a.knob]
    try:
        values = [kind(v) for v in a.values]
    except ValueError:
        ap.error(f"--values for {a.knob} must be {kind.__name__}s, got {a.values}")

    import torch

    from h_model.checkpoint import CONFIG, load_checkpoint, write_json
    from h_model.data import load_splits
    from h_model.evaluate import evaluate
    from h_model.plots import write_report

    torch.set_num_threads(a.threads)
    run = Path(a.run_dir)
    cfg = json.loads((run / "config.json").read_text())
    data = dict(cfg["data"])
    _, val, test = load_splits(data.pop("name"), **data)
    model, _ = load_checkpoint(run / "model.safetensors", "cpu")
    if not hasattr(model, a.knob):
        raise SystemExit(f"{run} is a {cfg['model']['variant']} model: it has no test-time `{a.knob}`")
    val_key = f"validation_{vway}w{vshot}s"
    out: dict = {"run": str(run), "knob": a.knob, "trained": getattr(model, a.knob), val_key: {}}
    for v in values:
        setattr(model, a.knob, v)
        t0 = time.perf_counter()
        r = evaluate(model, val, vway, vshot, a.query, a.val_episodes, seed=99, device="cpu")
        out[val_key][str(v)] = r
        print(f"validation {vway}w{vshot}s, {a.knob}={v}: {100 * r['accuracy']:.2f} +- {100 * r['ci95']:.2f} % "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    best = max(values, key=lambda v: out[val_key][str(v)]["accuracy"])
    out["chosen"] = best
    setattr(model, a.knob, best)
    for way, shot in test_settings:
        r = evaluate(model, test, way, shot, a.query, a.test_episodes, device="cpu")
        out[f"{way}w{shot}s"] = r
        print(f"test {way}w{shot}s with {a.knob}={best}: {100 * r['accuracy']:.2f} +- {100 * r['ci95']:.2f} %",
              flush=True)
    if a.write:
        cfg["model"].setdefault("model_kwargs", {})[a.knob] = best
        cfg.setdefault("test_time_tuning", {})[a.knob] = {k: out[k] for k in ("trained", val_key, "chosen")}
        write_json(run / CONFIG, cfg)
        print(f"wrote {a.knob}={best} into {run / CONFIG}")
    if a.out:
        write_report(a.out, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
