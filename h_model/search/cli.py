"""The command-line interface the three search scripts share.

Common flags: ``--budget N`` designs, ``--out DIR``, ``--seed``, ``--device``, ``--resume``,
``--random`` (uniformly random designs, the baseline) and ``--compare-random`` (the controller
and the random baseline with the same budget, in ``DIR/controller`` and ``DIR/random``).
``DIR/results.json`` holds ``best`` (design, reward, how to rebuild it) and each run's summary;
with ``--compare-random`` (or ``--rescore``), each search's top designs are re-scored with fresh
seeds, and the better re-scored mean decides whether the controller beat random search.
``--common-seed`` trains every child of a search from one seed (common random numbers).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Callable

from ..checkpoint import write_json
from ..cli import run_main
from ..data import ImageSet
from ..learner import pick_device
from .reinforce import ChoiceSpace, Evaluator, Reinforce, ReinforceConfig, safe_reward
from .task import ChildConfig, FewShotTask, omniglot_task

log = logging.getLogger("h_model.search")
RESCORE_SEED = 900_001  # seeds of the re-scoring runs, apart from the search's own


def positive_int(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


def common_parser(description: str, budget: int, steps: int, out: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=positive_int, default=budget, help="number of sampled designs (default %(default)s)")
    ap.add_argument("--time-limit-min", type=float, default=28.0,
                    help="also stop after this many minutes of search (default %(default)s; 0: no limit)")
    ap.add_argument("--out", default=out, help="output folder (default %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--resume", action="store_true", help="continue the search saved in --out")
    ap.add_argument("--random", action="store_true", help="uniformly random designs (the baseline), no controller")
    ap.add_argument("--compare-random", action="store_true",
                    help="run the controller and the random baseline with the same budget, and compare")
    ap.add_argument("--rescore", action="store_true",
                    help="re-score the top designs with fresh seeds (always done with --compare-random)")
    ap.add_argument("--rescore-top", type=positive_int, default=3,
                    help="re-score each search's top designs (default %(default)s) ...")
    ap.add_argument("--rescore-seeds", type=positive_int, default=3, help="... with this many fresh seeds each")
    ap.add_argument("--data-root", default=None, help="data folder (default: $H_DATA_ROOT)")
    ap.add_argument("--background-file", default=None,
                    help="Omniglot's decoded background characters saved by ImageSet.save, in place of the "
                         "data folder (benchmarks/search_seeds.py --export-background writes one)")
    ap.add_argument("--steps", type=int, default=steps, help="training episodes per child (default %(default)s)")
    ap.add_argument("--val-classes", type=int, default=60, help="validation classes that score a child")
    ap.add_argument("--val-episodes", type=int, default=200, help="validation episodes that score a child")
    ap.add_argument("--common-seed", action="store_true",
                    help="train every child from the same seed, so designs differ by design and not by seed "
                         "luck; each design is then trained once (a design already scored is drawn again)")
    ap.add_argument("--controller-lr", type=float, default=0.02)
    ap.add_argument("--entropy-weight", type=float, default=1e-3)
    ap.add_argument("--baseline-decay", type=float, default=0.8)
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


def exit_code(search: Callable[[], int]) -> int:
    """A search script's exit code: 2 for missing data, 130 (saying how to continue) on Ctrl-C."""
    return run_main(search, interrupted="interrupted; continue with --resume")


def search_main(a: argparse.Namespace, space: ChoiceSpace, make_evaluator: Callable[[FewShotTask], Evaluator],
                rebuild: Callable[[Any], dict[str, Any]], describe: Callable[[Any], str], what: str) -> int:
    """A search script's whole run: the search the flags ask for, its summary and the best design
    (``best {what}: {describe(design)}``); the exit code of :func:`exit_code`."""
    def search() -> int:
        task = make_task(a)
        results = run_search(space, lambda: make_evaluator(task), a, rebuild)
        print_summary(results)
        print(f"best {what}:", describe(results["best"]["design"]))
        return 0
    return exit_code(search)


def make_task(a: argparse.Namespace) -> FewShotTask:
    """The Omniglot child task the flags describe."""
    cfg = ChildConfig(steps=a.steps, val_episodes=a.val_episodes)
    background = ImageSet.load(a.background_file) if a.background_file else None
    return omniglot_task(a.data_root, cfg, val_classes=a.val_classes, seed=a.seed, device=pick_device(a.device),
                         background=background)


def reinforce_config(a: argparse.Namespace, out: Path, random: bool) -> ReinforceConfig:
    return ReinforceConfig(budget=a.budget, time_limit_s=60 * a.time_limit_min if a.time_limit_min else None,
                           lr=a.controller_lr, baseline_decay=a.baseline_decay, entropy_weight=a.entropy_weight,
                           random=random, common_seed=a.common_seed, seed=a.seed, out=str(out), resume=a.resume,
                           progress=not a.no_progress)


def run_search(space: ChoiceSpace, make_evaluator: Callable[[], Evaluator], a: argparse.Namespace,
               rebuild: Callable[[Any], dict[str, Any]], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the search(es) the flags ask for and write ``--out/results.json``; returns it."""
    out = Path(a.out)
    modes = ["controller", "random"] if a.compare_random else ["random" if a.random else "controller"]
    runs: dict[str, dict[str, Any]] = {}
    evaluators: dict[str, Evaluator] = {}
    for mode in modes:
        run_out = out / mode if a.compare_random else out
        log.info("%s search of %d designs (space of %.3g) into %s", mode, a.budget, space.size(), run_out)
        evaluators[mode] = make_evaluator()
        runs[mode] = Reinforce(space, evaluators[mode], reinforce_config(a, run_out, mode == "random")).run()
    best_mode = max(runs, key=lambda m: runs[m]["best"]["reward"] if runs[m]["best"] else -1.0)
    best = runs[best_mode]["best"]
    results: dict[str, Any] = {
        "best": None if best is None else {**best, "mode": best_mode, "rebuild": rebuild(best["design"])},
        "runs": runs, "space_size": space.size(), "settings": vars(a), **(extra or {})}
    if a.compare_random or a.rescore:
        rescored = {m: rescore(runs[m]["leaderboard"], evaluators[m], a.rescore_top, a.rescore_seeds) for m in modes}
        results["rescored_top"] = rescored
        results["best_rescored_mean"] = {m: max(v["mean"] for v in rescored[m]) for m in modes}
    if a.compare_random:
        c, r = runs["controller"], runs["random"]
        top = results["best_rescored_mean"]
        results["comparison"] = {
            "budget": a.budget,
            "best_reward": {"controller": c["best"]["reward"], "random": r["best"]["reward"]},
            "mean_reward_second_half": {"controller": c["mean_reward_second_half"], "random": r["mean_reward_second_half"]},
            "rescored_top": rescored, "best_rescored_mean": top,
            "controller_beats_random": top["controller"] > top["random"]}
    write_json(out / "results.json", results)
    return results


def rescore(leaderboard: list[dict[str, Any]], evaluator: Evaluator, top: int, seeds: int) -> list[dict[str, Any]]:
    """The ``top`` designs of a leaderboard scored again with ``seeds`` fresh seeds: one lucky
    training run must not decide which search found the better design."""
    out = []
    for entry in leaderboard[:top]:
        rewards = [safe_reward(evaluator, entry["design"], RESCORE_SEED + i)[0] for i in range(seeds)]
        out.append({"design": entry["design"], "search_reward": entry["reward"], "rewards": rewards,
                    "mean": sum(rewards) / len(rewards)})
    return out


def print_summary(results: dict[str, Any]) -> None:
    for mode, r in results["runs"].items():
        b = r["best"]
        repeats = r.get("samples", r["designs"]) - r["designs"]
        extra = f" (+{repeats} repeats that reused a reward)" if repeats else ""
        print(f"{mode}: {r['designs']} designs{extra} in {r['elapsed_s']:.0f} s, best reward {b['reward']:.4f} "
              f"(design #{b['index']}), mean {r['mean_reward']:.4f}, second half {r['mean_reward_second_half']:.4f}")
    if results.get("best"):
        print("best design:", results["best"]["design"])
    comp = results.get("comparison")
    if not comp and results.get("best_rescored_mean"):
        for mode, m in results["best_rescored_mean"].items():
            print(f"{mode}: top designs re-scored with fresh seeds, best mean {m:.4f}")
    if comp:
        m = comp["best_rescored_mean"]
        print(f"top designs re-scored with fresh seeds: controller {m['controller']:.4f}, random {m['random']:.4f} "
              f"-> the controller {'beats' if comp['controller_beats_random'] else 'does not beat'} random search")
