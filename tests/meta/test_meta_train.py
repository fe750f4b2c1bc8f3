"""A short real MAML run on ../shared/data Omniglot through the shared command line, then .predict."""
import json
import os
import resource
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml

import h_model
from tests.conftest import REPO

# 120 meta-iterations of 8 five-way one-shot tasks, Conv-4 with 32 channels: about 80 s of one CPU core.
CONFIG = {
    "backbone": "conv4", "backbone_kwargs": {"hidden": 32},
    "model_kwargs": {"steps": 1, "test_steps": 3, "inner_lr": 0.4},
    "dataset": "omniglot", "image_size": 28, "episodes": 960, "episodes_per_batch": 8,
    "train_way": 5, "train_shot": 1, "train_query": 5, "test_way": 5, "test_shot": 1,
    "val_every": 960, "val_episodes": 100, "eval_settings": ["5w1s"], "eval_episodes": 200,
    "lr": 0.01, "lr_schedule": "constant", "log_every": 80, "checkpoint_every": 1000,
}


@pytest.fixture(scope="session")
def maml_run(data_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("maml")
    cfg = tmp / "maml.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    env = {**os.environ, "H_DATA_ROOT": str(data_root), "OMP_NUM_THREADS": "1"}  # 1 thread: no oversubscription
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run([sys.executable, str(REPO / "training" / "train_h.py"), "--config", str(cfg),
                        "--method", "maml", "--out", str(tmp / "run")],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert r.returncode == 0, r.stderr[-3000:]
    print(f"MAML run: {after.ru_utime - before.ru_utime:.0f} s user CPU")
    return tmp / "run"


def test_short_maml_run_clears_70_percent_5way_1shot(maml_run):
    res = json.loads((maml_run / "results.json").read_text())
    assert res["train"]["variant"] == "maml" and res["train"]["episodes"] == 960
    assert res["5w1s"]["episodes"] == 200
    assert res["5w1s"]["accuracy"] >= 0.70, res["5w1s"]
    cfg = json.loads((maml_run / "config.json").read_text())
    assert cfg["model"]["variant"] == "maml" and cfg["model"]["model_kwargs"]["test_steps"] == 3


def test_maml_checkpoint_predicts_through_public_api(maml_run, data_root):
    learner = h_model.load(maml_run, device="cpu")
    assert not learner.model.embeds_independently
    chars = sorted((data_root / "omniglot-py" / "images_evaluation" / "Atlantean").iterdir())[:5]
    support = [sorted(c.glob("*.png"))[0] for c in chars]
    queries = [q for c in chars for q in sorted(c.glob("*.png"))[1:5]]
    truth = [c.name for c in chars for _ in range(4)]
    pred = learner.predict(support, [c.name for c in chars], queries)
    assert pred.classes == [c.name for c in chars] and pred.probs.shape == (20, 5)
    np.testing.assert_allclose(pred.probs.sum(1), 1.0, rtol=1e-5)
    assert np.mean([p == t for p, t in zip(pred.labels, truth)]) >= 0.4  # chance is 0.2 (P(>=8 of 20) ~ 0.03)
    again = learner.predict(support, [c.name for c in chars], queries)  # adaptation is deterministic
    np.testing.assert_array_equal(pred.probs, again.probs)


def test_tune_test_time_chooses_test_steps_on_validation_and_writes_the_choice(maml_run, data_root, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(maml_run, run)
    env = {**os.environ, "H_DATA_ROOT": str(data_root), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "tune_test_time.py"), str(run),
                        "--knob", "test_steps", "--values", "1", "5",
                        "--val-episodes", "30", "--test-episodes", "10", "--threads", "1",
                        "--out", str(tmp_path / "tune.json"), "--write"],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads((tmp_path / "tune.json").read_text())
    val = out["validation_5w1s"]
    assert sorted(val) == ["1", "5"] and all(v["episodes"] == 30 for v in val.values())
    assert out["chosen"] == max((1, 5), key=lambda s: val[str(s)]["accuracy"])
    assert out["5w1s"]["episodes"] == 10 and out["20w1s"]["way"] == 20
    assert h_model.load(run, device="cpu").model.test_steps == out["chosen"]
    assert json.loads((run / "config.json").read_text())["test_time_tuning"]["test_steps"]["trained"] == 3
    assert json.loads((maml_run / "config.json").read_text())["model"]["model_kwargs"]["test_steps"] == 3


def test_tune_test_time_refuses_a_knob_the_model_lacks(maml_run, data_root):
    env = {**os.environ, "H_DATA_ROOT": str(data_root), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "tune_test_time.py"), str(maml_run),
                        "--knob", "pool", "--values", "max", "mean", "--threads", "1"],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert r.returncode != 0 and "has no test-time `pool`" in r.stderr
