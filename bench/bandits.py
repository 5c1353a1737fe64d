"""Cumulative regret of bandit allocation against a uniform A/B/n split.

    .venv/bin/python bench/bandits.py [--rounds 10000] [--seeds 21]
                                      [--rates 0.04,0.05,0.06] [--period 100] [--json out.json]

Each round one user arrives, an arm is chosen and a Bernoulli reward drawn with that arm's
true rate. Regret is the expected (pseudo-)regret ``sum over rounds of (best rate - rate of
the chosen arm)``, so it measures the allocation, not the luck of the draws. Strategies:

* ``uniform``: every round picks an arm uniformly at random (a classic A/B/n test);
* ``thompson``: Beta(1, 1)-Bernoulli Thompson sampling, updated after every round;
* ``thompson-batched``: :class:`sartor.experiments.bandits.BanditPolicy` as served --
  weights recomputed once per ``--period`` rounds, users hashed into them;
* ``epsilon-greedy``: 10% uniform exploration, otherwise the best observed rate.

Every strategy runs on each of ``--seeds`` seeds; the median (min, max) regret over the
seeds is printed, and the ratio of Thompson's median regret to uniform's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sartor.experiments.bandits import (  # noqa: E402
    BanditPolicy,
    epsilon_greedy_choice,
    thompson_choice_beta,
)

Strategy = Callable[[np.ndarray, int, int], float]


def run_uniform(rates: np.ndarray, rounds: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    arms = rng.integers(0, len(rates), size=rounds)
    return float(np.sum(rates.max() - rates[arms]))


def run_thompson(rates: np.ndarray, rounds: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    successes = np.zeros(len(rates))
    trials = np.zeros(len(rates))
    regret = 0.0
    best = rates.max()
    for _ in range(rounds):
        arm = thompson_choice_beta(successes, trials, rng)
        successes[arm] += rng.random() < rates[arm]
        trials[arm] += 1
        regret += best - rates[arm]
    return regret


def run_epsilon_greedy(rates: np.ndarray, rounds: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    successes = np.zeros(len(rates))
    trials = np.zeros(len(rates))
    regret = 0.0
    best = rates.max()
    for _ in range(rounds):
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(trials > 0, successes / np.maximum(trials, 1), np.nan)
        arm = epsilon_greedy_choice(means, 0.1, rng)
        successes[arm] += rng.random() < rates[arm]
        trials[arm] += 1
        regret += best - rates[arm]
    return regret


def make_batched(period: int) -> Strategy:
    def run(rates: np.ndarray, rounds: int, seed: int) -> float:
        rng = np.random.default_rng(seed)
        policy = BanditPolicy([str(i) for i in range(len(rates))], min_samples=0,
                              random_state=seed, salt=f"bench-{seed}", draws=4000)
        regret = 0.0
        best = rates.max()
        for t in range(rounds):
            arm = policy.choose(f"user-{t}", t // period)
            policy.record(arm, float(rng.random() < rates[arm]))
            regret += best - rates[arm]
        return regret

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10_000)
    parser.add_argument("--seeds", type=int, default=21)
    parser.add_argument("--rates", default="0.04,0.05,0.06")
    parser.add_argument("--period", type=int, default=100, help="rounds per update period")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    rates = np.array([float(r) for r in args.rates.split(",")])

    strategies: dict[str, Strategy] = {
        "uniform": run_uniform,
        "thompson": run_thompson,
        f"thompson-batched(period={args.period})": make_batched(args.period),
        "epsilon-greedy(0.1)": run_epsilon_greedy,
    }
    print(f"{len(rates)} arms, rates {[float(r) for r in rates]}, {args.rounds} rounds, "
          f"{args.seeds} seeds")
    print(f"{'strategy':34} {'median regret':>14} {'min':>8} {'max':>8} {'seconds':>8}")
    results: dict[str, dict[str, float]] = {}
    for name, run in strategies.items():
        start = time.perf_counter()
        regrets = [run(rates, args.rounds, seed) for seed in range(args.seeds)]
        elapsed = time.perf_counter() - start
        med = statistics.median(regrets)
        results[name] = {"median": med, "min": min(regrets), "max": max(regrets),
                         "seconds": elapsed}
        print(f"{name:34} {med:14.1f} {min(regrets):8.1f} {max(regrets):8.1f} {elapsed:8.2f}")
    uniform = results["uniform"]["median"]
    print()
    for name in strategies:
        if name != "uniform":
            print(f"regret ratio {name} / uniform: {results[name]['median'] / uniform:.3f}")
    if args.json:
        args.json.write_text(json.dumps({"rates": [float(r) for r in rates], "rounds": args.rounds,
                                         "seeds": args.seeds, "results": results}, indent=2))


if __name__ == "__main__":
    main()
