#!/usr/bin/env python
"""Face gallery at scale: enroll / identify latency, memory per vector, exact vs approximate index.

Synthetic embeddings shaped like a face model's: ``n / 3`` persons with random unit centres,
3 photos each, ``photo = normalise(centre + spread * noise / sqrt(d))`` (spread 0.8: photos of one
person have cosine ~0.6 to each other, different persons ~0 +- 0.09). Queries are fresh photos of
enrolled persons (``enrolled``) and of persons never enrolled (``stranger``, informational: an
approximate index missing a stranger's best match only lowers its score below the threshold).

At each size the same gallery directory (SQLite + FAISS, :class:`h_model.faces.Gallery`) is
filled once with :meth:`Gallery.enroll_many`, then opened twice:

- ``exact``: ``exact_limit`` above ``n`` (a flat inner-product index),
- ``hnsw`` (the gallery's default approximate index above ``exact_limit``) and, up to
  ``--ivf-max``, ``ivf`` (``approx="ivf"``); ``exact_limit=0`` forces them at every size.

Per index: build seconds (rebuild from SQLite), ``identify`` through the whole gallery (FAISS
candidates + SQLite rows + ranking; no model head, ``method='prototype-cosine'``), the FAISS
search the gallery does inside ``identify`` on its own (``k = 8 * candidates``), ``enroll`` of
one person with 3 photos (one durable transaction + index add), ``remove`` of one person, bytes
per vector of the index and of the SQLite file, and recall@1 of the approximate index against
the exact one (same top-1 embedding, and same top-1 person). Latencies are per query (batch 1):
wall-clock medians and the thread's CPU time, since on a shared machine the wall clock also
counts time spent waiting for a core.

    python benchmarks/bench_gallery.py [--sizes 1000 100000 1000000] [--dim 128] [--out ...]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from h_model.faces.gallery import DB_NAME, Gallery  # noqa: E402

MODEL_ID = "bench:synthetic"


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def photos_of(centers: np.ndarray, rng: np.random.Generator, spread: float) -> np.ndarray:
    d = centers.shape[1]
    return unit(centers + spread * rng.standard_normal(centers.shape, dtype=np.float32) / math.sqrt(d))


def timed(fn: Callable[[], Any], runs: int) -> dict[str, float]:
    """Median / p90 wall-clock and median thread CPU milliseconds of ``runs`` calls."""
    wall, cpu = [], []
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.thread_time()
        fn()
        cpu.append(time.thread_time() - c0)
        wall.append(time.perf_counter() - t0)
    return {"wall_ms_median": 1e3 * float(np.median(wall)), "wall_ms_p90": 1e3 * float(np.percentile(wall, 90)),
            "cpu_ms_median": 1e3 * float(np.median(cpu)), "runs": runs}


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def file_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())


def fill(path: Path, n: int, dim: int, spread: float, seed: int, chunk: int = 100_000) -> tuple[np.ndarray, dict]:
    """Enroll ``ceil(n / 3)`` synthetic persons (3 photos each, ``n`` embeddings); returns the centres."""
    rng = np.random.default_rng(seed)
    persons = -(-n // 3)
    centers = unit(rng.standard_normal((persons, dim), dtype=np.float32))
    g = Gallery(path, model_id=MODEL_ID, exact_limit=n + 1)
    t0, c0 = time.perf_counter(), time.process_time()
    done = 0
    for start in range(0, n, chunk):
        rows = np.arange(start, min(n, start + chunk))
        owners = rows // 3
        x = photos_of(centers[owners], rng, spread)
        cuts = np.flatnonzero(np.diff(owners)) + 1  # rows are grouped by person
        people = [(f"p{owners[i]}", part) for i, part in zip(np.concatenate([[0], cuts]), np.split(x, cuts))]
        done += g.enroll_many(people, model_id=MODEL_ID)["added"]
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    g._con().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    g.close()  # leaves a flat index file: the exact gallery below adopts it
    assert done == n
    return centers, {"vectors": n, "persons": persons, "seconds": wall, "cpu_seconds": cpu,
                     "vectors_per_s": n / wall, "sqlite_bytes_per_vector": file_bytes(path / DB_NAME) / n}


def measure(path: Path, kind: str, n: int, queries: dict[str, np.ndarray], truth: dict[str, np.ndarray] | None,
            dim: int, runs: int, candidates: int, ef_search: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Open the gallery with one kind of index and measure it; returns (figures, top-1 ids per query set)."""
    settings: dict[str, Any] = {"exact_limit": 10 * n + 1000} if kind == "exact" else \
        {"exact_limit": 0, "approx": kind, "ef_search": ef_search}
    before = rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    g = Gallery(path, candidates=candidates, **settings)
    got = g.index_kind  # loads the stored index, or rebuilds it from SQLite
    build = {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}
    out: dict[str, Any] = {"index": got, "settings": settings, "open_or_build": build,
                           "rss_growth_mb": rss_mb() - before}
    kk = int(min(g._index.ntotal, max(8 * g.candidates, 64)))
    raw = faiss.serialize_index(g._index)
    out["index_bytes_per_vector"] = len(raw) / n
    del raw
    top1: dict[str, np.ndarray] = {}
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # one request at a time (OpenMP threads only wait on a busy machine)
    for name, q in queries.items():
        with g._lock:
            found = g._search(q, kk)  # all queries at once (exact search then uses BLAS)
        top1[name] = found[:, 0]
        it = iter(range(10 ** 9))
        out[f"faiss_search_{name}"] = timed(lambda: g._search(q[next(it) % len(q)][None], kk), runs)
        it = iter(range(10 ** 9))
        out[f"identify_{name}"] = timed(lambda: g.identify(q[next(it) % len(q)], k=5, threshold=0.4), runs)
        if truth is not None:
            same = found[:, 0] == truth[name]
            person = (found[:, 0] - 1) // 3 == (truth[name] - 1) // 3  # ids 1..n, 3 per person, in order
            out[f"recall_at_1_{name}"] = {"embedding": float(same.mean()), "person": float(person.mean()),
                                          "queries": int(len(q))}
    rng = np.random.default_rng(123)
    new = [photos_of(np.repeat(unit(rng.standard_normal((1, dim), dtype=np.float32)), 3, 0), rng, 0.8)
           for _ in range(runs)]
    it = iter(range(10 ** 9))
    def enroll_next() -> None:
        i = next(it)
        g.enroll(f"new-{kind}-{i}", embeddings=new[i])
    out["enroll_one_person_3_photos"] = timed(enroll_next, runs)
    it = iter(range(10 ** 9))
    out["remove_one_person"] = timed(lambda: g.remove(f"new-{kind}-{next(it)}"), runs)
    faiss.omp_set_num_threads(threads)
    g.close()
    return out, top1


def run_size(n: int, a: argparse.Namespace, work: Path) -> dict[str, Any]:
    path = work / f"g{n}"
    shutil.rmtree(path, ignore_errors=True)
    print(f"\n== {n:,} embeddings (dim {a.dim}) ==", flush=True)
    centers, filled = fill(path, n, a.dim, a.spread, a.seed)
    print(f"filled: {filled['seconds']:.1f} s ({filled['vectors_per_s']:,.0f} vectors/s), "
          f"SQLite {filled['sqlite_bytes_per_vector']:.0f} B/vector", flush=True)
    rng = np.random.default_rng(a.seed + 1)
    nq = min(a.queries, len(centers))
    queries = {"enrolled": photos_of(centers[rng.choice(len(centers), nq, replace=False)], rng, a.spread),
               "stranger": unit(rng.standard_normal((nq, a.dim), dtype=np.float32))}
    del centers
    res: dict[str, Any] = {"n": n, "fill": filled, "indexes": {}}
    kinds = ["exact", "hnsw"] + (["ivf"] if n <= a.ivf_max else [])
    truth = None
    for kind in kinds:
        figures, top1 = measure(path, kind, n, queries, truth, a.dim, a.runs, a.candidates, a.ef_search)
        if kind == "exact":
            truth = top1
        res["indexes"][kind] = figures
        print(summary_line(kind, figures), flush=True)
    shutil.rmtree(path, ignore_errors=True)
    return res


def summary_line(kind: str, f: dict[str, Any]) -> str:
    rec = f.get("recall_at_1_enrolled")
    return (f"{kind:6s} {f['index']:14s} build {f['open_or_build']['seconds']:7.1f} s | identify "
            f"{f['identify_enrolled']['wall_ms_median']:7.2f} ms wall {f['identify_enrolled']['cpu_ms_median']:6.2f} "
            f"ms cpu | search {f['faiss_search_enrolled']['cpu_ms_median']:6.2f} ms cpu | enroll "
            f"{f['enroll_one_person_3_photos']['wall_ms_median']:6.1f} ms | index "
            f"{f['index_bytes_per_vector']:5.0f} B/vec" + (f" | recall@1 {rec['embedding']:.3f} "
                                                          f"(person {rec['person']:.3f})" if rec else ""))


def table(results: list[dict[str, Any]]) -> str:
    head = ("| n | index | build s | identify ms (wall / cpu) | FAISS search ms cpu | enroll ms | remove ms | "
            "index B/vec | SQLite B/vec | recall@1 enrolled (emb / person) | recall@1 stranger |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        for kind, f in r["indexes"].items():
            re, rs = f.get("recall_at_1_enrolled"), f.get("recall_at_1_stranger")
            lines.append(
                f"| {r['n']:,} | {kind} ({f['index']}) | {f['open_or_build']['seconds']:.1f} | "
                f"{f['identify_enrolled']['wall_ms_median']:.2f} / {f['identify_enrolled']['cpu_ms_median']:.2f} | "
                f"{f['faiss_search_enrolled']['cpu_ms_median']:.3f} | {f['enroll_one_person_3_photos']['wall_ms_median']:.1f} | "
                f"{f['remove_one_person']['wall_ms_median']:.1f} | {f['index_bytes_per_vector']:.0f} | "
                f"{r['fill']['sqlite_bytes_per_vector']:.0f} | "
                + (f"{re['embedding']:.4f} / {re['person']:.4f} | {rs['embedding']:.4f} |" if re else "exact | exact |"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=float, nargs="+", default=[1e3, 1e5, 1e6])
    ap.add_argument("--dim", type=int, default=128, help="embedding size (the face model's)")
    ap.add_argument("--spread", type=float, default=0.8, help="photo noise around a person's centre")
    ap.add_argument("--queries", type=int, default=300, help="queries per set for recall")
    ap.add_argument("--runs", type=int, default=50, help="timed calls per latency figure")
    ap.add_argument("--candidates", type=int, default=32)
    ap.add_argument("--ef-search", type=int, default=128)
    ap.add_argument("--ivf-max", type=float, default=1e5, help="largest size that also measures IVF")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work-dir", default=None, help="where the galleries are written (default: a temp dir)")
    ap.add_argument("--out", default="benchmarks/results/gallery.json")
    a = ap.parse_args(argv)
    work = Path(a.work_dir or tempfile.mkdtemp(prefix="bench_gallery_"))
    work.mkdir(parents=True, exist_ok=True)
    results = []
    t0 = time.perf_counter()
    for n in a.sizes:
        results.append(run_size(int(n), a, work))
    report = {
        "benchmark": "gallery", "dim": a.dim, "spread": a.spread, "candidates": a.candidates,
        "ef_search": a.ef_search, "queries_per_set": a.queries, "runs": a.runs,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "faiss": faiss.__version__,
                    "load_average": os.getloadavg()},
        "notes": "Latencies are per query (batch 1). 'wall' includes waiting for a core on a shared machine; "
                 "'cpu' is the calling thread's CPU time. Recall@1 is against the exact index on the same "
                 "gallery; 'person' counts the same top-1 person. The full gallery (SQLite + FAISS) is measured "
                 "at every size.",
        "targets": {"recall_at_1": 0.99, "identify_ms_at_1e6": 10.0},
        "results": results, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "seconds": time.perf_counter() - t0}
    print("\n" + table(results))
    print(f"peak RSS {report['peak_rss_mb']:.0f} MB, {report['seconds']:.0f} s in all")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    if a.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
