"""benchmarks/bench_vs_easyfsl.py: the shared validation episodes, the curves and the speedups."""
import importlib.util
import sys

import pytest
import torch
from PIL import Image

from h_model.data import ImageSet
from h_model.preprocess import Preprocess
from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("bench_vs_easyfsl", REPO / "benchmarks" / "bench_vs_easyfsl.py")
bench = importlib.util.module_from_spec(spec)
sys.modules["bench_vs_easyfsl"] = bench  # its dataclasses look their module up
spec.loader.exec_module(bench)


def imageset(classes: int = 24, per_class: int = 20) -> ImageSet:
    labels = torch.arange(classes).repeat_interleave(per_class)
    imgs = torch.zeros(len(labels), 1, 4, 4, dtype=torch.uint8)
    names = [f"c{i // 4}@rot{90 * (i % 4)}" for i in range(classes)]
    return ImageSet(imgs, labels, names, Preprocess(size=(4, 4)), [f"f{i}.png" for i in range(len(labels))])


def test_fixed_episodes_score_separable_and_confused_embeddings():
    data = imageset()
    val = bench.FixedEpisodes(data, episodes=20, query=5)
    assert val.idx["5w1s"].shape == (20, 5, 6) and val.idx["20w1s"].shape == (20, 20, 6)
    one_hot = torch.nn.functional.one_hot(data.labels, 24).float()
    assert val.score(one_hot) == {"5w1s": 1.0, "20w1s": 1.0}
    same = torch.zeros(len(data), 8)  # every image alike: ties go to the first prototype
    assert val.score(same) == pytest.approx({"5w1s": 0.2, "20w1s": 0.05})


def test_fixed_episodes_are_the_same_for_both_libraries():
    a, b = bench.FixedEpisodes(imageset(), episodes=7), bench.FixedEpisodes(imageset(), episodes=7)
    assert all(torch.equal(a.idx[s], b.idx[s]) for s in bench.SETTINGS)


def test_file_list_reads_rotation_from_class_names():
    items = bench.file_list(imageset(classes=8, per_class=2))
    assert items[0] == ("f0.png", 0, 0) and items[2] == ("f2.png", 90, 1) and items[15] == ("f15.png", 270, 7)


def test_files_dataset_rotates_and_scales(tmp_path):
    img = Image.new("L", (10, 10), 0)
    img.putpixel((0, 0), 255)  # top-left corner lit
    img.save(tmp_path / "a.png")
    ds = bench.OmniglotFiles([(str(tmp_path / "a.png"), 0, 3), (str(tmp_path / "a.png"), 180, 4)], size=10)
    x0, y0 = ds[0]
    x1, y1 = ds[1]
    assert (y0, y1) == (3, 4) and ds.get_labels() == [3, 4] and x0.shape == (1, 10, 10)
    assert x0[0, 0, 0] == 1.0 and x1[0, 9, 9] == 1.0 and x1[0, 0, 0] == 0.0


def test_curve_times_and_speedups():
    c = bench.Curve()
    for t, a5, a20 in [(10, 0.90, 0.70), (20, 0.97, 0.85), (30, 0.98, 0.90)]:
        c.add(t, t * 10, {"5w1s": a5, "20w1s": a20})
    assert c.time_to("5w1s", 0.97) == 20 and c.time_to("20w1s", 0.95) is None and c.best("20w1s") == 0.90
    assert bench.speedup(100.0, 20.0, 1500.0) == {"value": 5.0, "lower_bound": False}
    assert bench.speedup(None, 20.0, 1500.0) == {"value": 75.0, "lower_bound": True}
    assert bench.speedup(100.0, None, 1500.0) == {"value": None, "lower_bound": False}


def test_overrides_are_read_as_yaml_and_malformed_ones_refused():
    assert bench.parse_overrides(["lr=0.006", "both_ways=true", "train_way=30"]) == \
        {"lr": 0.006, "both_ways": True, "train_way": 30}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        bench.parse_overrides(["lr"])


def test_easyfsl_curve_is_reused_from_an_earlier_report(tmp_path):
    import json

    c = bench.Curve()
    c.add(5.0, 7, {"5w1s": 0.7, "20w1s": 0.45})
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"easyfsl_budget_s": 180.0, "curves": {"easyfsl": c.__dict__}}))
    curve, budget = bench.reused_easyfsl(path)
    assert budget == 180.0 and curve.seconds == [5.0] and curve.acc == {"5w1s": [0.7], "20w1s": [0.45]}
