#!/usr/bin/env python
"""The GPU check, as one short script (about 9 minutes on one H100).

    python benchmarks/bench_gpu.py                                   # on a machine with CUDA
    python benchmarks/bench_gpu.py --device cpu --proto-min 0.3 --meta-min 0.3 --eval-episodes 20   # dry run

Three parts, each through the project's own entry points:
1. MAML meta-iteration cost on the GPU (``benchmarks/bench_maml.py --device cuda``): exact vs
   first-order, torch.func vs a naive per-task loop, 16 tasks of 5-way 1-shot.
2. The Prototypical paper setting (60-way 5-shot training, ``training/configs/proto_omniglot_gpu.yaml``)
   alone on the GPU with mixed precision for ``--proto-min`` minutes: episodes per second, minutes
   to the first 5-way 1-shot validation accuracy >= 98%, then the four test settings.
3. MAML, first-order MAML and the LSTM meta-learner side by side on the GPU (their Omniglot
   configs) for ``--meta-min`` minutes each, then 5-way 1-shot and 20-way 1-shot test accuracy.

Runs go to ``--runs-dir``; the figures to ``--out`` (JSON) and stdout (a table).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from h_model.checkpoint import write_json  # noqa: E402
META = ("maml", "fomaml", "lstm")


def run(cmd: list[str], log: Path, env: dict[str, str] | None = None, timeout: float | None = None) -> dict[str, Any]:
    """Run ``cmd`` with output to ``log``; never raises (a failed part must not lose the others)."""
    t = time.time()
    with open(log, "w") as f:
        try:
            rc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, timeout=timeout,
                                env={**os.environ, **(env or {})}).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    return {"rc": rc, "wall_s": round(time.time() - t, 1), "log": str(log)}


def start(cmd: list[str], log: Path, env: dict[str, str]) -> tuple[subprocess.Popen, Any, float]:
    f = open(log, "w")
    return subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **env}), f, time.time()


def train_cmd(config: str, out: Path, a: argparse.Namespace, minutes: float) -> list[str]:
    return [sys.executable, "training/train_h.py", "--config", f"training/configs/{config}",
            "--device", a.device, "--time-limit-min", str(minutes), "--eval-episodes", str(a.eval_episodes),
            "--out", str(out)]


def read_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def curve_figures(run_dir: Path, target: float) -> dict[str, Any]:
    """Training rate without validation time, and when validation first reached ``target``."""
    rows = read_rows(run_dir / "metrics.csv")
    rates = []
    for prev, cur in zip(rows, rows[1:]):
        dt = float(cur["elapsed_s"]) - float(prev["elapsed_s"])
        if prev["val_acc"] == "" and cur["loss"] != "" and dt > 0:
            rates.append((int(cur["episode"]) - int(prev["episode"])) / dt)
    first = next((r for r in rows if r["val_acc"] != "" and float(r["val_acc"]) >= target), None)
    vals = [(int(r["episode"]), float(r["elapsed_s"]), float(r["val_acc"])) for r in rows if r["val_acc"] != ""]
    return {"train_episodes_per_s": round(statistics.median(rates), 2) if rates else None,
            f"first_val_ge_{target}": None if first is None else
            {"episode": int(first["episode"]), "minutes": round(float(first["elapsed_s"]) / 60, 2),
             "val_acc": float(first["val_acc"])},
            "validation": vals}


def collect(run_dir: Path, target: float) -> dict[str, Any]:
    p = run_dir / "results.json"
    res = json.loads(p.read_text()) if p.exists() else {}
    return {"results": res, **curve_figures(run_dir, target)}


def table(report: dict[str, Any]) -> str:
    lines = ["| run | episodes | ep/s (train) | to 98% val | 5w1s | 5w5s | 20w1s | 20w5s | peak GPU MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in report["runs"].items():
        res, tr = r.get("results", {}), r.get("results", {}).get("train", {})
        first = r.get("first_val_ge_0.98")
        cells = [f"{100 * res[s]['accuracy']:.2f} +-{100 * res[s]['ci95']:.2f}" if s in res else "-"
                 for s in ("5w1s", "5w5s", "20w1s", "20w5s")]
        reached = f"{first['minutes']} min ({first['episode']} ep)" if first else "not reached"
        lines.append(f"| {name} | {tr.get('episodes', '-')} | {r.get('train_episodes_per_s') or '-'} | {reached} | "
                     + " | ".join(cells) + f" | {tr.get('peak_gpu_mb', '-')} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--proto-min", type=float, default=3.0, help="training minutes of the Prototypical run")
    ap.add_argument("--meta-min", type=float, default=3.5, help="training minutes of each meta-learner")
    ap.add_argument("--eval-episodes", type=int, default=1000)
    ap.add_argument("--maml-iters", type=int, default=10, help="timed meta-iterations in the MAML cost benchmark")
    ap.add_argument("--parts", nargs="+", default=["maml_speed", "proto", "meta"])
    ap.add_argument("--runs-dir", default=str(REPO / "runs" / "gpu"))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "gpu.json"))
    a = ap.parse_args()
    runs = Path(a.runs_dir)
    runs.mkdir(parents=True, exist_ok=True)
    import torch

    report: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(),
                              "device": torch.cuda.get_device_name(0) if a.device.startswith("cuda") else platform.processor() or "cpu",
                              "cpus": os.cpu_count(), "args": vars(a), "parts": {}, "runs": {}}
    t0 = time.time()

    def save() -> None:  # after every part, so a run cut short keeps what it measured
        report["total_s"] = round(time.time() - t0, 1)
        write_json(a.out, report, indent=1)

    if "maml_speed" in a.parts:
        print("== MAML meta-iteration cost", flush=True)
        out = runs / "maml_speed.json"
        report["parts"]["maml_speed"] = run([sys.executable, "benchmarks/bench_maml.py", "--device", a.device,
                                             "--iters", str(a.maml_iters), "--warmup", "2", "--out", str(out)],
                                            runs / "maml_speed.log", timeout=150)
        if out.exists():
            report["maml_speed"] = json.loads(out.read_text())
        save()
    if "proto" in a.parts:
        print(f"== Prototypical, paper setting, {a.proto_min} min", flush=True)
        report["parts"]["proto"] = run(train_cmd("proto_omniglot_gpu.yaml", runs / "proto", a, a.proto_min),
                                       runs / "proto.log")
        report["runs"]["proto 60w5s amp"] = collect(runs / "proto", 0.98)
        save()
    if "meta" in a.parts:
        print(f"== {', '.join(META)} side by side, {a.meta_min} min each", flush=True)
        threads = str(max(1, (os.cpu_count() or 3) // len(META)))
        procs = {m: start(train_cmd(f"{m}_omniglot.yaml", runs / m, a, a.meta_min), runs / f"{m}.log",
                          {"OMP_NUM_THREADS": threads}) for m in META}
        for m, (p, f, t) in procs.items():
            rc = p.wait()
            f.close()
            report["parts"][m] = {"rc": rc, "wall_s": round(time.time() - t, 1), "log": str(runs / f"{m}.log")}
            report["runs"][m] = collect(runs / m, 0.98)
            save()
    print(table(report))
    if "maml_speed" in report:
        print(json.dumps(report["maml_speed"].get("summary", report["maml_speed"]), indent=1)[:3000])
    failed = {k: v["rc"] for k, v in report["parts"].items() if v["rc"] != 0}
    if failed:
        print(f"failed parts: {failed}; see their logs in {runs}")
    print(f"wrote {a.out} ({report['total_s']} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
