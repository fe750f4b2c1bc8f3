#!/usr/bin/env python
"""Time to accuracy: h_model's default run against easyfsl's Prototypical Networks, one machine, one run.

easyfsl is trained the way its README and notebooks train it: its ``TaskSampler`` and
``episodic_collate_fn`` in a ``DataLoader`` that opens the image files, its
``PrototypicalNetworks`` over the papers' Conv-4 (h_model's ``conv4`` with 64 channels per layer),
Adam at 1e-3, 60-way 5-shot 5-query episodes, on the same training characters (Omniglot background minus
the validation characters, each rotation a class). h_model runs ``training/configs/default.yaml``
through its own trainer.

Both are validated on the same 300 fixed 5-way 1-shot and 300 fixed 20-way 1-shot episodes of the
validation characters, by nearest prototype in Euclidean distance over each library's own
embedding of the same files, every ``--val-every-s`` seconds of training. The clock counts
training only (validation is excluded). Reported: the training seconds each needs to reach 97 %
5-way 1-shot, and to reach easyfsl's best 20-way 1-shot figure within its budget; speedups are
easyfsl's time divided by h_model's (a lower bound, marked, when easyfsl never gets there).

    pip install -r requirements-bench.txt
    python benchmarks/bench_vs_easyfsl.py [--easyfsl-minutes 25] [--threads 2] [--workers 2]
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/bench_vs_easyfsl.py   # as an AVX2-only CPU runs
    # another h_model setting against easyfsl's curve from an earlier run on the same machine:
    python benchmarks/bench_vs_easyfsl.py --set lr=0.002 --set both_ways=false \
        --reuse-easyfsl benchmarks/results/vs_easyfsl_val5s.json --val-every-s 5 --out /tmp/one_way.json

Writes ``benchmarks/results/vs_easyfsl.json`` and ``vs_easyfsl.png`` (accuracy against seconds).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from unittest import mock

import torch
import yaml
from PIL import Image
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from h_model.checkpoint import write_json  # noqa: E402
from h_model.data import ImageSet, omniglot_splits  # noqa: E402
from h_model.episodes import EpisodeSampler  # noqa: E402
from h_model.evaluate import embed_all  # noqa: E402
from h_model.models import create_backbone  # noqa: E402
from h_model.runtime import cpu_description  # noqa: E402
from h_model.trainer import TrainConfig, train  # noqa: E402

SETTINGS = {"5w1s": (5, 1), "20w1s": (20, 1)}
TARGET = 0.97


@dataclass
class Curve:
    """Validation accuracy (per setting) against training seconds."""

    seconds: list[float] = field(default_factory=list)
    episodes: list[int] = field(default_factory=list)
    acc: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SETTINGS})

    def add(self, train_s: float, episode: int, accs: dict[str, float]) -> None:
        self.seconds.append(round(train_s, 2))
        self.episodes.append(episode)
        for s, a in accs.items():
            self.acc[s].append(round(a, 5))

    def time_to(self, setting: str, level: float) -> float | None:
        """Training seconds of the first validation at or above ``level``, or None."""
        return next((t for t, a in zip(self.seconds, self.acc[setting]) if a >= level), None)

    def best(self, setting: str) -> float:
        return max(self.acc[setting], default=0.0)


class FixedEpisodes:
    """The validation episodes both libraries are scored on: index tensors into one ImageSet."""

    def __init__(self, val: ImageSet, episodes: int = 300, query: int = 15, seed: int = 4321) -> None:
        self.val = val
        self.idx = {s: EpisodeSampler(val, w, k, query, episodes, seed=seed).sample_indices()[0]
                    for s, (w, k) in SETTINGS.items()}

    def score(self, z: torch.Tensor) -> dict[str, float]:
        """Nearest-prototype accuracy per setting, from embeddings ``z`` of every validation image."""
        out = {}
        for s, (way, shot) in SETTINGS.items():
            e = z[self.idx[s]]                                   # [B, N, K+Q, D]
            protos = e[:, :, :shot].mean(2)                       # [B, N, D]
            q = e[:, :, shot:]                                    # [B, N, Q, D]
            d = torch.cdist(q.flatten(1, 2), protos)              # [B, N*Q, N]
            truth = torch.arange(way).repeat_interleave(q.shape[2])
            out[s] = float((d.argmin(-1) == truth).float().mean())
        return out


def file_list(data: ImageSet) -> list[tuple[str, int, int]]:
    """(image file, rotation in degrees, class) for every image of an Omniglot ImageSet."""
    if data.sources is None:
        raise ValueError("the Omniglot split carries no file names")
    rot = [int(n.rpartition("@rot")[2] or 0) for n in data.class_names]
    return [(src, rot[int(c)], int(c)) for src, c in zip(data.sources, data.labels)]


class OmniglotFiles(torch.utils.data.Dataset):
    """easyfsl's kind of dataset: opens each file on access (28x28 grayscale, rotated), with get_labels()."""

    def __init__(self, items: list[tuple[str, int, int]], size: int = 28) -> None:
        self.items, self.size = items, size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, deg, label = self.items[i]
        with Image.open(path) as img:
            img = img.convert("L").rotate(deg).resize((self.size, self.size), Image.BILINEAR)
            x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(1, self.size, self.size)
        return x.float() / 255.0, label

    def get_labels(self) -> list[int]:
        return [label for _, _, label in self.items]


def run_easyfsl(train_set: ImageSet, val: FixedEpisodes, minutes: float, val_every_s: float, workers: int,
                seed: int) -> Curve:
    from easyfsl.methods import PrototypicalNetworks
    from easyfsl.samplers import TaskSampler

    torch.manual_seed(seed)
    data = OmniglotFiles(file_list(train_set))
    # easyfsl 1.5.0 passes data_source to Sampler.__init__, which this torch no longer takes: skip that call only
    with mock.patch.object(torch.utils.data.Sampler, "__init__", lambda self, *args, **kwargs: None):
        sampler = TaskSampler(data, n_way=60, n_shot=5, n_query=5, n_tasks=10**7)
    loader = torch.utils.data.DataLoader(data, batch_sampler=sampler, num_workers=workers,
                                         collate_fn=sampler.episodic_collate_fn)
    model = PrototypicalNetworks(create_backbone("conv4"))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    val_data = OmniglotFiles(file_list(val.val))
    val_x = torch.stack([val_data[i][0] for i in range(len(val_data))])
    curve, train_s, next_val, episode = Curve(), 0.0, val_every_s, 0
    t = time.perf_counter()
    for sx, sy, qx, qy, _ in loader:  # the loader's file reads count as training time, as they would for a user
        model.train()
        opt.zero_grad()
        model.process_support_set(sx, sy)
        loss = loss_fn(model(qx), qy)
        loss.backward()
        opt.step()
        episode += 1
        now = time.perf_counter()
        train_s += now - t
        if train_s >= next_val or train_s >= 60 * minutes:
            model.eval()
            with torch.inference_mode():
                z = torch.cat([model.compute_features(val_x[i:i + 512]) for i in range(0, len(val_x), 512)])
            curve.add(train_s, episode, val.score(z))
            print(f"easyfsl  {train_s:7.1f} s  episode {episode:5d}  " +
                  "  ".join(f"{s} {a[-1]:.4f}" for s, a in curve.acc.items()), flush=True)
            next_val += val_every_s
            if train_s >= 60 * minutes:
                break
        t = time.perf_counter()
    return curve


def h_model_monitor(val: FixedEpisodes, curve: Curve, val_every_s: float) -> Callable:
    next_val = [val_every_s]

    def monitor(model, episode: int, train_s: float) -> None:
        if train_s < next_val[0]:
            return
        next_val[0] += val_every_s
        z = embed_all(model, val.val, next(model.parameters()).device)
        model.train()
        curve.add(train_s, episode, val.score(z.float().cpu()))
        print(f"h_model  {train_s:7.1f} s  episode {episode:5d}  " +
              "  ".join(f"{s} {a[-1]:.4f}" for s, a in curve.acc.items()), flush=True)
    return monitor


def run_h_model(config: Path, val: FixedEpisodes, val_every_s: float, out: Path,
                overrides: dict | None = None) -> tuple[Curve, dict]:
    values = yaml.safe_load(config.read_text()) or {}
    values.update(overrides or {})
    values.update(out=str(out), eval_settings=["5w1s"], eval_episodes=300)
    cfg = TrainConfig.from_dict(values)
    curve = Curve()
    results = train(cfg, monitor=h_model_monitor(val, curve, val_every_s))
    return curve, results.get("train", {})


def parse_overrides(items: list[str]) -> dict:
    """``KEY=VALUE`` strings -> a dict of training options, each value read as YAML (``lr=0.006``, ``both_ways=true``)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes KEY=VALUE, got {item!r}")
        out[key] = yaml.safe_load(value)
    return out


def reused_easyfsl(path: Path) -> tuple[Curve, float]:
    """easyfsl's curve and budget from an earlier result of this benchmark (the same validation episodes)."""
    report = json.loads(path.read_text())
    c = report["curves"]["easyfsl"]
    return Curve(list(c["seconds"]), list(c["episodes"]), {k: list(v) for k, v in c["acc"].items()}), \
        float(report["easyfsl_budget_s"])


def speedup(theirs: float | None, ours: float | None, their_budget: float) -> dict:
    """easyfsl's seconds / ours; a lower bound when easyfsl never got there within its budget."""
    if ours is None:
        return {"value": None, "lower_bound": False}
    if theirs is None:
        return {"value": round(their_budget / ours, 2), "lower_bound": True}
    return {"value": round(theirs / ours, 2), "lower_bound": False}


def plot(curves: dict[str, Curve], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.ticker
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, s in zip(axes, SETTINGS):
        for name, c in curves.items():
            ax.plot(c.seconds, [100 * a for a in c.acc[s]], marker=".", label=name)
        if s == "5w1s":
            ax.axhline(100 * TARGET, color="grey", ls="--", lw=1)
        ax.set(xscale="log", xlabel="training seconds (validation excluded)", ylabel=f"validation {s} accuracy (%)",
               title=s)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "training" / "configs" / "default.yaml"), help="h_model's run")
    ap.add_argument("--easyfsl-minutes", type=float, default=25.0, help="easyfsl's training budget")
    ap.add_argument("--val-every-s", type=float, default=15.0, help="validate every this many training seconds")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for both")
    ap.add_argument("--workers", type=int, default=2, help="easyfsl DataLoader workers")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override one option of h_model's config (repeatable), e.g. --set lr=0.006")
    ap.add_argument("--reuse-easyfsl", default=None, metavar="JSON",
                    help="take easyfsl's curve from an earlier result of this benchmark on the same machine "
                         "instead of training it again (for comparing h_model settings)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "vs_easyfsl.json"))
    a = ap.parse_args(argv)
    try:
        overrides = parse_overrides(a.set)
    except ValueError as e:
        ap.error(str(e))
    try:
        import easyfsl  # noqa: F401
    except ImportError:
        print("error: easyfsl is not installed: pip install -r requirements-bench.txt", file=sys.stderr)
        return 2
    torch.set_num_threads(a.threads)
    train_set, val_set, _ = omniglot_splits(a.data_root)
    val = FixedEpisodes(val_set)
    with tempfile.TemporaryDirectory() as tmp:
        ours, ours_train = run_h_model(Path(a.config), val, a.val_every_s, Path(tmp) / "run", overrides)
    if a.reuse_easyfsl:
        theirs, budget = reused_easyfsl(Path(a.reuse_easyfsl))
    else:
        theirs = run_easyfsl(train_set, val, a.easyfsl_minutes, a.val_every_s, a.workers, a.seed)
        budget = 60 * a.easyfsl_minutes
    best20 = theirs.best("20w1s")
    times = {"to_97": {"h_model": ours.time_to("5w1s", TARGET), "easyfsl": theirs.time_to("5w1s", TARGET)},
             "to_easyfsl_best_20w1s": {"h_model": ours.time_to("20w1s", best20),
                                       "easyfsl": theirs.time_to("20w1s", best20)}}
    s97 = speedup(times["to_97"]["easyfsl"], times["to_97"]["h_model"], budget)
    sbest = speedup(times["to_easyfsl_best_20w1s"]["easyfsl"], times["to_easyfsl_best_20w1s"]["h_model"], budget)
    cpu = cpu_description()
    report = {"command": "python benchmarks/bench_vs_easyfsl.py " + " ".join(argv or sys.argv[1:]),
              "cpu": cpu, "threads": a.threads, "easyfsl_workers": a.workers, "easyfsl_budget_s": budget,
              "h_model_config": Path(a.config).name, "h_model_overrides": overrides, "h_model_train": ours_train,
              "easyfsl_from": a.reuse_easyfsl,
              "validation": "300 fixed episodes per setting of the 256 validation classes, 15 queries per class",
              "easyfsl_best_20w1s": best20, "seconds": times,
              "speedup_to_97": s97["value"], "speedup_to_97_is_lower_bound": s97["lower_bound"],
              "speedup_to_easyfsl_best": sbest["value"], "speedup_to_easyfsl_best_is_lower_bound": sbest["lower_bound"],
              "curves": {"h_model": ours.__dict__, "easyfsl": theirs.__dict__}}
    out = Path(a.out)
    write_json(out, report)
    plot({"h_model": ours, "easyfsl": theirs}, out.with_suffix(".png"),
         f"{cpu['model']} ({', '.join(cpu['flags'])}), {a.threads} threads, ISA cap {cpu['onednn_max_cpu_isa'] or 'none'}")
    print(json.dumps({k: report[k] for k in ("seconds", "easyfsl_best_20w1s", "speedup_to_97",
                                             "speedup_to_easyfsl_best")}, indent=2))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
