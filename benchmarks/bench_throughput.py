#!/usr/bin/env python
"""Training throughput: h_model's episode loop against a straightforward reference loop.

The reference does what the papers' code did: for every episode it opens and decodes each
image file (PIL), rotates and resizes it, runs the Conv-4 in the papers' layer order
(conv+bias, BatchNorm, ReLU, maxpool; NCHW) and computes prototype distances by
broadcasting a [Q, N, D] difference tensor. h_model samples indices into the decoded uint8
tensor and runs its channels-last Conv-4 (same function, same initial weights) with
matrix-product distances. Same episodes (same sampler, same seed), same optimiser, one run.

On a CPU with native bfloat16 (AMX / AVX-512 BF16) h_model's loop also runs under bf16 autocast
(``train_h.py --amp``), reported beside the float32 figure.

    python benchmarks/bench_throughput.py [--episodes 30] [--way 60 --shot 1 --query 5]   # the default run's episodes
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from h_model.checkpoint import write_json  # noqa: E402
from h_model.data import omniglot_splits  # noqa: E402
from h_model.episodes import EpisodeSampler  # noqa: E402
from h_model.models import create_model  # noqa: E402
from h_model.runtime import cpu_has_native_bf16, keep_freed_memory  # noqa: E402


class PaperConv4(nn.Module):
    """Conv-4 as the papers wrote it: conv(+bias) -> BN -> ReLU -> maxpool, NCHW."""

    def __init__(self) -> None:
        super().__init__()
        layers = []
        for cin in (1, 64, 64, 64):
            layers += [nn.Conv2d(cin, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x).flatten(1)


def copy_weights(ours: nn.Module, ref: PaperConv4) -> None:
    """Same initial function: our bias-free convs and BN into the paper ordering (bias 0)."""
    convs = [m for m in ours.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in ours.modules() if isinstance(m, nn.BatchNorm2d)]
    rconvs = [m for m in ref.modules() if isinstance(m, nn.Conv2d)]
    rbns = [m for m in ref.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for a, b in zip(convs, rconvs):
            b.weight.copy_(a.weight)
            b.bias.zero_()
        for a, b in zip(bns, rbns):
            b.load_state_dict(a.state_dict())


def reference_load(path: str, degrees: int, size: int) -> torch.Tensor:
    img = Image.open(path).convert("L").rotate(degrees).resize((size, size), Image.BILINEAR)
    return 1.0 - torch.from_numpy(np.array(img, np.float32) / 255.0).unsqueeze(0)


def euclidean_broadcast(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    n, m, d = x.size(0), y.size(0), x.size(1)
    return (x.unsqueeze(1).expand(n, m, d) - y.unsqueeze(0).expand(n, m, d)).pow(2).sum(2)


def reference_step(model, opt, sources, rotations, idx, way, shot, query, size):
    imgs = torch.stack([reference_load(sources[i], rotations[i], size) for i in idx.flatten().tolist()])
    imgs = imgs.view(way, shot + query, 1, size, size)
    x = torch.cat([imgs[:, :shot].reshape(-1, 1, size, size), imgs[:, shot:].reshape(-1, 1, size, size)])
    z = model(x)
    protos = z[: way * shot].view(way, shot, -1).mean(1)
    dists = euclidean_broadcast(z[way * shot:], protos)
    target = torch.arange(way).repeat_interleave(query)
    loss = F.cross_entropy(-dists, target)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--episodes", type=int, default=30)
    ap.add_argument("--way", type=int, default=60)
    ap.add_argument("--shot", type=int, default=1)
    ap.add_argument("--query", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/throughput.json")
    a = ap.parse_args()
    keep_freed_memory()  # same process, same allocator settings for both loops
    torch.manual_seed(0)
    train, _, _ = omniglot_splits(a.data_root)
    size = train.preprocess.size[0]
    rotations = [int(train.class_names[int(c)].rsplit("@rot", 1)[1]) for c in train.labels]
    ours = create_model("proto", "conv4")
    ref = PaperConv4()
    copy_weights(ours, ref)
    opt_ref = torch.optim.Adam(ref.parameters(), 1e-3)
    n = a.episodes + 2  # two warm-up episodes each, not timed
    episodes = list(EpisodeSampler(train, a.way, a.shot, a.query, 1, seed=0).sample_indices() for _ in range(n))

    # h_model: index the decoded tensor, normalise, one fused step per episode; in float32 and,
    # on a CPU with native bfloat16 (AMX / AVX-512 BF16), also under bf16 autocast (--amp)
    def run_ours(amp: bool) -> list[float]:
        model = create_model("proto", "conv4")
        model.load_state_dict(ours.state_dict())
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        times = []
        for idx, _ in episodes:
            t = time.perf_counter()
            imgs = train.images[idx.flatten()].view(1, a.way, a.shot + a.query, 1, size, size)
            sx = imgs[:, :, : a.shot].reshape(1, -1, 1, size, size)
            qx = imgs[:, :, a.shot:].reshape(1, -1, 1, size, size)
            sy = torch.arange(a.way).repeat_interleave(a.shot)[None]
            qy = torch.arange(a.way).repeat_interleave(a.query)[None]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                loss, _ = model.episode_loss(train.preprocess.normalize(sx), sy, train.preprocess.normalize(qx),
                                             qy, a.way)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t)
        return times

    t_ours = run_ours(False)
    t_amp = run_ours(True) if cpu_has_native_bf16() else None
    t_ref, t_decode = [], []
    for idx, _ in episodes:
        t = time.perf_counter()
        for i in idx.flatten().tolist()[:50]:
            reference_load(train.sources[i], rotations[i], size)
        t_decode.append((time.perf_counter() - t) * idx.numel() / 50)
        t = time.perf_counter()
        reference_step(ref, opt_ref, train.sources, rotations, idx[0], a.way, a.shot, a.query, size)
        t_ref.append(time.perf_counter() - t)
    ours_s, ref_s = float(np.mean(t_ours[2:])), float(np.mean(t_ref[2:]))
    res = {
        "setting": f"{a.way}-way {a.shot}-shot {a.query}-query, Conv-4, 28x28 Omniglot, {a.episodes} episodes",
        "threads": torch.get_num_threads(),
        "h_model_s_per_episode": round(ours_s, 4), "reference_s_per_episode": round(ref_s, 4),
        "h_model_episodes_per_s": round(1 / ours_s, 3), "reference_episodes_per_s": round(1 / ref_s, 3),
        "reference_decode_s_per_episode": round(float(np.mean(t_decode[2:])), 4),
        "speedup": round(ref_s / ours_s, 2),
        "cpu_native_bf16": cpu_has_native_bf16(),
    }
    if t_amp is not None:
        amp_s = float(np.mean(t_amp[2:]))
        res.update(h_model_amp_s_per_episode=round(amp_s, 4), h_model_amp_episodes_per_s=round(1 / amp_s, 3),
                   speedup_amp=round(ref_s / amp_s, 2))
    write_json(a.out, res)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
