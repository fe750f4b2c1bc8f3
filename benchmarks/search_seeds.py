#!/usr/bin/env python
"""Controller against random search over several seeds: how often, and by how much, it wins.

    python benchmarks/search_seeds.py --export-background runs/seeds/bg.pt   # once, where the data is
    python benchmarks/search_seeds.py --background runs/seeds/bg.pt --seeds 1 2 3 4 \\
        --variant random=--random --variant controller= --parallel 16 --deadline-min 8 --out runs/seeds

One search per (search, variant, seed) job, each a run of ``training/search_<search>.py`` with
its default settings, the variant's extra flags, ``--seed`` and ``--rescore`` (its top designs
re-scored with fresh seeds), ``--parallel`` jobs at a time (one CPU thread each). Jobs still
running at ``--deadline-min`` are stopped and left out. For every variant whose name starts with
``controller`` and its partner (the same name with ``random``), per search: on how many seeds
the controller's best re-scored design beats random search's, and the mean difference.
Writes ``--out/study.json`` (every job's summary and reward sequence), ``--out/study.png`` (best
reward so far against designs trained, mean over seeds) and prints a table. ``--replot`` redraws
the PNG of an earlier study.json.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from h_model.checkpoint import write_json  # noqa: E402

SEARCHES = ("optimizer", "activation", "nas")


def export_background(path: str, data_root: str | None) -> None:
    from h_model.data.omniglot import load_omniglot_split, omniglot_preprocess
    bg = load_omniglot_split(data_root, "background", omniglot_preprocess(28))
    bg.sources = None  # machine paths stay here
    bg.save(path)
    print(f"wrote {path}: {len(bg)} images of {bg.num_classes} characters")


def job_summary(run_dir: Path) -> dict[str, Any] | None:
    """A finished job's figures; for a stopped one, only what its designs.csv holds so far."""
    if not (run_dir / "designs.csv").exists():
        return None
    with open(run_dir / "designs.csv") as f:
        rows = list(csv.DictReader(f))
    if not (run_dir / "results.json").exists():
        return {"partial": True, "designs": len(rows), "elapsed_s": float(rows[-1]["elapsed_s"]) if rows else 0.0,
                "rewards": [float(r["reward"]) for r in rows], "cached": [int(r.get("cached") or 0) for r in rows]}
    res = json.loads((run_dir / "results.json").read_text())
    mode = next(iter(res["runs"]))
    run = res["runs"][mode]
    return {"mode": mode, "designs": run["designs"], "samples": run.get("samples", run["designs"]),
            "elapsed_s": run["elapsed_s"], "best_search_reward": run["best"]["reward"],
            "best_rescored_mean": res["best_rescored_mean"][mode], "rescored_top": res["rescored_top"][mode],
            "mean_reward": run["mean_reward"], "mean_reward_second_half": run["mean_reward_second_half"],
            "rewards": [float(r["reward"]) for r in rows], "cached": [int(r.get("cached") or 0) for r in rows]}


def compare(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per search and controller variant: wins and mean difference against its random partner."""
    done = {(j["search"], j["variant"], j["seed"]): j["summary"] for j in jobs
            if j.get("summary") and not j["summary"].get("partial")}
    out = []
    for search, variant in sorted({(s, v) for s, v, _ in done if v.startswith("controller")}):
        partner = "random" + variant[len("controller"):]
        diffs = []
        for (s, v, seed), summ in sorted(done.items()):
            if s == search and v == variant and (s, partner, seed) in done:
                diffs.append({"seed": seed, "controller": summ["best_rescored_mean"],
                              "random": done[(s, partner, seed)]["best_rescored_mean"]})
        if not diffs:
            continue
        d = [x["controller"] - x["random"] for x in diffs]
        out.append({"search": search, "controller": variant, "random": partner, "seeds": len(d),
                    "controller_wins": sum(x > 0 for x in d), "mean_difference": statistics.mean(d),
                    "sd_difference": statistics.stdev(d) if len(d) > 1 else None,
                    "mean_controller": statistics.mean(x["controller"] for x in diffs),
                    "mean_random": statistics.mean(x["random"] for x in diffs), "per_seed": diffs})
    return out


def plot(jobs: list[dict[str, Any]], png: Path) -> None:
    """Best reward so far against designs trained, mean over seeds: one panel per search."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    curves: dict[str, dict[str, list[list[float]]]] = {}
    for j in jobs:
        summ = j.get("summary") or {}
        cached = summ.get("cached") or [0] * len(summ.get("rewards", []))
        rewards = [r for r, c in zip(summ.get("rewards", []), cached) if not c]
        if rewards:
            best, so_far = [], 0.0
            for r in rewards:
                so_far = max(so_far, r)
                best.append(so_far)
            curves.setdefault(j["search"], {}).setdefault(j["variant"], []).append(best)
    if not curves:
        return
    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 4), squeeze=False)
    for ax, (search, by_variant) in zip(axes[0], sorted(curves.items())):
        for variant, runs in sorted(by_variant.items()):
            n = min(len(c) for c in runs)
            mean = [statistics.mean(c[i] for c in runs) for i in range(n)]
            ax.plot(range(1, n + 1), mean, label=f"{variant} ({len(runs)} seeds)")
        ax.set(title=search, xlabel="designs trained", ylabel="best search reward so far (mean over seeds)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export-background", metavar="FILE", help="save Omniglot's background characters and exit")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--background", metavar="FILE", help="the file --export-background wrote (else: the data folder)")
    ap.add_argument("--searches", nargs="+", choices=SEARCHES, default=["optimizer", "activation"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4])
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=FLAGS",
                    help="a named set of extra flags (repeatable); default: random=--random and controller=")
    ap.add_argument("--flags", default="", help="extra flags for every job")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--deadline-min", type=float, default=60.0)
    ap.add_argument("--out", default="runs/search_seeds")
    ap.add_argument("--replot", metavar="STUDY_JSON", help="redraw the PNG of an earlier study and exit")
    a = ap.parse_args(argv)
    if a.replot:
        png = Path(a.replot).with_suffix(".png")
        plot(json.loads(Path(a.replot).read_text())["jobs"], png)
        print(f"wrote {png}")
        return 0
    if a.export_background:
        export_background(a.export_background, a.data_root)
        return 0
    variants = dict(v.split("=", 1) for v in (a.variant or ["random=--random", "controller="]))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    # variant by variant: the first variants' jobs start first and are the last to be cut by the deadline
    jobs = [{"search": s, "variant": v, "seed": seed} for v in variants for seed in a.seeds for s in a.searches]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    t0, pending, running = time.time(), list(jobs), []
    while pending or running:
        while pending and len(running) < a.parallel:
            j = pending.pop(0)
            j["dir"] = str(out / f"{j['search']}_{j['variant']}_s{j['seed']}")
            cmd = [sys.executable, str(REPO / "training" / f"search_{j['search']}.py"), "--seed", str(j["seed"]),
                   "--out", j["dir"], "--rescore", "--no-progress", "--time-limit-min", "0",
                   *shlex.split(variants[j["variant"]]), *shlex.split(a.flags)]
            cmd += ["--background-file", a.background] if a.background else []
            cmd += ["--data-root", a.data_root] if a.data_root else []
            j["cmd"] = " ".join(cmd[1:])
            log = open(j["dir"] + ".log", "w")
            j["proc"], j["start"] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), time.time()
            running.append(j)
        time.sleep(2)
        for j in list(running):
            rc = j["proc"].poll()
            late = time.time() - t0 > 60 * a.deadline_min
            if rc is None and late:
                j["proc"].kill()
                rc = "stopped at the deadline"
            if rc is not None:
                running.remove(j)
                j["rc"], j["wall_s"] = rc, round(time.time() - j.pop("start"), 1)
                j.pop("proc")
                j["summary"] = job_summary(Path(j["dir"]))
                summ = j["summary"] or {}
                print(f"{j['search']:10s} {j['variant']:16s} seed {j['seed']}: rc={rc} {j['wall_s']} s, "
                      f"{summ.get('designs', 0)} designs"
                      + (f", best re-scored {summ['best_rescored_mean']:.4f}" if "best_rescored_mean" in summ else ""),
                      flush=True)
        if time.time() - t0 > 60 * a.deadline_min:
            for j in pending:
                j["rc"] = "not started before the deadline"
            pending = []
    table = compare(jobs)
    report = {"args": vars(a), "variants": variants, "wall_s": round(time.time() - t0, 1), "comparison": table,
              "jobs": jobs}
    write_json(out / "study.json", report, indent=1)
    plot(jobs, out / "study.png")
    print(f"\n{'search':10s} {'controller':18s} {'vs':14s} seeds wins  mean ctrl  mean rand  diff")
    for r in table:
        print(f"{r['search']:10s} {r['controller']:18s} {r['random']:14s} {r['seeds']:5d} {r['controller_wins']:4d}"
              f"  {r['mean_controller']:.4f}     {r['mean_random']:.4f}    {r['mean_difference']:+.4f}")
    print(f"wrote {out / 'study.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
