"""h_model.ensemble: trained checkpoints side by side in one model and one checkpoint."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import h_model
from h_model.checkpoint import save_checkpoint
from h_model.ensemble import ensemble_checkpoints, ensemble_models
from h_model.models import create_model
from h_model.models.backbones import EnsembleBackbone, cpu_cores
from h_model.preprocess import Preprocess

REPO = Path(__file__).resolve().parents[1]
SHAPE = (3, 32, 32)


def member(tmp_path, name, channels, seed, variant="proto", **kwargs):
    torch.manual_seed(seed)
    kw = {"distance": "cosine", "scale": 10.0 + seed} if variant == "proto" else {}
    m = create_model(variant, "face_resnet", {"channels": channels, "dim": 16}, input_shape=SHAPE, **{**kw, **kwargs})
    m.eval()
    save_checkpoint(tmp_path / name, m, {"preprocess": Preprocess(size=SHAPE[1:], channels=3).to_dict(),
                                          "face": {"threshold": 0.5, "far": 1e-3, "crop_size": 32, "margin": 0.2}})
    return m


def normed(z):
    return z / np.linalg.norm(z, axis=1, keepdims=True)


@pytest.mark.parametrize("half", [False, True])
def test_ensemble_checkpoint_embeds_like_its_members_and_loads_alone(tmp_path, half):
    a = member(tmp_path, "a", [8, 8, 16, 16], 0)
    b = member(tmp_path, "b", [8, 16, 16, 32], 1)
    weights = ensemble_checkpoints([tmp_path / "a", tmp_path / "b"], tmp_path / "ab", half=half)
    ens = h_model.load(tmp_path / "ab", device="cpu")
    x = torch.randint(0, 256, (5, *SHAPE), dtype=torch.uint8)
    za, zb = (h_model.load(tmp_path / n, device="cpu").embed(x) for n in "ab")
    ref = np.concatenate([normed(za), normed(zb)], 1) / np.sqrt(2)
    assert np.abs(ens.embed(x) - ref).max() < (2e-3 if half else 1e-5)
    assert torch.allclose(ens.model.scale, torch.tensor(float(np.sqrt(10.0 * 11.0))), rtol=1e-3)  # mean of the logs
    cfg = json.loads((tmp_path / "ab" / "config.json").read_text())
    assert cfg["model"]["backbone"] == "ensemble" and len(cfg["ensemble"]["members"]) == 2
    assert cfg["face"] == {"crop_size": 32, "margin": 0.2}  # a member's threshold does not carry over
    assert cfg["ensemble"]["weights_dtype"] == ("float16" if half else "float32")
    sizes = [(tmp_path / n / "model.safetensors").stat().st_size for n in "ab"]
    assert weights.stat().st_size < (0.6 if half else 1.1) * sum(sizes)
    with torch.no_grad():  # few-shot predictions run through the same head
        sx, sy = torch.rand(1, 6, *SHAPE), torch.arange(3).repeat_interleave(2)[None]
        assert ens.model(sx, sy, torch.rand(1, 4, *SHAPE)).shape == (1, 4, 3)
    del a, b


def test_mean_ensemble_keeps_the_members_dimension(tmp_path):
    member(tmp_path, "a", [8, 8, 16, 16], 0)
    member(tmp_path, "b", [8, 16, 16, 32], 1)
    ensemble_checkpoints([tmp_path / "a", tmp_path / "b"], tmp_path / "ab", mode="mean")
    ens = h_model.load(tmp_path / "ab", device="cpu")
    x = torch.randint(0, 256, (5, *SHAPE), dtype=torch.uint8)
    za, zb = (h_model.load(tmp_path / n, device="cpu").embed(x) for n in "ab")
    assert np.abs(ens.embed(x) - (normed(za) + normed(zb)) / 2).max() < 1e-5
    assert json.loads((tmp_path / "ab" / "config.json").read_text())["ensemble"]["mode"] == "mean"


def test_ensemble_refuses_mismatched_members(tmp_path):
    member(tmp_path, "a", [8, 8, 16, 16], 0)
    member(tmp_path, "euclid", [8, 8, 16, 16], 1, distance="euclidean")
    with pytest.raises(ValueError, match="ensembles need one head"):
        ensemble_checkpoints([tmp_path / "a", tmp_path / "euclid"], tmp_path / "x")
    torch.manual_seed(0)
    m = create_model("proto", "face_resnet", {"channels": [8, 8, 16, 16], "dim": 16}, input_shape=(3, 48, 48),
                     distance="cosine")
    save_checkpoint(tmp_path / "big", m, {"preprocess": Preprocess(size=(48, 48), channels=3).to_dict()})
    with pytest.raises(ValueError, match="another preprocess"):
        ensemble_checkpoints([tmp_path / "a", tmp_path / "big"], tmp_path / "x")
    siamese = [create_model("siamese", "conv4", {"in_channels": 1}, input_shape=(1, 28, 28), hidden=8) for _ in range(2)]
    with pytest.raises(ValueError, match="not a scalar"):
        ensemble_models(siamese)
    with pytest.raises(ValueError, match="at least two"):
        ensemble_models(siamese[:1])


def test_ensemble_cli(tmp_path):
    member(tmp_path, "a", [8, 8, 16, 16], 0)
    member(tmp_path, "b", [8, 8, 16, 16], 1)
    r = subprocess.run([sys.executable, str(REPO / "training" / "ensemble_models.py"), str(tmp_path / "a"),
                        str(tmp_path / "b"), "--out", str(tmp_path / "ab"), "--half"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "an ensemble (concat) of 2 models" in r.stdout and (tmp_path / "ab" / "model.safetensors").is_file()
    r = subprocess.run([sys.executable, str(REPO / "training" / "ensemble_models.py"), str(tmp_path / "a"),
                        str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert r.returncode == 2 and "error:" in r.stderr


def test_weighted_ensemble_cosine_is_the_weighted_mean_of_the_members(tmp_path):
    member(tmp_path, "a", [8, 8, 16, 16], 0)
    member(tmp_path, "b", [8, 16, 16, 32], 1)
    ensemble_checkpoints([tmp_path / "a", tmp_path / "b"], tmp_path / "ab", weights=[3, 1])
    ens = h_model.load(tmp_path / "ab", device="cpu")
    assert json.loads((tmp_path / "ab" / "config.json").read_text())["ensemble"]["member_weights"] == [0.75, 0.25]
    x, y = (torch.randint(0, 256, (5, *SHAPE), dtype=torch.uint8) for _ in range(2))
    a, b = (h_model.load(tmp_path / n, device="cpu") for n in "ab")
    ax, ay, bx, by = (normed(m.embed(t)) for m in (a, b) for t in (x, y))
    ex, ey = ens.embed(x), ens.embed(y)
    want = 0.75 * np.einsum("ij,ij->i", ax, ay) + 0.25 * np.einsum("ij,ij->i", bx, by)
    assert np.abs(np.einsum("ij,ij->i", ex, ey) - want).max() < 1e-5
    assert np.abs(np.linalg.norm(ex, axis=1) - 1).max() < 1e-5
    for bad in ([1.0], [1.0, 0.0], [1.0, float("nan")]):
        with pytest.raises(ValueError, match="positive numbers"):
            ensemble_checkpoints([tmp_path / "a", tmp_path / "b"], tmp_path / "x", weights=bad)


class _Recorder(torch.nn.Module):
    """A member that remembers which thread ran it and under which grad mode."""

    def __init__(self, dim: int, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.lin = torch.nn.Linear(12, dim)
        self.seen: list[tuple[str, bool, bool]] = []

    def forward(self, x):
        import threading
        self.seen.append((threading.current_thread().name, torch.is_grad_enabled(), torch.is_inference_mode_enabled()))
        return self.lin(x.flatten(1))


def test_ensemble_members_run_side_by_side_at_cpu_inference_with_the_same_outputs():
    members = [_Recorder(4, 0), _Recorder(6, 1)]
    ens = EnsembleBackbone(members, "concat", [1.0, 3.0]).eval()
    x = torch.rand(3, 3, 2, 2)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        ref = ens(x)  # autograd on: one after the other, in the caller's thread
        assert ref.requires_grad and [m.seen[-1][0] for m in members] == ["MainThread"] * 2
        with torch.inference_mode():
            out = ens(x)
        assert torch.equal(out, ref.detach()) and out.is_inference()
        names = [m.seen[-1][0] for m in members]
        assert names[0] == "MainThread"
        if cpu_cores() >= 2:  # member 2 ran on the pool, in inference mode like its caller
            assert names[1].startswith("h_model-ensemble")
            assert all(m.seen[-1][1:] == (False, True) for m in members)
        with torch.no_grad():
            assert torch.equal(ens(x), ref.detach())
        assert all(m.seen[-1][1:] == (False, False) for m in members)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_ensemble_members_still_run_in_a_forked_child():
    """A child forked after the pool started inherits the pool object but not its threads."""
    import os
    import select
    import signal

    members = [_Recorder(4, 0), _Recorder(6, 1)]
    ens = EnsembleBackbone(members, "concat").eval()
    x = torch.rand(2, 3, 2, 2)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with torch.inference_mode():
            ref = ens(x)  # starts the pool (where there are 2 cores)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: must answer, not wait forever on the parent's dead threads
            ok = False
            try:
                with torch.inference_mode():
                    ok = torch.equal(ens(x), ref)
            finally:
                os.write(write, b"1" if ok else b"0")
                os._exit(0)
        os.close(write)
        ready, _, _ = select.select([read], [], [], 30)
        answer = os.read(read, 1) if ready else b"timeout"
        if not ready:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read)
        assert answer == b"1"
    finally:
        torch.set_num_threads(threads)
