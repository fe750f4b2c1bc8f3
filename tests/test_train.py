"""Real training runs on ../shared/data Omniglot: accuracy, files, resume, DDP, command line."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import h_model
from tests.conftest import REPO

# the default config's wall-time limit is switched off: a slow or busy machine must not cut runs short
TRAIN = [sys.executable, str(REPO / "training" / "train_h.py"), "--time-limit-min", "0"]


def run(args, env_root, **kw):
    env = {**os.environ, "H_DATA_ROOT": str(env_root), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO, timeout=900, **kw)


@pytest.fixture(scope="session")
def trained_run(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "proto"
    r = run(TRAIN + ["--episodes", "80", "--val-every", "40", "--eval-episodes", "300", "--out", str(out)], data_root)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_short_training_clears_80_percent(trained_run):
    res = json.loads((trained_run / "results.json").read_text())
    assert set(res) >= {"5w1s", "5w5s", "20w1s", "20w5s", "train"}
    assert res["5w1s"]["accuracy"] >= 0.80, res["5w1s"]
    assert res["5w5s"]["accuracy"] > res["5w1s"]["accuracy"]
    assert 0 < res["5w1s"]["ci95"] < 0.05 and res["5w1s"]["episodes"] == 300
    for f in ["model.safetensors", "config.json", "metrics.csv", "curves.png", "state.pt"]:
        assert (trained_run / f).is_file(), f
    rows = list(csv.DictReader(open(trained_run / "metrics.csv")))
    assert rows[-1]["episode"] == "80" and [r["episode"] for r in rows if r["val_acc"]] == ["40", "80"]


def test_trained_checkpoint_predicts_through_public_api(trained_run, data_root):
    learner = h_model.load(trained_run)
    chars = sorted((data_root / "omniglot-py" / "images_evaluation" / "Atlantean").iterdir())[:5]
    support = [sorted(c.glob("*.png"))[0] for c in chars]
    queries = [sorted(c.glob("*.png"))[1] for c in chars]
    pred = learner.predict(support, [c.name for c in chars], queries)
    assert sum(p == c.name for p, c in zip(pred.labels, chars)) >= 3
    assert learner.embed(queries).shape == (5, 64)


def test_evaluate_and_lake_command_lines(trained_run, data_root, tmp_path):
    r = run([sys.executable, "-m", "h_model.evaluate", "--checkpoint", str(trained_run), "--way", "20",
             "--shot", "1", "--episodes", "100", "--json", str(tmp_path / "e.json")], data_root)
    assert r.returncode == 0, r.stderr
    assert "20-way 1-shot" in r.stdout
    assert json.loads((tmp_path / "e.json").read_text())["accuracy"] > 0.5
    from h_model.lake import make_lake_runs
    z = make_lake_runs(data_root / "omniglot-py" / "images_evaluation", tmp_path / "runs.zip", runs=4)
    r = run([sys.executable, "-m", "h_model.evaluate", "--checkpoint", str(trained_run / "model.safetensors"),
             "--lake-runs", str(z), "--json", str(tmp_path / "lake.json")], data_root)
    assert r.returncode == 0, r.stderr
    lake = json.loads((tmp_path / "lake.json").read_text())
    assert len(lake["runs"]) == 4 and lake["mean_error"] < 80  # chance is 95% error
    assert "people 4.5%" in r.stdout


def test_sigterm_saves_state_and_resume_continues(data_root, tmp_path):
    out = tmp_path / "r"

    def args(episodes, *extra):
        return TRAIN + ["--train-way", "5", "--episodes", str(episodes), "--val-every", "1000",
                        "--eval-episodes", "20", "--out", str(out), *extra]

    env = {**os.environ, "H_DATA_ROOT": str(data_root)}
    p = subprocess.Popen(args(100000), env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (out / "state.pt").exists() and time.time() < deadline:  # first state after 100 episodes
        time.sleep(0.5)
    time.sleep(1.0)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=120) != 0
    stopped = int(torch.load(out / "state.pt", weights_only=True)["episode"])
    assert stopped >= 100
    r = run(args(stopped + 20, "--resume"), data_root)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resumed {out} at episode {stopped}" in r.stderr
    assert int(torch.load(out / "state.pt", weights_only=True)["episode"]) == stopped + 20
    eps = [int(row["episode"]) for row in csv.DictReader(open(out / "metrics.csv"))]
    assert eps == sorted(eps) and eps[-1] == stopped + 20


def test_ddp_two_processes_on_cpu(data_root, tmp_path):
    out = tmp_path / "ddp"
    r = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531",
             str(REPO / "training" / "train_h.py"), "--time-limit-min", "0", "--train-way", "10", "--episodes", "6", "--val-every", "3",
             "--eval-episodes", "20", "--out", str(out)], data_root)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((out / "results.json").read_text())["train"]["episodes"] == 6


def test_clear_errors_before_training(data_root, tmp_path):
    r = run(TRAIN + ["--train-way", "5000", "--out", str(tmp_path / "x")], data_root)
    assert r.returncode == 2 and "5000-way episodes need 5000 classes" in r.stderr
    assert "Traceback" not in r.stderr
    # a validation way the 256 validation classes cannot fill fails early, even when the test set could fill it
    cfg = tmp_path / "val_way.yaml"
    cfg.write_text("test_way: 300\neval_settings: [300w1s]\n")
    r = run(TRAIN + ["--config", str(cfg), "--out", str(tmp_path / "v")], data_root)
    assert r.returncode == 2 and "300-way episodes need 300 classes" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "v").exists()  # refused before the run wrote anything
    r = run(TRAIN + ["--data-root", str(tmp_path / "nothing"), "--out", str(tmp_path / "y")], data_root)
    assert r.returncode == 2 and "Looked in" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("variantt: proto\n")
    r = run(TRAIN + ["--config", str(bad)], data_root)
    assert r.returncode == 2 and "unknown training option(s): variantt" in r.stderr
