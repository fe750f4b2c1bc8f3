"""REINFORCE over a discrete design space: moving-average baseline, entropy bonus, resumable.

    space = ChoiceSpace([("filters", [24, 36]), ("kernel", [3, 5])])
    result = Reinforce(space, evaluator, ReinforceConfig(budget=20, out="runs/s")).run()

Every sampled design is appended to ``designs.csv`` with its reward, the best ones (by mean
reward over their evaluations: a design sampled twice is scored twice) are kept in
``leaderboard.json``, and ``state.pt`` (controller, optimiser, baseline, RNG states, the
evaluator's own state when it has one) lets ``resume=True`` continue where a run stopped. All
three are rewritten atomically after every design.

``common_seed=True`` trains every child from the same seed (common random numbers: two designs
differ in reward by what they are, not by their luck with the seed). A second training of a
design would then tell nothing new, so a design already scored is drawn again (up to
``REDRAWS`` times) and every budgeted sample trains a new design; only when the redraws keep
hitting known designs is one reused, logged as ``cached``, without counting towards the budget
(and at most ``MAX_SAMPLES_PER_DESIGN`` samples per design of budget are drawn in all).
"""
from __future__ import annotations

import csv
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import torch
from tqdm import tqdm

from ..checkpoint import atomic_write, write_json
from .controller import Controller

log = logging.getLogger("h_model.search")
LOWEST_REWARD = 0.0
CSV_FIELDS = ["index", "mode", "reward", "seconds", "elapsed_s", "baseline", "log_prob", "error", "cached",
              "design", "actions"]
MAX_SAMPLES_PER_DESIGN = 20
REDRAWS = 100
STATE, DESIGNS, LEADERBOARD = "state.pt", "designs.csv", "leaderboard.json"


class ChoiceSpace:
    """A sequence of named decisions, each with its own list of options.

    ``decode`` turns choice indices into a JSON-able design; subclasses give it a shape.
    """

    def __init__(self, steps: Sequence[tuple[str, Sequence[Any]]]) -> None:
        self.steps = [(name, list(options)) for name, options in steps]

    @property
    def num_choices(self) -> list[int]:
        return [len(o) for _, o in self.steps]

    def decode(self, actions: Sequence[int]) -> Any:
        return {name: options[a] for (name, options), a in zip(self.steps, actions)}

    def size(self) -> int:
        return math.prod(self.num_choices)


class Evaluator(Protocol):
    """Scores a design (higher is better); ``seed`` makes the child's training reproducible."""

    def __call__(self, design: Any, seed: int) -> float: ...


@dataclass
class ReinforceConfig:
    budget: int | None = 20            # number of designs to sample (None: only the time limit)
    time_limit_s: float | None = None  # wall-clock budget
    lr: float = 0.02                   # controller Adam learning rate (small budgets need a large one)
    baseline_decay: float = 0.8        # b <- decay * b + (1 - decay) * R
    entropy_weight: float = 1e-3       # bonus on the summed entropy of the sampled choices
    hidden: int = 64
    tanh_c: float = 2.5
    random: bool = False               # uniformly random designs, no learning (the baseline)
    common_seed: bool = False          # one child seed for every design; repeats reuse their reward
    seed: int = 0
    out: str | None = None             # folder for designs.csv, leaderboard.json, state.pt
    resume: bool = False
    top_k: int = 10
    progress: bool = True

    def __post_init__(self) -> None:
        if self.budget is None and self.time_limit_s is None:
            raise ValueError("give a budget (number of designs), a time limit, or both")


def safe_reward(evaluator: Evaluator, design: Any, seed: int) -> tuple[float, str]:
    """(reward, error text): failures and non-finite rewards score ``LOWEST_REWARD``."""
    try:
        r = float(evaluator(design, seed))
    except (RuntimeError, ValueError, OverflowError, ZeroDivisionError, FloatingPointError) as e:
        return LOWEST_REWARD, f"{type(e).__name__}: {e}"[:200]
    if not math.isfinite(r):
        return LOWEST_REWARD, "non-finite reward"
    return r, ""


def time_to_reach(rows: Sequence[dict[str, Any]], target: float) -> float | None:
    """Elapsed seconds at the first design whose reward is >= ``target`` (None: never)."""
    for r in rows:
        if float(r["reward"]) >= target:
            return float(r["elapsed_s"])
    return None


class Reinforce:
    """The search loop: sample, score, update the controller, log, checkpoint."""

    def __init__(self, space: ChoiceSpace, evaluator: Evaluator, cfg: ReinforceConfig) -> None:
        self.space, self.evaluator, self.cfg = space, evaluator, cfg
        torch.manual_seed(cfg.seed)
        self.controller = Controller(space.num_choices, cfg.hidden, cfg.tanh_c)
        self.opt = torch.optim.Adam(self.controller.parameters(), lr=cfg.lr)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.baseline: float | None = None
        self.rows: list[dict[str, Any]] = []
        self.leaderboard: list[dict[str, Any]] = []
        self.rewards: dict[str, tuple[float, str]] = {}  # actions -> (reward, error), with common_seed
        self.elapsed = 0.0
        self.out = Path(cfg.out) if cfg.out else None
        if cfg.resume and self.out and (self.out / STATE).exists():
            self._load()

    # -- persistence -------------------------------------------------------------------------
    def _load(self) -> None:
        st = torch.load(self.out / STATE, map_location="cpu", weights_only=False)
        self.controller.load_state_dict(st["controller"])
        self.opt.load_state_dict(st["optimizer"])
        self.generator.set_state(st["generator"])
        torch.set_rng_state(st["torch_rng"])
        self.baseline, self.rows, self.leaderboard = st["baseline"], st["rows"], st["leaderboard"]
        self.elapsed = float(st["elapsed"])
        self.rewards = {r["actions"]: (float(r["reward"]), r["error"]) for r in self.rows if not r.get("cached")}
        if st.get("evaluator") is not None and hasattr(self.evaluator, "load_state_dict"):
            self.evaluator.load_state_dict(st["evaluator"])
        log.info("resumed %s after %d designs", self.out, len(self.rows))

    def _save(self) -> None:
        if self.out is None:
            return
        st = {"controller": self.controller.state_dict(), "optimizer": self.opt.state_dict(),
              "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state(),
              "baseline": self.baseline, "rows": self.rows, "leaderboard": self.leaderboard,
              "elapsed": self.elapsed, "config": asdict(self.cfg),
              "evaluator": self.evaluator.state_dict() if hasattr(self.evaluator, "state_dict") else None}
        atomic_write(self.out / STATE, lambda tmp: torch.save(st, tmp))

        def w(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                wr = csv.DictWriter(f, CSV_FIELDS)
                wr.writeheader()
                wr.writerows(self.rows)
        atomic_write(self.out / DESIGNS, w)
        write_json(self.out / LEADERBOARD, self.leaderboard)

    # -- the loop ----------------------------------------------------------------------------
    def _sample(self) -> tuple[list[int], torch.Tensor | None, torch.Tensor | None]:
        if self.cfg.random:
            acts = [int(torch.randint(n, (1,), generator=self.generator)) for n in self.space.num_choices]
            return acts, None, None
        return self.controller.sample(self.generator)

    def _update(self, reward: float, logp: torch.Tensor, ent: torch.Tensor) -> None:
        if self.baseline is None:
            self.baseline = reward
        adv = reward - self.baseline
        loss = -adv * logp - self.cfg.entropy_weight * ent
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        d = self.cfg.baseline_decay
        self.baseline = d * self.baseline + (1 - d) * reward

    def _rank(self) -> None:
        """Each distinct design once, ranked by its mean reward over all its evaluations.

        A design sampled again is trained again with a new seed; a child's reward varies by a few
        points between seeds, so the mean (not the luckiest run) estimates how good it is.
        """
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in self.trained_rows():
            groups.setdefault(r["actions"], []).append(r)
        board = []
        for rows in groups.values():
            rewards = [float(r["reward"]) for r in rows]
            board.append({"reward": round(sum(rewards) / len(rewards), 6), "evaluations": len(rewards),
                          "best_single": max(rewards), "index": rows[0]["index"],
                          "design": json.loads(rows[0]["design"]), "actions": json.loads(rows[0]["actions"])})
        board.sort(key=lambda e: (-e["reward"], e["index"]))
        self.leaderboard = board[: self.cfg.top_k]

    def trained_rows(self) -> list[dict[str, Any]]:
        """The rows whose design was trained (not a repeat that reused a reward)."""
        return [r for r in self.rows if not r.get("cached")]

    def done(self) -> bool:
        c = self.cfg
        return ((c.budget is not None and (len(self.trained_rows()) >= c.budget
                                           or len(self.rows) >= MAX_SAMPLES_PER_DESIGN * c.budget))
                or (c.time_limit_s is not None and self.elapsed >= c.time_limit_s)
                or (c.common_seed and len(self.rewards) >= self.space.size()))  # every design scored

    def step(self) -> dict[str, Any]:
        """Sample one design, score it, learn from it; returns its log row."""
        t0 = time.time()
        index = len(self.rows)
        actions, logp, ent = self._sample()
        key = json.dumps(actions)
        for _ in range(REDRAWS if self.cfg.common_seed else 0):
            if key not in self.rewards:
                break
            actions, logp, ent = self._sample()
            key = json.dumps(actions)
        design = self.space.decode(actions)
        cached = self.cfg.common_seed and key in self.rewards
        if cached:
            reward, error = self.rewards[key]
        else:
            seed = self.cfg.seed * 100_003 + (0 if self.cfg.common_seed else index)
            reward, error = safe_reward(self.evaluator, design, seed)
            self.rewards[key] = (reward, error)
        if logp is not None:
            self._update(reward, logp, ent)
        seconds = time.time() - t0
        self.elapsed += seconds
        row = {"index": index, "mode": "random" if self.cfg.random else "controller", "reward": round(reward, 6),
               "seconds": round(seconds, 3), "elapsed_s": round(self.elapsed, 3),
               "baseline": "" if self.baseline is None else round(self.baseline, 6),
               "log_prob": "" if logp is None else round(float(logp.detach()), 5), "error": error,
               "cached": int(cached), "design": json.dumps(design), "actions": key}
        self.rows.append(row)
        self._rank()
        self._save()
        return row

    def run(self) -> dict[str, Any]:
        """Search until the budget or the time limit; returns a summary with the best design."""
        total = self.cfg.budget
        bar = tqdm(total=total, initial=len(self.trained_rows()), desc="search " + ("random" if self.cfg.random else "rl"),
                   unit="design", disable=not self.cfg.progress, dynamic_ncols=True)
        try:
            while not self.done():
                row = self.step()
                bar.update(0 if row["cached"] else 1)
                bar.set_postfix(reward=f"{row['reward']:.4f}", best=f"{self.leaderboard[0]['reward']:.4f}")
        finally:
            bar.close()
        return self.summary()

    def summary(self) -> dict[str, Any]:
        rewards = [float(r["reward"]) for r in self.rows]  # every sample: the policy's average
        half = rewards[len(rewards) // 2:]
        best = self.leaderboard[0] if self.leaderboard else None
        return {"mode": "random" if self.cfg.random else "controller", "designs": len(self.trained_rows()),
                "samples": len(self.rows),
                "elapsed_s": round(self.elapsed, 2), "best": best,
                "time_to_best_s": float(self.rows[best["index"]]["elapsed_s"]) if best else None,
                "mean_reward": sum(rewards) / len(rewards) if rewards else None,
                "mean_reward_second_half": sum(half) / len(half) if half else None,
                "failed_designs": sum(1 for r in self.trained_rows() if r["error"]),
                "leaderboard": self.leaderboard, "config": asdict(self.cfg)}
