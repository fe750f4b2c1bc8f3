#!/usr/bin/env python
"""Face gallery at scale: enroll / identify latency, memory per vector, exact vs approximate index.

Synthetic embeddings, ``n / 3`` persons with 3 photos each, from one of two distributions:

- ``isotropic`` (the hard case): person centres uniform on the unit sphere, as a model that
  spreads identities perfectly would; ``photo = normalise(centre + spread * noise / sqrt(d))``
  (spread 0.8: photos of one person have cosine ~0.6, different persons ~0 +- 0.09). With no
  structure beyond the persons themselves, graph and cluster indexes find it hardest.
- ``fitted`` (with ``--model PATH``): a Gaussian fitted to that face model's embeddings of the real
  training crops (``faces_splits`` train part): centres from the between-person mean and
  covariance, photos from the pooled within-person covariance, then normalised.

Queries are fresh photos of enrolled persons (``enrolled``) and photos of persons never enrolled
(``stranger``; informational: an approximate index that misses a stranger's best match only lowers
its score below the threshold).

At each size and distribution one gallery directory (SQLite + FAISS, :class:`h_model.faces.Gallery`)
is filled with :meth:`Gallery.enroll_many`, then opened with each kind of index:

- ``exact``: ``exact_limit`` above ``n`` (a flat inner-product index);
- ``hnsw`` (the gallery's approximate index above ``exact_limit``) and, up to ``--ivf-max``,
  ``ivf`` (``approx="ivf"``); ``exact_limit=0`` forces them at every size.

Per index: build seconds (rebuild from SQLite), ``identify`` through the whole gallery (FAISS
candidates + SQLite rows + ranking by best photo cosine, as the app does), the FAISS search
``identify`` does (``k = 8 * candidates``) on its own, ``enroll`` of one person with 3 photos (one
durable transaction + index add), ``remove`` of one person, bytes per vector of the index and of the
SQLite file, and recall@1 of the approximate index against the exact one: of the FAISS search
alone (same top-1 embedding; same top-1 person) and of ``identify`` (same top-1 person as
``identify`` over the exact index; it rescores every photo of its ``candidates`` persons exactly,
so the search only has to find one photo of the right person among its ``8 * candidates``
neighbours). For HNSW, recall and time at other ``efSearch`` values (``--ef-sweep``) on the
same graph. Latencies are per query (batch 1): wall-clock median and the thread's CPU time
(on a shared machine the wall clock also counts waiting for a core).

    python benchmarks/bench_gallery.py [--sizes 1000 100000 1000000] [--model h_model/bundled/faces_default]
"""
from __future__ import annotations

import argparse
import inspect
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
from h_model.checkpoint import write_json  # noqa: E402
from h_model.data.root import resolve_data_root  # noqa: E402
from h_model.faces.gallery import DB_NAME, Gallery  # noqa: E402

MODEL_ID = "bench:synthetic"


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


class Isotropic:
    """Person centres uniform on the sphere; photos scattered around them."""

    name = "isotropic"

    def __init__(self, dim: int, spread: float) -> None:
        self.dim, self.spread = dim, spread
        self.info = {"spread": spread}

    def centers(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return unit(rng.standard_normal((n, self.dim), dtype=np.float32))

    def photos(self, centers: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        noise = rng.standard_normal(centers.shape, dtype=np.float32)
        return unit(centers + self.spread * noise / math.sqrt(self.dim))


class Fitted:
    """A Gaussian fitted to a face model's embeddings of real photos (between- and within-person)."""

    name = "fitted"

    def __init__(self, z: np.ndarray, labels: np.ndarray, source: str) -> None:
        ids = [i for i in np.unique(labels) if (labels == i).sum() >= 2]
        means = np.stack([z[labels == i].mean(0) for i in ids])
        within = np.concatenate([z[labels == i] - z[labels == i].mean(0) for i in ids])
        self.dim = z.shape[1]
        self.mu = means.mean(0)
        self.between = np.linalg.cholesky(np.cov(means.T) + 1e-6 * np.eye(self.dim)).astype(np.float32)
        self.within = np.linalg.cholesky(within.T @ within / (len(within) - len(ids)) + 1e-6 * np.eye(self.dim)
                                         ).astype(np.float32)
        lam = np.linalg.eigvalsh(np.cov(means.T))
        self.info = {"model": source, "persons": len(ids), "photos": int(len(within)),
                     "between_effective_dim": float(lam.sum() ** 2 / (lam ** 2).sum())}

    def centers(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return (self.mu + rng.standard_normal((n, self.dim), dtype=np.float32) @ self.between.T).astype(np.float32)

    def photos(self, centers: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return unit(centers + rng.standard_normal(centers.shape, dtype=np.float32) @ self.within.T)


def fitted_from_model(model: str, data_root: str | None) -> Fitted:
    """Embed the real training crops with a face checkpoint and fit :class:`Fitted` to them."""
    from h_model.data.faces import crop_kwargs, faces_splits
    from h_model.faces import FaceVerifier

    v = FaceVerifier.load(model, device="cpu")
    s = v.detector.settings
    root = resolve_data_root(data_root).resolve()
    root = root / "faces" if (root / "faces").is_dir() else root
    train, _, _ = faces_splits(root, **crop_kwargs(s))
    z = np.concatenate([v.learner.embed(train.images[i:i + 256]) for i in range(0, len(train), 256)])
    return Fitted(unit(z), train.labels.numpy(), str(model))


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


def fill(path: Path, n: int, dist: Isotropic | Fitted, seed: int, chunk: int = 100_000) -> tuple[np.ndarray, dict]:
    """Enroll ``ceil(n / 3)`` synthetic persons (3 photos each, ``n`` embeddings); returns the centres."""
    rng = np.random.default_rng(seed)
    persons = -(-n // 3)
    centers = dist.centers(persons, rng)
    g = Gallery(path, model_id=MODEL_ID, exact_limit=n + 1)
    t0, c0 = time.perf_counter(), time.process_time()
    done = 0
    for start in range(0, n, chunk):
        rows = np.arange(start, min(n, start + chunk))
        owners = rows // 3
        x = dist.photos(centers[owners], rng)
        cuts = np.flatnonzero(np.diff(owners)) + 1  # rows are grouped by person
        people = [(f"p{owners[i]}", part) for i, part in zip(np.concatenate([[0], cuts]), np.split(x, cuts))]
        done += g.enroll_many(people, model_id=MODEL_ID)["added"]
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    g.store.con().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    g.close()  # leaves a flat index file: the exact gallery below adopts it
    assert done == n
    return centers, {"vectors": n, "persons": persons, "seconds": wall, "cpu_seconds": cpu,
                     "vectors_per_s": n / wall, "sqlite_bytes_per_vector": file_bytes(path / DB_NAME) / n}


def recall(found: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Same top-1 embedding, and same top-1 person (ids 1..n in order, 3 per person)."""
    return {"embedding": float((found == truth).mean()), "person": float(((found - 1) // 3 == (truth - 1) // 3).mean()),
            "queries": int(len(found))}


def identify_all(g: Gallery, q: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    """``identify``'s top-1 person for every query row (one call each), and the calls' median ms."""
    ids, wall, cpu = [], [], []
    for row in q:
        t0, c0 = time.perf_counter(), time.thread_time()
        ids.append(g.identify(row, k=1).matches[0].person_id)
        cpu.append(time.thread_time() - c0)
        wall.append(time.perf_counter() - t0)
    return np.array(ids), {"wall_ms_median": 1e3 * float(np.median(wall)), "cpu_ms_median": 1e3 * float(np.median(cpu)),
                           "wall_ms_p90": 1e3 * float(np.percentile(wall, 90)), "calls": len(q)}


def measure(path: Path, kind: str, n: int, queries: dict[str, np.ndarray], truth: dict[str, dict] | None,
            a: argparse.Namespace, new_photos: np.ndarray) -> tuple[dict[str, Any], dict[str, dict]]:
    """Open the gallery with one kind of index and measure it; returns (figures, answers per query set:
    the FAISS top-1 id and ``identify``'s top-1 person of every query)."""
    settings: dict[str, Any] = {"exact_limit": 10 * n + 1000} if kind == "exact" else \
        {"exact_limit": 0, "approx": kind, "ef_search": a.ef_search,
         **({"ef_construction": a.ef_construction} if a.ef_construction else {})}
    before = rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    g = Gallery(path, candidates=a.candidates, **settings)
    got = g.index_kind  # loads the stored index, or rebuilds it from SQLite
    build = {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}
    out: dict[str, Any] = {"index": got, "settings": settings, "open_or_build": build,
                           "rss_growth_mb": rss_mb() - before}
    kk = int(min(g.index.faiss.ntotal, max(8 * g.candidates, 64)))
    raw = faiss.serialize_index(g.index.faiss)
    out["index_bytes_per_vector"] = len(raw) / n
    del raw
    answers: dict[str, dict] = {}
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # one request at a time (OpenMP threads only wait on a busy machine)
    for name, q in queries.items():
        with g.index.lock:
            top1 = g.index.search(q, kk)[:, 0]  # all queries at once (exact search then uses BLAS)
        it = iter(range(10 ** 9))
        out[f"faiss_search_{name}"] = timed(lambda: g.index.search(q[next(it) % len(q)][None], kk), a.runs)
        it = iter(range(10 ** 9))
        out[f"identify_{name}"] = timed(lambda: g.identify(q[next(it) % len(q)], k=5, threshold=0.4), a.runs)
        person, _ = identify_all(g, q)
        answers[name] = {"top1": top1, "person": person}
        if truth is not None:
            out[f"recall_at_1_{name}"] = recall(top1, truth[name]["top1"])
            out[f"identify_recall_{name}"] = float((person == truth[name]["person"]).mean())
    if kind == "hnsw" and truth is not None:  # other efSearch values on the same graph
        out["ef_sweep"] = []
        for ef in a.ef_sweep:
            g.ef_search = ef
            row: dict[str, Any] = {"ef_search": max(ef, kk)}
            for name, q in queries.items():
                with g.index.lock:
                    c0 = time.thread_time()
                    found = g.index.search(q, kk)[:, 0]
                    row[f"cpu_ms_per_search_{name}"] = 1e3 * (time.thread_time() - c0) / len(q)
                row[f"recall_at_1_{name}"] = recall(found, truth[name]["top1"])
                person, row[f"identify_{name}"] = identify_all(g, q)
                row[f"identify_recall_{name}"] = float((person == truth[name]["person"]).mean())
            out["ef_sweep"].append(row)
        g.ef_search = a.ef_search
    it = iter(range(10 ** 9))

    def enroll_next() -> None:
        i = next(it)
        g.enroll(f"new-{kind}-{i}", embeddings=new_photos[i])
    out["enroll_one_person_3_photos"] = timed(enroll_next, a.runs)
    it = iter(range(10 ** 9))
    out["remove_one_person"] = timed(lambda: g.remove(f"new-{kind}-{next(it)}"), a.runs)
    faiss.omp_set_num_threads(threads)
    g.close()
    return out, answers


def run_size(n: int, dist: Isotropic | Fitted, a: argparse.Namespace, work: Path) -> dict[str, Any]:
    path = work / f"g{n}-{dist.name}"
    shutil.rmtree(path, ignore_errors=True)
    print(f"\n== {n:,} embeddings, {dist.name} (dim {dist.dim}) ==", flush=True)
    centers, filled = fill(path, n, dist, a.seed)
    print(f"filled: {filled['seconds']:.1f} s ({filled['vectors_per_s']:,.0f} vectors/s), "
          f"SQLite {filled['sqlite_bytes_per_vector']:.0f} B/vector", flush=True)
    rng = np.random.default_rng(a.seed + 1)
    nq = min(a.queries, len(centers))
    queries = {"enrolled": dist.photos(centers[rng.choice(len(centers), nq, replace=False)], rng),
               "stranger": dist.photos(dist.centers(nq, rng), rng)}
    new_photos = dist.photos(np.repeat(dist.centers(a.runs, rng), 3, 0), rng).reshape(a.runs, 3, -1)
    del centers
    res: dict[str, Any] = {"n": n, "distribution": dist.name, "fill": filled, "indexes": {}}
    kinds = ["exact", "hnsw"] + (["ivf"] if n <= a.ivf_max else [])
    truth = None
    for kind in kinds:
        figures, answers = measure(path, kind, n, queries, truth, a, new_photos)
        if kind == "exact":
            truth = answers
        res["indexes"][kind] = figures
        print(summary_line(kind, figures), flush=True)
        for row in figures.get("ef_sweep", []):
            r = row["recall_at_1_enrolled"]
            print(f"       efSearch {row['ef_search']:5d}: FAISS recall@1 {r['embedding']:.4f} (person {r['person']:.4f}), "
                  f"{row['cpu_ms_per_search_enrolled']:.2f} ms cpu per search; identify recall@1 "
                  f"{row['identify_recall_enrolled']:.4f} (stranger {row['identify_recall_stranger']:.4f}), "
                  f"{row['identify_enrolled']['wall_ms_median']:.2f} ms", flush=True)
    shutil.rmtree(path, ignore_errors=True)
    return res


def summary_line(kind: str, f: dict[str, Any]) -> str:
    rec = f.get("recall_at_1_enrolled")
    return (f"{kind:6s} {f['index']:14s} build {f['open_or_build']['seconds']:7.1f} s | identify "
            f"{f['identify_enrolled']['wall_ms_median']:7.2f} ms wall {f['identify_enrolled']['cpu_ms_median']:6.2f} "
            f"ms cpu | search {f['faiss_search_enrolled']['cpu_ms_median']:6.2f} ms cpu | enroll "
            f"{f['enroll_one_person_3_photos']['wall_ms_median']:6.1f} ms | index "
            f"{f['index_bytes_per_vector']:5.0f} B/vec" + (f" | FAISS recall@1 {rec['embedding']:.3f} "
                                                          f"(person {rec['person']:.3f}) | identify recall@1 "
                                                          f"{f['identify_recall_enrolled']:.3f}" if rec else ""))


def table(results: list[dict[str, Any]]) -> str:
    head = ("| n | data | index | build s (wall / cpu) | identify ms (wall / cpu) | FAISS search ms cpu | enroll ms | "
            "remove ms | index B/vec | SQLite B/vec | FAISS recall@1 enrolled (emb / person) | identify recall@1 "
            "(enrolled / stranger) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        for kind, f in r["indexes"].items():
            re = f.get("recall_at_1_enrolled")
            b, i = f["open_or_build"], f["identify_enrolled"]
            lines.append(
                f"| {r['n']:,} | {r['distribution']} | {kind} | {b['seconds']:.1f} / {b['cpu_seconds']:.1f} | "
                f"{i['wall_ms_median']:.2f} / {i['cpu_ms_median']:.2f} | {f['faiss_search_enrolled']['cpu_ms_median']:.3f} | "
                f"{f['enroll_one_person_3_photos']['wall_ms_median']:.1f} | {f['remove_one_person']['wall_ms_median']:.1f} | "
                f"{f['index_bytes_per_vector']:.0f} | {r['fill']['sqlite_bytes_per_vector']:.0f} | "
                + (f"{re['embedding']:.4f} / {re['person']:.4f} | {f['identify_recall_enrolled']:.4f} / "
                   f"{f['identify_recall_stranger']:.4f} |" if re else "exact | exact |"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=float, nargs="+", default=[1e3, 1e5, 1e6])
    ap.add_argument("--dim", type=int, default=128, help="embedding size of the isotropic data")
    ap.add_argument("--spread", type=float, default=0.8, help="isotropic photo noise around a person's centre")
    ap.add_argument("--model", default=None, help="face checkpoint: also measure data fitted to its embeddings")
    ap.add_argument("--data-root", default=None, help="the faces folder (for --model)")
    ap.add_argument("--no-isotropic", action="store_true", help="only the --model fitted data")
    ap.add_argument("--queries", type=int, default=300, help="queries per set for recall")
    ap.add_argument("--runs", type=int, default=50, help="timed calls per latency figure")
    ap.add_argument("--candidates", type=int, default=32)
    ap.add_argument("--ef-search", type=int, default=128, help="the gallery's ef_search (identify uses >= 8 * candidates)")
    ap.add_argument("--ef-construction", type=int, default=None, help="HNSW efConstruction (default: the gallery's)")
    ap.add_argument("--ef-sweep", type=int, nargs="*", default=[256, 384, 512, 768], help="HNSW efSearch values also measured")
    ap.add_argument("--ivf-max", type=float, default=1e5, help="largest size that also measures IVF")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work-dir", default=None, help="where the galleries are written (default: a temp dir)")
    ap.add_argument("--out", default="benchmarks/results/gallery.json")
    a = ap.parse_args(argv)
    dists: list[Isotropic | Fitted] = [] if a.no_isotropic else [Isotropic(a.dim, a.spread)]
    if a.model:
        dists.append(fitted_from_model(a.model, a.data_root))
        print(f"fitted to {a.model}: {dists[-1].info}", flush=True)
    work = Path(a.work_dir or tempfile.mkdtemp(prefix="bench_gallery_"))
    work.mkdir(parents=True, exist_ok=True)
    results = []
    t0 = time.perf_counter()
    for n in a.sizes:
        for dist in dists:
            results.append(run_size(int(n), dist, a, work))
    report = {
        "benchmark": "gallery", "distributions": {d.name: {"dim": d.dim, **d.info} for d in dists},
        "candidates": a.candidates, "ef_search": a.ef_search, "ef_construction": a.ef_construction or inspect.signature(Gallery).parameters["ef_construction"].default,
        "queries_per_set": a.queries, "runs": a.runs,
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
    write_json(a.out, report)
    if a.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
