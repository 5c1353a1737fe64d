"""Multi-armed bandits: Thompson sampling (Beta-Bernoulli and Gaussian) and epsilon-greedy.

Two ways to use them:

* **Per decision** -- :func:`thompson_choice_beta` / :func:`thompson_choice_gaussian` draw
  one sample from every arm's posterior and return the best arm (simulations, offline
  replay).
* **Per update period** (serving) -- a :class:`BanditPolicy` turns the arms' statistics
  into traffic weights once per period (the Thompson weight of an arm is the posterior
  probability that it is the best, estimated from ``draws`` joint posterior samples), then
  assigns each user by hashing ``user + period`` into those weights. Decisions are
  therefore deterministic for a user within a period and need no stored state; the
  weights change only when a new period starts. Before every arm has ``min_samples``
  observations the weights are equal (burn-in), and every arm keeps at least
  ``floor_share`` of the traffic so a temporarily unlucky arm can recover.

Randomness always comes from a ``random_state`` (an int seed, a
:class:`numpy.random.Generator`, or ``None`` for fresh entropy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from sartor.experiments.assignment import choose_variation, fnv1a32, hash
from sartor.experiments.stats import SampleStats

__all__ = [
    "Arm",
    "BanditPolicy",
    "Numbers",
    "RandomState",
    "apply_floor",
    "choose_arm",
    "epsilon_greedy_choice",
    "epsilon_greedy_weights",
    "thompson_choice_beta",
    "thompson_choice_gaussian",
    "thompson_weights_beta",
    "thompson_weights_gaussian",
]

RandomState = int | np.random.Generator | None
Numbers = Sequence[float] | np.ndarray
Algorithm = Literal["thompson", "epsilon_greedy"]
Reward = Literal["bernoulli", "gaussian"]
_PERIODS_KEPT = 8


def _rng(random_state: RandomState) -> np.random.Generator:
    if isinstance(random_state, np.random.Generator):
        return random_state
    return np.random.default_rng(random_state)


# --- posteriors ------------------------------------------------------------------------


def _beta_params(
    successes: Numbers, trials: Numbers, prior_alpha: float, prior_beta: float
) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(successes, dtype=float)
    t = np.asarray(trials, dtype=float)
    if np.any(s < 0) or np.any(t < s):
        raise ValueError("need 0 <= successes <= trials")
    return s + prior_alpha, t - s + prior_beta


def _gaussian_params(
    stats: Sequence[SampleStats], prior_mean: float, prior_variance: float
) -> tuple[np.ndarray, np.ndarray]:
    """Normal posterior of each arm's mean: the sample mean with variance ``s^2 / n``
    combined with a normal prior (conjugate, plug-in variance); the prior alone for arms
    with fewer than two observations."""
    means, sds = [], []
    for st in stats:
        if st.n < 2:
            means.append(prior_mean)
            sds.append(math.sqrt(prior_variance))
            continue
        data_var = max(st.variance, 1e-12) / st.n
        precision = 1 / data_var + 1 / prior_variance
        means.append((st.mean / data_var + prior_mean / prior_variance) / precision)
        sds.append(math.sqrt(1 / precision))
    return np.asarray(means), np.asarray(sds)


def _best_share(samples: np.ndarray) -> np.ndarray:
    """Share of rows (joint posterior draws) in which each column is the largest."""
    k = samples.shape[1]
    counts = np.bincount(np.argmax(samples, axis=1), minlength=k).astype(float)
    return counts / samples.shape[0]


def thompson_choice_beta(
    successes: Numbers,
    trials: Numbers,
    random_state: RandomState = None,
    *,
    prior_alpha: float = 1.0,
    prior_beta: float = 1.0,
) -> int:
    """One Thompson decision for Bernoulli rewards: argmax of one Beta posterior draw each."""
    a, b = _beta_params(successes, trials, prior_alpha, prior_beta)
    return int(np.argmax(_rng(random_state).beta(a, b)))


def thompson_weights_beta(
    successes: Numbers,
    trials: Numbers,
    random_state: RandomState = None,
    *,
    draws: int = 10_000,
    prior_alpha: float = 1.0,
    prior_beta: float = 1.0,
) -> np.ndarray:
    """Posterior probability that each arm has the highest rate (Monte Carlo)."""
    a, b = _beta_params(successes, trials, prior_alpha, prior_beta)
    samples = _rng(random_state).beta(a, b, size=(draws, len(a)))
    return _best_share(samples)


def thompson_choice_gaussian(
    stats: Sequence[SampleStats],
    random_state: RandomState = None,
    *,
    prior_mean: float = 0.0,
    prior_variance: float = 1e6,
) -> int:
    """One Thompson decision for real-valued rewards (normal posterior on each mean)."""
    m, s = _gaussian_params(stats, prior_mean, prior_variance)
    return int(np.argmax(_rng(random_state).normal(m, s)))


def thompson_weights_gaussian(
    stats: Sequence[SampleStats],
    random_state: RandomState = None,
    *,
    draws: int = 10_000,
    prior_mean: float = 0.0,
    prior_variance: float = 1e6,
) -> np.ndarray:
    """Posterior probability that each arm has the highest mean (Monte Carlo)."""
    m, s = _gaussian_params(stats, prior_mean, prior_variance)
    samples = _rng(random_state).normal(m, s, size=(draws, len(m)))
    return _best_share(samples)


# --- epsilon-greedy --------------------------------------------------------------------


def epsilon_greedy_weights(means: Numbers, epsilon: float) -> np.ndarray:
    """``epsilon`` of the traffic spread evenly, the rest to the best mean (split on ties;
    arms without data, NaN means, are never "best")."""
    if not 0 <= epsilon <= 1:
        raise ValueError("epsilon must be in [0, 1]")
    mu = np.asarray(means, dtype=float)
    k = len(mu)
    weights = np.full(k, epsilon / k)
    finite = np.where(np.isnan(mu), -np.inf, mu)
    if np.all(np.isneginf(finite)):
        return np.full(k, 1.0 / k)
    best = np.flatnonzero(finite == finite.max())
    weights[best] += (1 - epsilon) / len(best)
    return weights


def epsilon_greedy_choice(means: Numbers, epsilon: float, random_state: RandomState = None) -> int:
    """One epsilon-greedy decision."""
    rng = _rng(random_state)
    weights = epsilon_greedy_weights(means, epsilon)
    return int(rng.choice(len(weights), p=weights))


# --- allocation and per-user decisions --------------------------------------------------


def apply_floor(weights: Numbers, floor: float) -> np.ndarray:
    """Give every arm at least ``floor``: ``floor + (1 - k floor) * w`` (weights normalised
    first). ``k * floor`` must not exceed 1."""
    w = np.asarray(weights, dtype=float)
    k = len(w)
    if floor < 0 or k * floor > 1 + 1e-12:
        raise ValueError("floor share must be in [0, 1/k]")
    total = w.sum()
    w = w / total if total > 0 else np.full(k, 1.0 / k)
    return floor + (1 - k * floor) * w


def choose_arm(user_id: str, period: int | str, weights: Numbers, salt: str = "") -> int:
    """Deterministic arm for ``user_id`` in ``period``: the user's hash of ``user + period``
    (GrowthBook hash version 2, seed ``salt``) placed in the cumulative ``weights``."""
    n = hash(salt, f"{user_id}|{period}", 2) or 0.0  # version 2 always hashes
    ranges: list[tuple[float, float]] = []
    start = 0.0
    total = float(sum(weights))
    for w in weights:
        ranges.append((start, start + w / total))
        start += w / total
    arm = choose_variation(n, ranges)
    # rounding can leave the very top of [0, 1) uncovered: that is the last arm
    return arm if arm >= 0 else len(ranges) - 1


@dataclass
class Arm:
    """One arm's running statistics (rewards are 0/1 for Bernoulli bandits)."""

    name: str
    stats: SampleStats = field(default_factory=lambda: SampleStats(0, 0.0, 0.0))

    def add(self, reward: float) -> None:
        self.stats = self.stats + SampleStats(1, float(reward), float(reward) ** 2)


@dataclass
class BanditPolicy:
    """A bandit serving traffic in update periods (see the module docstring).

    ``weights(period)`` is computed once per period from the statistics at that moment and
    cached, so every decision in the period uses the same weights whatever is recorded
    meanwhile; :meth:`choose` then hashes the user into them.
    """

    arm_names: Sequence[str]
    algorithm: Algorithm = "thompson"
    reward: Reward = "bernoulli"
    epsilon: float = 0.1
    min_samples: int = 100
    floor_share: float = 0.0
    draws: int = 10_000
    random_state: int | None = None
    salt: str = ""
    arms: list[Arm] = field(init=False)
    _cache: dict[str, np.ndarray] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.arm_names) < 2:
            raise ValueError("a bandit needs at least two arms")
        self.arms = [Arm(name) for name in self.arm_names]
        apply_floor([1.0] * len(self.arm_names), self.floor_share)  # validates the floor

    def record(self, arm: int, reward: float) -> None:
        self.arms[arm].add(reward)

    def record_stats(self, arm: int, stats: SampleStats) -> None:
        """Add a batch of observations (for example, one period's rewards from the log)."""
        self.arms[arm].stats = self.arms[arm].stats + stats

    def _period_rng(self, period: int | str) -> np.random.Generator:
        entropy = [fnv1a32(f"{self.salt}|{period}")]
        if self.random_state is not None:
            entropy.append(self.random_state)
        return np.random.default_rng(entropy)

    def compute_weights(self, period: int | str) -> np.ndarray:
        """Traffic weights from the current statistics (not cached)."""
        k = len(self.arms)
        stats = [a.stats for a in self.arms]
        if min(s.n for s in stats) < self.min_samples:
            raw = np.full(k, 1.0 / k)
        elif self.algorithm == "epsilon_greedy":
            raw = epsilon_greedy_weights([s.mean for s in stats], self.epsilon)
        elif self.reward == "bernoulli":
            raw = thompson_weights_beta(
                [s.sum for s in stats],
                [s.n for s in stats],
                self._period_rng(period),
                draws=self.draws,
            )
        else:
            raw = thompson_weights_gaussian(stats, self._period_rng(period), draws=self.draws)
        return apply_floor(raw, self.floor_share)

    def weights(self, period: int | str) -> np.ndarray:
        key = str(period)
        if key not in self._cache:
            if len(self._cache) >= _PERIODS_KEPT:  # forget the oldest period
                del self._cache[next(iter(self._cache))]
            self._cache[key] = self.compute_weights(period)
        return self._cache[key].copy()

    def choose(self, user_id: str, period: int | str) -> int:
        """The user's arm in this period (same answer on every call within the period)."""
        return choose_arm(user_id, period, list(self.weights(period)), self.salt)
