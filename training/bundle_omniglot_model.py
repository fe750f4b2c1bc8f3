#!/usr/bin/env python
"""Make an Omniglot training run the bundled few-shot model, measured where it is bundled.

    python training/bundle_omniglot_model.py RUN_DIR [--out h_model/bundled/omniglot_proto_resnet12] [--float16]

Copies the run's checkpoint (weights in half precision with ``--float16``), drops the paths of the
machine it trained on, then measures the copy on this machine: 1000 test episodes of each of
5-way and 20-way 1- and 5-shot on the evaluation alphabets, and the mean error on Lake et al.'s
within-alphabet runs built from the evaluation alphabets (``python -m h_model.lake make --seed S``
for each ``--lake-seeds``). The figures, with the training run's own, go to the copy's
``results.json``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SETTINGS = ("5w1s", "5w5s", "20w1s", "20w5s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--out", default=str(REPO / "h_model" / "bundled" / "omniglot_proto_resnet12"))
    ap.add_argument("--float16", action="store_true", help="store the weights in half precision")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--episodes", type=int, default=1000)
    ap.add_argument("--lake-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    a = ap.parse_args(argv)

    import torch

    from h_model.checkpoint import store_float16, write_json
    from h_model.data import load_splits
    from h_model.data.omniglot import find_omniglot
    from h_model.evaluate import embed_all, evaluate, parse_setting
    from h_model.lake import evaluate_lake_runs, make_lake_runs
    from h_model.learner import Learner
    from h_model.runtime import cpu_description

    src, dst = Path(a.run_dir), Path(a.out)
    cfg = json.loads((src / "config.json").read_text())
    if cfg.get("data", {}).get("name") != "omniglot":
        raise SystemExit(f"{src} is not an Omniglot run (its data is {cfg.get('data', {}).get('name')!r})")
    trained = json.loads((src / "results.json").read_text()).get("train", {}) if (src / "results.json").is_file() else {}
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "model.safetensors", dst / "model.safetensors")
    cfg["data"]["data_root"] = None
    cfg["train"].update(data_root=None, out=f"runs/{dst.name}")
    if a.float16:
        cfg["stored_as"] = "float16"
        store_float16(dst / "model.safetensors")
    write_json(dst / "config.json", cfg)

    learner = Learner.load(dst, "cpu")
    data = dict(cfg["data"], data_root=a.data_root)
    _, _, test = load_splits(data.pop("name"), **data)
    z = embed_all(learner.model, test, "cpu") if learner.test_time.is_default else None
    results: dict = {}
    for s in SETTINGS:
        way, shot = parse_setting(s)
        results[s] = evaluate(learner.model, test, way, shot, episodes=a.episodes, embeddings=z, test_time=learner.test_time)
        print(f"{s}: {100 * results[s]['accuracy']:.2f} +- {100 * results[s]['ci95']:.2f} %", flush=True)
    root = find_omniglot(a.data_root, "evaluation", download=False)
    errors, joint = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in a.lake_seeds:
            runs = make_lake_runs(root, Path(tmp) / f"eval_seed{seed}.zip", seed=seed)
            res = evaluate_lake_runs(learner, runs)
            errors[str(seed)] = res["mean_error"]
            if "mean_error_balanced" in res:
                joint[str(seed)] = res["mean_error_balanced"]
    mean = sum(errors.values()) / len(errors)
    results["lake_evaluation_runs"] = {"mean_error_by_seed": errors, "mean_error": mean, "runs": 20 * len(errors),
                                       "command": "python -m h_model.lake make --omniglot-root DATA/omniglot-py/images_evaluation --seed S"}
    if joint:  # each run's drawings assigned to its classes jointly (balanced=true)
        results["lake_evaluation_runs"].update(mean_error_balanced_by_seed=joint,
                                               mean_error_balanced=sum(joint.values()) / len(joint))
    print(f"Lake runs of the evaluation alphabets: {mean:.2f} % mean error over {20 * len(errors)} runs "
          f"(seed 0: {errors.get('0', float('nan')):.2f} %)"
          + (f"; balanced: {sum(joint.values()) / len(joint):.2f} %" if joint else ""), flush=True)
    results["measured_on"] = {"cpu": cpu_description(), "threads": torch.get_num_threads(),
                              "command": "python training/bundle_omniglot_model.py RUN_DIR" + (" --float16" if a.float16 else "")}
    results["train"] = trained
    write_json(dst / "results.json", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
