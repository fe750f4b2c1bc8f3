#!/usr/bin/env python
"""Omniglot accuracy of every H-network variant after a 30-minute CPU training budget.

Trains each variant with ``training/configs/<variant>_omniglot_cpu30.yaml`` (a separate
process, so peak memory is per run), then evaluates 1000 test episodes (95% CI) for 5-way
1-shot, 5-way 5-shot, 20-way 1-shot and 20-way 5-shot on the evaluation alphabets, and prints
them beside the papers' figures.

    python benchmarks/bench_accuracy.py                       # all variants, ~105 min on 2 cores
    python benchmarks/bench_accuracy.py --variants proto
    python benchmarks/bench_accuracy.py --collect-only        # re-read finished runs
    OMP_NUM_THREADS=1 python benchmarks/bench_accuracy.py --variants proto transformer --time-limit-min 15 \
        --out benchmarks/results/accuracy_incontext_15min.json   # a shorter budget, one thread
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from h_model.checkpoint import write_json  # noqa: E402
SETTINGS = ["5w1s", "5w5s", "20w1s", "20w5s"]
PAPER = {  # GPU, full schedules, as reported
    "proto": ("Snell et al. 2017", [98.8, 99.7, 96.0, 98.9]),
    "matching": ("Vinyals et al. 2016", [98.1, 98.9, 93.8, 98.5]),
    "siamese": ("Koch et al. 2015 (via Vinyals et al.)", [96.7, 98.4, 88.0, 96.5]),
    # the closest published in-context learner (temporal convolutions + attention, not a Transformer)
    "transformer": ("SNAIL, Mishra et al. 2018", [99.07, 99.78, 97.64, 99.36]),
}
TARGETS = {"proto": [98.0, 99.4, 94.5, 98.3]}
WITHIN_PAPER = {"matching": 2.0, "siamese": 2.0}  # points under the paper allowed, every setting
WITHIN_VARIANT = {"transformer": ("proto", 1.0, ["5w1s", "5w5s"])}  # points under another variant, same budget


def cpu_model() -> str:
    """The CPU's model name and whether it has AMX / AVX-512 (from /proc/cpuinfo)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "unknown")
    flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []))
    extras = [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{name}, {os.cpu_count()} cores" + (f" ({', '.join(extras)})" if extras else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=list(PAPER))
    ap.add_argument("--runs-dir", default=str(REPO / "runs" / "bench"))
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--collect-only", action="store_true")
    ap.add_argument("--time-limit-min", type=float, default=None, help="training minutes (default: the config's)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "accuracy.json"))
    a = ap.parse_args()
    table = {}
    for v in a.variants:
        run_dir = Path(a.runs_dir) / v
        if not a.collect_only:
            cmd = [sys.executable, str(REPO / "training" / "train_h.py"), "--config",
                   str(REPO / "training" / "configs" / f"{v}_omniglot_cpu30.yaml"), "--out", str(run_dir)]
            if a.data_root:
                cmd += ["--data-root", a.data_root]
            if a.time_limit_min is not None:
                cmd += ["--time-limit-min", str(a.time_limit_min)]
            print("$", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
        res = json.loads((run_dir / "results.json").read_text())
        limit = json.loads((run_dir / "train_config.json").read_text())["time_limit_min"]
        table[v] = {"ours": {s: res[s] for s in SETTINGS}, "train": {**res["train"], "time_limit_min": limit},
                    "cpu": cpu_model(),
                    "paper": dict(zip(SETTINGS, PAPER[v][1])), "paper_source": PAPER[v][0],
                    "config": f"training/configs/{v}_omniglot_cpu30.yaml",
                    **{k: res[k] for k in ("test_time_tuning", "pool_max") if k in res}}
    out = Path(a.out)
    old = json.loads(out.read_text()) if out.exists() else {}
    old.update(table)
    write_json(out, old)
    print("\n| variant | | 5-way 1-shot | 5-way 5-shot | 20-way 1-shot | 20-way 5-shot | CPU training |")
    print("|---|---|---|---|---|---|---|")
    for v, r in table.items():
        ours = " | ".join(f"{100 * r['ours'][s]['accuracy']:.1f} +- {100 * r['ours'][s]['ci95']:.1f}" for s in SETTINGS)
        paper = " | ".join(f"{x:.1f}" for x in PAPER[v][1])
        t = r["train"]
        print(f"| {v} | ours | {ours} | {t['episodes']} episodes, {t['time_s'] / 60:.1f} min, peak {t['peak_rss_mb']:.0f} MB |")
        print(f"| | paper | {paper} | GPU, full schedule |")
        if v in TARGETS:
            met = all(100 * r["ours"][s]["accuracy"] >= x for s, x in zip(SETTINGS, TARGETS[v]))
            print(f"| | target | {' | '.join(f'{x:.1f}' for x in TARGETS[v])} | {'met' if met else 'NOT met'} |")
        if v in WITHIN_PAPER:
            gaps = [100 * r["ours"][s]["accuracy"] - x for s, x in zip(SETTINGS, PAPER[v][1])]
            met = all(g >= -WITHIN_PAPER[v] for g in gaps)
            print(f"| | ours - paper | {' | '.join(f'{g:+.1f}' for g in gaps)} | within {WITHIN_PAPER[v]:.0f} points: "
                  f"{'met' if met else 'NOT met'} |")
        if v in WITHIN_VARIANT and WITHIN_VARIANT[v][0] in old:
            other, points, settings = WITHIN_VARIANT[v]
            gaps = {s: 100 * (r["ours"][s]["accuracy"] - old[other]["ours"][s]["accuracy"]) for s in settings}
            met = all(g >= -points for g in gaps.values())
            print(f"| | ours - {other} | {' | '.join(f'{gaps[s]:+.1f}' if s in gaps else '' for s in SETTINGS)} | "
                  f"within {points:.0f} point of {other} at {', '.join(settings)}: {'met' if met else 'NOT met'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
