import math

import torch

from h_model.evaluate import embed_all, evaluate, mean_ci95, parse_setting
from h_model.episodes import EpisodeSampler
from h_model.lake import make_lake_runs, read_lake_runs
from h_model.models import create_model
from tests.conftest import tiny_imageset


def test_mean_ci95_hand_computed():
    m, ci = mean_ci95(torch.tensor([0.0, 1.0, 1.0, 1.0]))
    assert m == 0.75
    assert math.isclose(ci, 1.96 * 0.5 / 2)


def test_parse_setting():
    assert parse_setting("20w5s") == (20, 5) and parse_setting("5W1S") == (5, 1)


def test_embedding_reuse_equals_per_episode_evaluation():
    """The fast evaluator (embed every image once) gives exactly the per-episode answer."""
    data = tiny_imageset(classes=12, per_class=5, size=28)
    for variant, kw in [("proto", {}), ("matching", {"fce": True}), ("siamese", {"hidden": 16})]:
        torch.manual_seed(0)
        model = create_model(variant, "conv4", input_shape=(1, 28, 28), **kw).eval()
        res = evaluate(model, data, way=4, shot=2, query=3, episodes=10, seed=5)
        sampler = EpisodeSampler(data, 4, 2, 3, 10, seed=5)  # evaluate() draws all 10 in one batch
        ep = sampler.sample().to("cpu", data.preprocess)
        with torch.no_grad():
            logits = model(ep.support_x, ep.support_y, ep.query_x, way=4)
        accs = (logits.argmax(-1) == ep.query_y).float().mean(-1)
        assert math.isclose(res["accuracy"], float(accs.mean()), abs_tol=1e-6), variant


def test_embed_all_matches_model_embed():
    data = tiny_imageset(classes=3, per_class=4, size=28)
    model = create_model("proto", "conv4").eval()
    z = embed_all(model, data, "cpu", batch=5)
    with torch.no_grad():
        ref = model.embed(data.preprocess.normalize(data.images))
    assert torch.allclose(z, ref, atol=1e-5)


def test_lake_runs_format_round_trip(data_root, tmp_path):
    z = make_lake_runs(data_root / "omniglot-py" / "images_evaluation", tmp_path / "runs.zip", runs=3, seed=1)
    runs = read_lake_runs(z)
    assert [r.name for r in runs] == ["run01", "run02", "run03"]
    for r in runs:
        assert len(r.train) == 20 and len(r.test) == 20
        assert sorted({c for _, c in r.test}) == sorted(r.train)
    # a test item is never the very drawing used for training
    assert all(img not in r.train.values() for r in runs for img, _ in r.test)
