"""benchmarks/search_seeds.py: the controller-vs-random table and a real (tiny) parallel study."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("search_seeds", REPO / "benchmarks" / "search_seeds.py")
search_seeds = importlib.util.module_from_spec(spec)
spec.loader.exec_module(search_seeds)


def job(search, variant, seed, best, rewards=(0.1, 0.3, 0.2)):
    return {"search": search, "variant": variant, "seed": seed,
            "summary": {"best_rescored_mean": best, "rewards": list(rewards), "cached": [0] * len(rewards)}}


def test_compare_pairs_each_controller_variant_with_its_random_partner(tmp_path):
    jobs = [job("nas", "controller", 1, 0.9), job("nas", "random", 1, 0.8),
            job("nas", "controller", 2, 0.7), job("nas", "random", 2, 0.75),
            job("nas", "controller", 3, 0.9),  # no partner: left out
            job("nas", "controller_crn", 1, 0.6), job("nas", "random_crn", 1, 0.5),
            {"search": "nas", "variant": "random", "seed": 3, "summary": {"partial": True, "rewards": [0.1]}}]
    table = {r["controller"]: r for r in search_seeds.compare(jobs)}
    plain = table["controller"]
    assert plain["random"] == "random" and plain["seeds"] == 2 and plain["controller_wins"] == 1
    assert plain["mean_difference"] == pytest.approx(0.025) and plain["mean_controller"] == pytest.approx(0.8)
    assert [p["seed"] for p in plain["per_seed"]] == [1, 2]
    assert table["controller_crn"]["random"] == "random_crn" and table["controller_crn"]["sd_difference"] is None
    search_seeds.plot(jobs, tmp_path / "study.png")
    assert (tmp_path / "study.png").stat().st_size > 1000


def test_study_runs_real_searches_from_a_saved_background(data_root, tmp_path):
    bg = tmp_path / "bg.pt"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "search_seeds.py"), "--export-background", str(bg),
                    "--data-root", str(data_root)],
                   check=True, capture_output=True)
    out = tmp_path / "study"
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "search_seeds.py"), "--background", str(bg),
                        "--searches", "activation", "--seeds", "1", "--parallel", "2", "--out", str(out),
                        "--flags", "--budget 2 --steps 1 --val-episodes 5 --rescore-top 1 --rescore-seeds 1"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    study = json.loads((out / "study.json").read_text())
    assert {j["variant"] for j in study["jobs"]} == {"random", "controller"}
    assert all(j["rc"] == 0 and j["summary"]["designs"] == 2 for j in study["jobs"])
    row = study["comparison"][0]
    assert row["seeds"] == 1 and row["controller_wins"] == int(row["mean_difference"] > 0)
    assert (out / "study.png").exists()
