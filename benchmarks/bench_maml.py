#!/usr/bin/env python
"""MAML meta-iteration cost: exact vs first-order, and torch.func (vmap) vs a naive per-task loop.

    python benchmarks/bench_maml.py                          # Conv-4, 16 tasks of 5-way 1-shot, 5 queries
    python benchmarks/bench_maml.py --hidden 8 --iters 2     # a quick check

A meta-iteration is the shared trainer's step without the optimiser: ``episode_loss`` + ``backward``
over one meta-batch. Every implementation runs on the same fixed episodes (random images of
Omniglot's shape: the cost does not depend on pixel values) and from the same initial weights;
their meta-gradients are compared too. Each measurement runs in its own process so that its
peak memory (CPU: peak RSS growth over the process's baseline; CUDA: max_memory_allocated) is
its own. Writes ``benchmarks/results/maml.json``.

Implementations:
  exact / first_order   the registered ``maml`` / ``fomaml`` variants as they run by default
                        (torch.func; vmap over the tasks on CUDA, a loop over them on the CPU)
  exact_vmap / first_order_vmap   the same with vmap forced (``use_vmap=True``), also on the CPU
  naive_first_order     deep-copies the model per task, adapts the copy in place with SGD, backprops
                        the query loss on the copy and accumulates its gradient (a loop over tasks)
  naive_exact           per-task loop with torch.autograd.grad(create_graph=True) (no torch.func)
"""
from __future__ import annotations

import argparse
import copy
import multiprocessing as mp
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from h_model.plots import write_report  # noqa: E402
from h_model.meta.maml import GradientMetaLearner  # noqa: E402
from h_model.models import create_model  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "maml.json"


def episodes(a: argparse.Namespace, device: torch.device) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    B, N, K, Q = a.tasks, a.way, a.shot, a.query
    sx = torch.randn(B, N * K, 1, a.size, a.size, generator=g)
    qx = torch.randn(B, N * Q, 1, a.size, a.size, generator=g)
    sy = torch.arange(N).repeat_interleave(K).expand(B, -1).contiguous()
    qy = torch.arange(N).repeat_interleave(Q).expand(B, -1).contiguous()
    return tuple(t.to(device) for t in (sx, sy, qx, qy))


def build(a: argparse.Namespace, variant: str, device: torch.device, use_vmap: bool | None = None
          ) -> GradientMetaLearner:
    torch.manual_seed(0)
    m = create_model(variant, "conv4", {"hidden": a.hidden}, input_shape=(1, a.size, a.size),
                     steps=a.steps, inner_lr=a.inner_lr, use_vmap=use_vmap)
    with torch.no_grad():  # a non-zero head init, so that the inner steps reach the backbone
        m.head_w.normal_(0, 0.01, generator=torch.Generator().manual_seed(1))
    return m.to(device).train()


def naive_first_order(m: GradientMetaLearner, sx, sy, qx, qy, way: int) -> torch.Tensor:
    """Deep copy per task, in-place SGD on the copy, query-loss gradient of the copy added to phi."""
    B, total = sx.shape[0], 0.0
    for b in range(B):
        learner = copy.deepcopy(m)
        for _ in range(m.steps):
            loss = F.cross_entropy(learner.learner_logits(learner.learner_params(way), sx[b]), sy[b])
            learner.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():
                for p in learner.parameters():
                    if p.grad is not None:
                        p -= m.inner_lr * p.grad
        learner.zero_grad(set_to_none=True)
        q = F.cross_entropy(learner.learner_logits(learner.learner_params(way), qx[b]), qy[b]) / B
        q.backward()
        for p, lp in zip(m.parameters(), learner.parameters()):
            if lp.grad is not None:
                p.grad = lp.grad.clone() if p.grad is None else p.grad + lp.grad
        total += float(q.detach())
    return torch.tensor(total)


def naive_exact(m: GradientMetaLearner, sx, sy, qx, qy, way: int) -> torch.Tensor:
    """Per-task loop, second order with torch.autograd.grad(create_graph=True)."""
    B, total = sx.shape[0], 0.0
    for b in range(B):
        theta = m.learner_params(way)
        for _ in range(m.steps):
            loss = F.cross_entropy(m.learner_logits(theta, sx[b]), sy[b])
            g = torch.autograd.grad(loss, list(theta.values()), create_graph=True)
            theta = {k: v - m.inner_lr * gk for (k, v), gk in zip(theta.items(), g)}
        q = F.cross_entropy(m.learner_logits(theta, qx[b]), qy[b]) / B
        q.backward()  # per task: frees each task's graph before the next
        total += float(q.detach())
    return torch.tensor(total)


def measure(a: argparse.Namespace, impl: str) -> dict[str, Any]:
    """Run in a fresh process: time ``a.iters`` meta-iterations after ``a.warmup``; peak memory."""
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    data = episodes(a, device)
    variant = "maml" if impl in ("exact", "exact_vmap", "naive_exact") else "fomaml"
    m = build(a, variant, device, True if impl.endswith("_vmap") else None)
    cuda = device.type == "cuda"

    def step() -> None:
        m.zero_grad(set_to_none=True)
        if impl in ("exact", "first_order", "exact_vmap", "first_order_vmap"):
            m.episode_loss(*data, a.way)[0].backward()
        elif impl == "naive_first_order":
            naive_first_order(m, *data, a.way)
        else:
            naive_exact(m, *data, a.way)
        if cuda:
            torch.cuda.synchronize()

    for _ in range(a.warmup):
        step()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(a.iters):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    grad = torch.cat([p.grad.reshape(-1) for p in m.parameters()]).cpu()
    peak = (torch.cuda.max_memory_allocated() / 2**20 if cuda
            else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024.0)
    return {"impl": impl, "median_s": statistics.median(times), "min_s": min(times), "times_s": times,
            "peak_mem_mb": round(peak, 1), "peak_mem_kind": "cuda_max_allocated" if cuda else "rss_growth",
            "peak_rss_total_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
            "grad": grad.tolist()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=16, help="meta-batch size")
    ap.add_argument("--way", type=int, default=5)
    ap.add_argument("--shot", type=int, default=1)
    ap.add_argument("--query", type=int, default=5)
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--hidden", type=int, default=64, help="Conv-4 channels")
    ap.add_argument("--steps", type=int, default=1, help="inner steps")
    ap.add_argument("--inner-lr", type=float, default=0.4)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(RESULTS))
    a = ap.parse_args(argv)
    ctx = mp.get_context("spawn")
    res: dict[str, dict[str, Any]] = {}
    for impl in ("exact", "first_order", "exact_vmap", "first_order_vmap", "naive_exact", "naive_first_order"):
        with ctx.Pool(1) as pool:
            res[impl] = pool.apply(measure, (a, impl))
        r = res[impl]
        print(f"{impl:18s} {1000 * r['median_s']:9.1f} ms/meta-iteration (min {1000 * r['min_s']:.1f}), "
              f"peak memory +{r['peak_mem_mb']:.0f} MB ({r['peak_mem_kind']})", flush=True)
    grads = {k: torch.tensor(v.pop("grad")) for k, v in res.items()}

    def gap(x: str, y: str) -> float:
        return float((grads[x] - grads[y]).abs().max() / grads[y].abs().max())

    summary = {
        "exact_over_first_order_time": res["exact"]["median_s"] / res["first_order"]["median_s"],
        "naive_exact_over_torch_func_exact_time": res["naive_exact"]["median_s"] / res["exact"]["median_s"],
        "naive_first_order_over_torch_func_first_order_time":
            res["naive_first_order"]["median_s"] / res["first_order"]["median_s"],
        "vmap_over_default_exact_time": res["exact_vmap"]["median_s"] / res["exact"]["median_s"],
        "grad_rel_gap_exact_vs_naive_exact": gap("exact", "naive_exact"),
        "grad_rel_gap_first_order_vs_naive_first_order": gap("first_order", "naive_first_order"),
        "grad_rel_gap_exact_vs_first_order": gap("exact", "first_order"),
    }
    for k, v in summary.items():
        print(f"{k}: {v:.3g}")
    out = {"settings": {k: v for k, v in vars(a).items() if k != "out"}, "results": res, "summary": summary,
           "torch": torch.__version__, "machine": platform.machine(), "python": platform.python_version(),
           "note": "times are wall-clock medians; on a shared machine they carry its load"}
    write_report(a.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
