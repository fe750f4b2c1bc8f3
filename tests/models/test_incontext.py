"""The in-context learner (``transformer``): invariances, shapes, checkpoints, a real short training."""
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

import h_model
from h_model.checkpoint import save_checkpoint
from h_model.models import create_model
from h_model.preprocess import Preprocess
from tests.conftest import REPO

SHAPE = (1, 28, 28)
SMALL = {"width": 32, "depth": 2, "heads": 4, "mlp": 64}


def small_model(seed: int = 0):
    torch.manual_seed(seed)
    return create_model("transformer", "conv4", {"in_channels": 1}, input_shape=SHAPE, **SMALL).eval()


def episode_z(way: int, shot: int, query: int, batch: int = 2, dim: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    sz = torch.randn(batch, way * shot, dim, generator=g)
    sy = torch.arange(way).repeat_interleave(shot).expand(batch, -1)
    qz = torch.randn(batch, query, dim, generator=g)
    return sz, sy, qz


@pytest.mark.parametrize("way,shot", [(2, 1), (5, 1), (5, 5), (20, 1), (20, 5), (3, 4)])
def test_logits_have_one_column_per_class_for_any_way_and_shot(way, shot):
    model = small_model()
    sz, sy, qz = episode_z(way, shot, 7)
    with torch.no_grad():
        logits = model.head(sz, sy, qz, way)
    assert logits.shape == (2, 7, way)
    assert torch.isfinite(logits).all()
    x = torch.randn(way * shot + 3, *SHAPE)  # full forward on images, one unbatched episode
    with torch.no_grad():
        assert model(x[:way * shot], sy[0], x[way * shot:]).shape == (3, way)


@pytest.mark.parametrize("way,shot", [(5, 1), (5, 5), (20, 2)])
def test_support_order_does_not_change_the_logits(way, shot):
    model = small_model()
    sz, sy, qz = episode_z(way, shot, 9)
    perm = torch.randperm(way * shot, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = model.head(sz, sy, qz, way)
        b = model.head(sz[:, perm], sy[:, perm], qz, way)
    assert torch.allclose(a, b, atol=1e-5)
    moved = sz.clone()
    moved[:, 0] += 1.0
    with torch.no_grad():
        assert not torch.allclose(a, model.head(moved, sy, qz, way), atol=1e-3)  # the support set does matter


@pytest.mark.parametrize("way,shot", [(5, 1), (5, 3), (20, 1)])
def test_renaming_the_classes_permutes_the_logits(way, shot):
    model = small_model()
    sz, sy, qz = episode_z(way, shot, 9)
    rename = torch.randperm(way, generator=torch.Generator().manual_seed(2))  # class c is called rename[c]
    with torch.no_grad():
        a = model.head(sz, sy, qz, way)
        b = model.head(sz, rename[sy], qz, way)
    assert torch.allclose(b[..., rename], a, atol=1e-5)
    assert not torch.allclose(b, a, atol=1e-3)


def test_a_query_is_scored_independently_of_the_other_queries():
    model = small_model()
    sz, sy, qz = episode_z(5, 2, 6)
    with torch.no_grad():
        all_q = model.head(sz, sy, qz, 5)
        one = model.head(sz, sy, qz[:, 3:4], 5)
        reversed_q = model.head(sz, sy, qz.flip(1), 5)
    assert torch.allclose(one, all_q[:, 3:4], atol=1e-5)
    assert torch.allclose(reversed_q, all_q.flip(1), atol=1e-5)


def clustered_episode(way: int, shot: int, query: int, dim: int = 64, noise: float = 0.7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(1, way, dim, generator=g)
    sz = centers.repeat_interleave(shot, 1) + noise * torch.randn(1, way * shot, dim, generator=g)
    qz = centers.repeat_interleave(query, 1) + noise * torch.randn(1, way * query, dim, generator=g)
    return sz, torch.arange(way).repeat_interleave(shot)[None], qz, torch.arange(way).repeat_interleave(query)


@pytest.mark.parametrize("start,low,high", [("nearest_mean", 0.9, 1.0), ("random", 0.0, 0.2)])
def test_untrained_nearest_mean_start_already_classifies_clustered_embeddings(start, low, high):
    torch.manual_seed(0)
    model = create_model("transformer", "conv4", dim=64, width=128, depth=2, heads=4, mlp=256, start=start).eval()
    sz, sy, qz, qy = clustered_episode(20, 1, 5)
    with torch.no_grad():
        acc = (model.head(sz, sy, qz, 20)[0].argmax(-1) == qy).float().mean().item()
    assert low <= acc <= high  # 20 classes: chance is 0.05


def test_unknown_start_is_refused():
    with pytest.raises(ValueError, match="start must be"):
        create_model("transformer", "conv4", dim=64, width=32, heads=4, start="zeros")


def test_structure_lets_class_tokens_see_only_their_own_examples():
    sy = torch.tensor([[1, 0, 1]])
    same, blocked = create_model("transformer", "conv4", dim=4, width=4, heads=1).structure(sy, 2, 1)
    # tokens: class 0, class 1, support (1, 0, 1), one query; keys: class 0, class 1, support (1, 0, 1)
    assert blocked[0].tolist() == [[False, True, True, False, True],
                                   [True, False, False, True, False]] + [[False] * 5] * 4
    assert same[0].tolist() == [[0.0] * 5, [0.0] * 5, [0, 1, 1, 0, 1], [1, 0, 0, 1, 0], [0, 1, 1, 0, 1], [0.0] * 5]


def test_bad_arguments_and_labels_are_refused():
    with pytest.raises(ValueError, match="embedding dimension"):
        create_model("transformer", "conv4")
    with pytest.raises(ValueError, match="divisible"):
        create_model("transformer", "conv4", dim=64, width=30, heads=4)
    model = small_model()
    sz, sy, qz = episode_z(3, 1, 2)
    with pytest.raises(ValueError, match="0..2"):
        model.head(sz, sy + 1, qz, 3)


def test_checkpoint_round_trip_and_predict_in_the_callers_labels(tmp_path):
    model = small_model(seed=3)
    save_checkpoint(tmp_path, model, {"preprocess": Preprocess(size=SHAPE[1:], channels=1).to_dict()})
    learner = h_model.load(tmp_path, device="cpu")
    assert learner.config["model"]["model_kwargs"]["width"] == 32
    torch.manual_seed(4)
    sx, qx = torch.randn(6, *SHAPE), torch.randn(4, *SHAPE)
    sy = torch.tensor([0, 0, 1, 1, 2, 2])
    with torch.no_grad():
        assert torch.equal(model(sx, sy, qx), learner.model(sx, sy, qx))
    images = (torch.rand(10, 1, 28, 28) * 255).to(torch.uint8)
    pred = learner.predict(images[:6], ["b", "b", "a", "a", "c", "c"], images[6:])
    assert pred.classes == ["b", "a", "c"] and pred.probs.shape == (4, 3)
    assert set(pred.labels) <= {"a", "b", "c"}
    assert torch.allclose(torch.tensor(pred.probs.sum(1)), torch.ones(4), atol=1e-5)


def test_short_real_training_beats_chance_by_far(data_root, tmp_path):
    """train_h.py --variant transformer on Omniglot for a few seconds, then the public API."""
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({
        "variant": "transformer", "backbone": "conv4", "model_kwargs": {"width": 64, "depth": 2, "heads": 4, "mlp": 128},
        "episodes": 100, "train_way": 60, "train_shot": 1, "train_query": 2, "val_every": 50, "val_episodes": 100,
        "eval_settings": ["5w1s"], "eval_episodes": 300, "lr": 0.001, "lr_schedule": "cosine"}))
    out = tmp_path / "run"
    env = {**os.environ, "H_DATA_ROOT": str(data_root)}
    r = subprocess.run([sys.executable, str(REPO / "training" / "train_h.py"), "--config", str(cfg),
                        "--variant", "transformer", "--out", str(out)],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["train"]["variant"] == "transformer" and res["train"]["episodes"] == 100
    assert res["5w1s"]["accuracy"] >= 0.7, res["5w1s"]  # chance: 0.2 (measured: 0.82)
    learner = h_model.load(out, device="cpu")
    chars = sorted((data_root / "omniglot-py" / "images_evaluation" / "Atlantean").iterdir())[:5]
    support = [sorted(c.glob("*.png"))[0] for c in chars]
    queries = [sorted(c.glob("*.png"))[1] for c in chars]
    pred = learner.predict(support, [c.name for c in chars], queries)
    assert sum(p == c.name for p, c in zip(pred.labels, chars)) >= 3
    from app.fewshot_demo import FewShotDemo  # the app's few-shot tab, on the same learner

    demo = FewShotDemo(learner, out, data_root / "omniglot-py" / "images_evaluation")
    hits = 0
    for seed in range(10):
        support_set, query, truth = demo.sample(5, seed)
        r = demo.predict(support_set, query)
        assert r["classes"] == list("ABCDE") and abs(sum(r["probs"]) - 1) < 1e-5
        hits += r["predicted"] == truth
    assert hits >= 5, hits  # chance: 2 of 10


@pytest.mark.parametrize("name,device", [("transformer_omniglot_cpu30", "auto"), ("transformer_omniglot_gpu", "cuda")])
def test_configs_parse_and_build(name, device):
    from h_model.trainer import TrainConfig

    cfg = TrainConfig.from_dict(yaml.safe_load((REPO / "training" / "configs" / f"{name}.yaml").read_text()))
    cfg.validate()
    assert cfg.variant == "transformer" and cfg.device == device and cfg.train_shot == 1
    m = create_model(cfg.variant, cfg.backbone, cfg.backbone_kwargs, input_shape=(1, 28, 28), **cfg.model_kwargs)
    sz, sy, qz = episode_z(20, 5, 3, batch=1)
    with torch.no_grad():
        assert m.eval().head(sz, sy, qz, 20).shape == (1, 3, 20)
