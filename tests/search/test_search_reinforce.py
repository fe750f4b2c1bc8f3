"""REINFORCE: learns a toy reward, logs, keeps a leaderboard, resumes exactly."""
import csv
import json
import math

import torch

from h_model.search.controller import Controller
from h_model.search.reinforce import LOWEST_REWARD, ChoiceSpace, Reinforce, ReinforceConfig, safe_reward, time_to_reach

SPACE = ChoiceSpace([("a", ["x", "y", "z"]), ("b", [0, 1, 2])])


def toy_reward(design, seed):
    return 1.0 if design["a"] == "z" else 0.0


def p_first_is(controller: Controller, choice: int) -> float:
    with torch.no_grad():
        return sum(math.exp(float(controller.log_prob([choice, b])[0])) for b in range(3))


def test_log_probs_of_a_step_sum_to_one():
    c = Controller([3, 3])
    assert abs(sum(p_first_is(c, a) for a in range(3)) - 1.0) < 1e-5


def test_reinforce_raises_probability_of_rewarded_choice():
    s = Reinforce(SPACE, toy_reward, ReinforceConfig(budget=60, lr=0.05, seed=0, progress=False))
    before = p_first_is(s.controller, 2)
    s.run()
    after = p_first_is(s.controller, 2)
    assert before < 0.45 and after > 0.8, (before, after)
    late = [r["reward"] for r in s.rows[-20:]]
    assert sum(late) / len(late) > 0.6


def test_random_mode_does_not_learn():
    s = Reinforce(SPACE, toy_reward, ReinforceConfig(budget=30, random=True, seed=0, progress=False))
    before = p_first_is(s.controller, 2)
    s.run()
    assert p_first_is(s.controller, 2) == before
    assert {r["mode"] for r in s.rows} == {"random"}


def test_logs_leaderboard_and_exact_resume(tmp_path):
    def reward(design, seed):
        return 0.1 * design["b"] + (0.5 if design["a"] == "z" else 0.0)

    full = Reinforce(SPACE, reward, ReinforceConfig(budget=8, seed=3, out=str(tmp_path / "full"), progress=False))
    full.run()
    part = Reinforce(SPACE, reward, ReinforceConfig(budget=5, seed=3, out=str(tmp_path / "part"), progress=False))
    part.run()
    resumed = Reinforce(SPACE, reward, ReinforceConfig(budget=8, seed=3, out=str(tmp_path / "part"), resume=True,
                                                       progress=False))
    assert len(resumed.rows) == 5
    res = resumed.run()
    assert [r["actions"] for r in resumed.rows] == [r["actions"] for r in full.rows]
    with open(tmp_path / "part" / "designs.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and [int(r["index"]) for r in rows] == list(range(8))
    board = json.loads((tmp_path / "part" / "leaderboard.json").read_text())
    rewards = [e["reward"] for e in board]
    assert rewards == sorted(rewards, reverse=True) and rewards[0] == max(float(r["reward"]) for r in rows)
    assert len({json.dumps(e["actions"]) for e in board}) == len(board)
    assert res["best"]["reward"] == rewards[0]
    assert time_to_reach(resumed.rows, rewards[0]) is not None


def test_leaderboard_ranks_a_design_by_its_mean_reward_over_repeats():
    space = ChoiceSpace([("a", ["x", "y"])])
    luck = iter([0.9, 0.2, 0.7, 0.1, 0.6, 0.5])

    def noisy(design, seed):
        return next(luck)

    s = Reinforce(space, noisy, ReinforceConfig(budget=6, random=True, seed=0, progress=False))
    s.run()
    by = {}
    for r in s.rows:
        by.setdefault(r["actions"], []).append(float(r["reward"]))
    assert len(by) == 2 and all(len(v) >= 2 for v in by.values())
    board = s.leaderboard
    assert [e["evaluations"] for e in board] == [len(by[json.dumps(e["actions"])]) for e in board]
    means = {k: sum(v) / len(v) for k, v in by.items()}
    assert [e["reward"] for e in board] == sorted((round(m, 6) for m in means.values()), reverse=True)
    assert board[0]["best_single"] == max(by[json.dumps(board[0]["actions"])])


def test_time_budget_stops_search():
    s = Reinforce(SPACE, toy_reward, ReinforceConfig(budget=None, time_limit_s=0.0, progress=False))
    assert s.run()["designs"] == 0


def test_failures_and_nan_get_lowest_reward():
    def boom(design, seed):
        raise RuntimeError("diverged")

    assert safe_reward(boom, {}, 0) == (LOWEST_REWARD, "RuntimeError: diverged")
    assert safe_reward(lambda d, s: float("nan"), {}, 0)[0] == LOWEST_REWARD
    s = Reinforce(SPACE, lambda d, s: float("inf"), ReinforceConfig(budget=3, progress=False))
    s.run()
    assert all(r["reward"] == LOWEST_REWARD and r["error"] for r in s.rows)


def counting(reward_of):
    """An evaluator that records every (design, seed) it was asked to train."""
    calls = []

    def ev(design, seed):
        calls.append((json.dumps(design, sort_keys=True), seed))
        return reward_of(design)
    return ev, calls


def test_common_seed_trains_each_design_once_from_one_seed():
    space = ChoiceSpace([("a", [0, 1]), ("b", [0, 1])])  # 4 designs
    ev, calls = counting(lambda d: 0.1 * d["a"] + 0.2 * d["b"])
    s = Reinforce(space, ev, ReinforceConfig(budget=10, common_seed=True, seed=2, progress=False))
    res = s.run()
    assert len(calls) == 4 == len({c[0] for c in calls})  # the space is exhausted, nothing twice
    assert {c[1] for c in calls} == {2 * 100_003}
    assert res["designs"] == 4 and res["best"]["reward"] == 0.3 and res["best"]["evaluations"] == 1
    ev2, calls2 = counting(lambda d: 0.0)
    Reinforce(space, ev2, ReinforceConfig(budget=4, seed=2, random=True, progress=False)).run()
    assert len({c[1] for c in calls2}) == 4  # without it, every child has a seed of its own


def test_common_seed_reuses_a_reward_when_redraws_run_out(monkeypatch, tmp_path):
    from h_model.search import reinforce
    monkeypatch.setattr(reinforce, "REDRAWS", 0)
    space = ChoiceSpace([("a", [0, 1, 2, 3, 4, 5])])
    ev, calls = counting(lambda d: d["a"] / 10)
    s = Reinforce(space, ev, ReinforceConfig(budget=4, common_seed=True, random=True, seed=6,
                                             out=str(tmp_path), progress=False))  # seed 6 repeats a design
    res = s.run()
    cached = [r for r in s.rows if r["cached"]]
    assert cached and len(calls) == 4 == res["designs"] and res["samples"] == len(s.rows) == 4 + len(cached)
    assert all(float(r["reward"]) == int(json.loads(r["actions"])[0]) / 10 for r in cached)
    board = {json.dumps(e["actions"]): e["evaluations"] for e in s.leaderboard}
    assert set(board.values()) == {1}  # a reused reward is not a second evaluation
    resumed = Reinforce(space, ev, ReinforceConfig(budget=6, common_seed=True, random=True, seed=6,
                                                   out=str(tmp_path), resume=True, progress=False))
    resumed.run()
    assert len(calls) == len({c[0] for c in calls}) == 6  # known designs stay known after a resume
