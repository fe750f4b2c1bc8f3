#!/usr/bin/env python
"""Omniglot on one GPU: the in-context learner and the Lake-run models, side by side, then each
checkpoint's test-time options chosen on validation runs and measured on evaluation runs.

    python benchmarks/bench_omniglot_gpu.py --minutes 5.5                     # on a machine with CUDA
    python benchmarks/bench_omniglot_gpu.py --device cpu --minutes 0.3 --eval-episodes 20 \\
        --lake-args "--val-seeds 0 --val-episodes 20 --episodes 20"         # dry run

Default runs (``training/train_h.py``, each with its config and only the device, time budget and
evaluation episodes overridden):

* ``transformer``: ``transformer_omniglot_gpu.yaml`` (the in-context learner, 28x28);
* ``proto84``: ``proto_omniglot_lake_gpu.yaml`` (Prototypical Conv-4 at 84x84, augmented);
* ``resnet12_56``: ``proto_resnet12_omniglot_lake_gpu.yaml`` (Prototypical ResNet-12 at 56x56).

``--job NAME=ARGS`` (repeatable) replaces them. When a run ends, ``benchmarks/tune_lake.py``
chooses its test-time options on within-alphabet runs of the validation characters and measures
the choice on runs of the evaluation alphabets (``--lake-args`` adds to its flags). The run folders
go to ``--runs-dir``; every run's test figures and Lake errors to ``--out`` and stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_faces_gpu import parse_jobs  # noqa: E402
from h_model.checkpoint import write_json  # noqa: E402

JOBS = {
    "transformer": "--config training/configs/transformer_omniglot_gpu.yaml",
    "proto84": "--config training/configs/proto_omniglot_lake_gpu.yaml",
    "resnet12_56": "--config training/configs/proto_resnet12_omniglot_lake_gpu.yaml",
}
SETTINGS = ("5w1s", "5w5s", "20w1s", "20w5s")


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def summary(name: str, res: dict, lake: dict) -> str:
    acc = " / ".join(f"{100 * res[s]['accuracy']:.2f}" if s in res else "-" for s in SETTINGS)
    train = res.get("train", {})
    ev = lake.get("evaluation", {})
    lake_txt = (f"Lake eval runs {ev['none']:.2f} % (none) / {ev['chosen']:.2f} % ({lake['chosen']['test_time']})"
                if ev else "Lake: -")
    return f"{name:12s} {train.get('episodes')} episodes, test {acc} %, {lake_txt}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=5.5, help="training budget of each run")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--runs-dir", default="runs/omniglot_gpu")
    ap.add_argument("--eval-episodes", type=int, default=1000)
    ap.add_argument("--job", action="append", default=[], metavar="NAME=ARGS", help="a run NAME with train_h.py ARGS")
    ap.add_argument("--lake-args", default="", help="extra flags of benchmarks/tune_lake.py")
    ap.add_argument("--threads", type=int, default=4, help="CPU threads per run")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "omniglot_gpu.json"))
    a = ap.parse_args(argv)
    runs = Path(a.runs_dir)
    runs.mkdir(parents=True, exist_ok=True)
    jobs = parse_jobs(a.job or [f"{k}={v}" for k, v in JOBS.items()])
    common = ["--device", a.device, "--time-limit-min", str(a.minutes), "--eval-episodes", str(a.eval_episodes)]
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
    t0 = time.time()
    train = {name: subprocess.Popen([sys.executable, "training/train_h.py", *args, *common, "--out", str(runs / name)],
                                    cwd=REPO, stdout=open(runs / f"{name}.log", "w"), stderr=subprocess.STDOUT, env=env)
             for name, args in jobs.items()}
    tune: dict[str, subprocess.Popen] = {}
    report: dict = {"device": a.device, "minutes": a.minutes, "jobs": {k: shlex.join(v) for k, v in jobs.items()},
                    "runs": {}}
    while train or tune:  # start each run's Lake tuning as soon as its training ends
        for name, p in list(train.items()):
            if p.poll() is not None:
                del train[name]
                report["runs"][name] = {"train_rc": p.returncode, "train_wall_s": round(time.time() - t0, 1)}
                if p.returncode == 0:
                    cmd = [sys.executable, "benchmarks/tune_lake.py", str(runs / name), "--device", a.device,
                           "--threads", str(a.threads), "--runs-dir", str(runs / "lake_runs" / name),
                           "--out", str(runs / name / "lake.json"), *shlex.split(a.lake_args)]
                    tune[name] = subprocess.Popen(cmd, cwd=REPO, stdout=open(runs / f"{name}_lake.log", "w"),
                                                  stderr=subprocess.STDOUT, env=env)
        for name, p in list(tune.items()):
            if p.poll() is not None:
                del tune[name]
                report["runs"][name].update(lake_rc=p.returncode, lake_wall_s=round(time.time() - t0, 1))
        time.sleep(1)
    ok = True
    for name, r in report["runs"].items():
        res, lake = read_json(runs / name / "results.json"), read_json(runs / name / "lake.json")
        r.update(results=res, lake=lake)
        ok &= r["train_rc"] == 0 and r.get("lake_rc") == 0
        print(summary(name, res, lake), flush=True)
    write_json(a.out, report)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
