#!/usr/bin/env python
"""Face H-model on a GPU: the student from scratch and the dlib-distilled student, side by side.

The GPU box has neither the photos nor dlib, so both runs read a face pack written where they are:

    python -m h_model.faces pack PACK --teacher dlib                  # here: aligned crops + dlib embeddings
    python benchmarks/bench_faces_gpu.py --pack PACK --minutes 7      # there: both runs share one GPU

Each run is ``training/train_h.py`` with the CPU configs (``faces.yaml``, ``faces_distill.yaml``)
and only the device, mixed precision, time budget and checkpoint interval changed, so the figures
answer one question: does the longer training a GPU allows raise them? ``--job NAME=ARGS``
(repeatable) replaces those two runs by others, e.g. a sweep of distillation weights:
``--job "d4=--config training/configs/faces_distill.yaml --teacher precomputed --distill-embed 4"``
(``--teacher precomputed`` gets ``--teacher-file PACK/teacher-dlib.pt`` added). The runs share the
GPU and ``--threads`` CPU threads each. The run folders go to ``--runs-dir``; their results
(episodes, speed, verification on test identities) to ``--out``.
The figures that count are measured afterwards on the original crops with
``benchmarks/bench_faces.py`` (the pack's WebP crops differ from them by about 2 grey levels).
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

from h_model.checkpoint import write_json  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pack", required=True, help="face pack folder with teacher-dlib.pt")
    ap.add_argument("--minutes", type=float, default=7.0, help="training budget of each run")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--runs-dir", default="runs/faces_gpu")
    ap.add_argument("--eval-episodes", type=int, default=1000)
    ap.add_argument("--job", action="append", default=[], metavar="NAME=ARGS",
                    help="a run: its name and train_h.py arguments (default: scratch and distilled)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads per run (default: PyTorch's)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "faces_gpu.json"))
    a = ap.parse_args(argv)
    runs = Path(a.runs_dir)
    runs.mkdir(parents=True, exist_ok=True)
    pack = Path(a.pack)
    common = ["--face-pack", str(pack), "--device", a.device, "--time-limit-min", str(a.minutes),
              "--checkpoint-every", "1000", "--val-every", "500", "--eval-episodes", str(a.eval_episodes)]
    if a.device.startswith("cuda"):
        common.append("--amp")
    jobs = parse_jobs(a.job) if a.job else {
        "scratch": ["--config", "training/configs/faces.yaml"],
        "distilled": ["--config", "training/configs/faces_distill.yaml", "--teacher", "precomputed"]}
    for args in jobs.values():
        if "precomputed" in args and "--teacher-file" not in args:
            args += ["--teacher-file", str(pack / "teacher-dlib.pt")]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(a.threads)} if a.threads else {})}
    procs, t0 = {}, time.time()
    for name, args in jobs.items():
        log = open(runs / f"{name}.log", "w")
        procs[name] = subprocess.Popen([sys.executable, "training/train_h.py", *args, *common, "--out", str(runs / name)],
                                       cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    report: dict = {"device": a.device, "minutes": a.minutes, "pack": str(pack),
                    "jobs": {k: shlex.join(v) for k, v in jobs.items()}, "runs": {}}
    for name, p in procs.items():
        rc = p.wait()
        res_file = runs / name / "results.json"
        res = json.loads(res_file.read_text()) if res_file.exists() else {}
        report["runs"][name] = {"rc": rc, "wall_s": round(time.time() - t0, 1), **res}
        train = res.get("train", {})
        ver = res.get("verification", {})
        print(f"{name:10s} rc={rc} episodes={train.get('episodes')} ep/s={train.get('episodes_per_s')} "
              f"gpu={train.get('gpu')} val={train.get('best_val_accuracy')} "
              f"verification={ver.get('accuracy')} tar@far1e-3={ver.get('tar_at_far', {}).get('0.001', {}).get('tar')}", flush=True)
    write_json(a.out, report)
    return 0 if all(r["rc"] == 0 for r in report["runs"].values()) else 1


def parse_jobs(specs: list[str]) -> dict[str, list[str]]:
    """``["name=--flag value ...", ...]`` -> ``{name: [args]}`` (names unique, letters/digits/_/-)."""
    jobs: dict[str, list[str]] = {}
    for spec in specs:
        name, sep, args = spec.partition("=")
        name = name.strip()
        if not sep or not name or not all(c.isalnum() or c in "_-" for c in name):
            raise SystemExit(f"--job wants NAME=ARGS with a plain name, got {spec!r}")
        if name in jobs:
            raise SystemExit(f"--job name {name!r} given twice")
        jobs[name] = shlex.split(args)
    return jobs


if __name__ == "__main__":
    sys.exit(main())
