"""``sartor.experiments.bandits`` and the server-side parts of ``assign`` that the GrowthBook
conformance file does not cover."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from sartor.experiments.assignment import InMemoryStickyBucketStore, assign
from sartor.experiments.bandits import (
    BanditPolicy,
    apply_floor,
    choose_arm,
    epsilon_greedy_weights,
    thompson_choice_beta,
    thompson_choice_gaussian,
    thompson_weights_beta,
    thompson_weights_gaussian,
)
from sartor.experiments.stats import SampleStats

# --- bandits ---------------------------------------------------------------------------


def test_thompson_weights_are_reproducible_and_favour_the_best_arm() -> None:
    w1 = thompson_weights_beta([40, 50, 60], [1000, 1000, 1000], random_state=3)
    w2 = thompson_weights_beta([40, 50, 60], [1000, 1000, 1000], random_state=3)
    assert np.array_equal(w1, w2)
    assert w1.sum() == pytest.approx(1.0)
    assert np.argmax(w1) == 2 and w1[2] > 0.8
    # with overwhelming data the best arm takes everything
    w = thompson_weights_beta([4000, 5000, 6000], [100_000] * 3, random_state=1)
    assert w[2] > 0.999


def test_thompson_beta_probability_of_best_matches_integration() -> None:
    # two arms: P(B > A) for Beta posteriors, by numerical integration
    a, b = (1 + 30, 1 + 970), (1 + 42, 1 + 958)
    xs = np.linspace(0, 0.2, 200_001)
    cdf_a = sps.beta.cdf(xs, *a)
    pdf_b = sps.beta.pdf(xs, *b)
    exact = float(np.sum(cdf_a * pdf_b) * (xs[1] - xs[0]))
    w = thompson_weights_beta([30, 42], [1000, 1000], random_state=5, draws=200_000)
    assert w[1] == pytest.approx(exact, abs=0.005)  # Monte Carlo sd ~ 0.0008


def test_thompson_gaussian() -> None:
    stats = [SampleStats.from_values(list(np.random.default_rng(i).normal(m, 1, 500)))
             for i, m in enumerate((1.0, 1.3, 0.9))]
    w = thompson_weights_gaussian(stats, random_state=2)
    assert np.argmax(w) == 1 and w[1] > 0.95
    picks = [thompson_choice_gaussian(stats, random_state=s) for s in range(200)]
    assert picks.count(1) > 180
    # an arm without data samples from the (wide) prior, so it still gets explored
    w_new = thompson_weights_gaussian([*stats, SampleStats(0, 0.0, 0.0)], random_state=2)
    assert w_new[3] > 0.3


def test_thompson_choice_beta_follows_posterior() -> None:
    picks = [thompson_choice_beta([5, 50], [100, 100], random_state=s) for s in range(100)]
    assert picks.count(1) == 100
    rng = np.random.default_rng(0)  # a shared generator advances between calls
    assert {thompson_choice_beta([1, 1], [2, 2], rng) for _ in range(50)} == {0, 1}


def test_epsilon_greedy_weights() -> None:
    w = epsilon_greedy_weights([0.1, 0.3, 0.2], 0.3)
    assert w == pytest.approx([0.1, 0.8, 0.1])
    assert epsilon_greedy_weights([0.3, 0.3, 0.1], 0.0) == pytest.approx([0.5, 0.5, 0.0])
    assert epsilon_greedy_weights([float("nan")] * 2, 0.1) == pytest.approx([0.5, 0.5])
    with pytest.raises(ValueError):
        epsilon_greedy_weights([0.1], 1.5)


def test_apply_floor() -> None:
    w = apply_floor([0.0, 0.0, 1.0], 0.1)
    assert w == pytest.approx([0.1, 0.1, 0.8])
    assert w.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        apply_floor([0.5, 0.5, 0.0], 0.4)


def test_choose_arm_is_deterministic_and_follows_weights() -> None:
    weights = [0.2, 0.5, 0.3]
    users = [f"user-{i}" for i in range(20_000)]
    arms = [choose_arm(u, 7, weights, salt="exp") for u in users]
    assert arms == [choose_arm(u, 7, weights, salt="exp") for u in users]
    counts = np.bincount(arms, minlength=3)
    assert sps.chisquare(counts, np.array(weights) * len(users)).pvalue > 0.001
    # a new period reshuffles users (independently of the previous period)
    next_period = [choose_arm(u, 8, weights, salt="exp") for u in users]
    same = np.mean(np.array(arms) == np.array(next_period))
    assert same == pytest.approx(0.2**2 + 0.5**2 + 0.3**2, abs=0.02)


def test_policy_burn_in_floor_and_period_stability() -> None:
    policy = BanditPolicy(["a", "b", "c"], min_samples=50, floor_share=0.05, random_state=9)
    assert policy.weights(0) == pytest.approx([1 / 3] * 3)  # burn-in: equal weights
    rng = np.random.default_rng(1)
    for arm, rate in enumerate((0.02, 0.05, 0.12)):
        for reward in rng.random(400) < rate:
            policy.record(arm, float(reward))
    before = {u: policy.choose(u, 1) for u in (f"u{i}" for i in range(500))}
    w1 = policy.weights(1)
    assert min(w1) >= 0.05 - 1e-12 and w1.sum() == pytest.approx(1.0)
    assert np.argmax(w1) == 2
    # new data inside the period changes nothing until the next period
    for _ in range(300):
        policy.record(0, 1.0)
    assert policy.weights(1) == pytest.approx(w1)
    assert {u: policy.choose(u, 1) for u in before} == before
    assert policy.weights(2)[0] > w1[0]
    # the same seed and data give the same weights in a fresh policy
    again = BanditPolicy(["a", "b", "c"], min_samples=50, floor_share=0.05, random_state=9)
    for arm in range(3):
        again.record_stats(arm, policy.arms[arm].stats)
    assert again.weights(2) == pytest.approx(policy.weights(2))


def test_policy_epsilon_greedy_and_gaussian() -> None:
    eg = BanditPolicy(["a", "b"], algorithm="epsilon_greedy", epsilon=0.2, min_samples=1)
    eg.record(0, 1.0)
    eg.record(1, 0.0)
    assert eg.weights(0) == pytest.approx([0.9, 0.1])
    g = BanditPolicy(["a", "b"], reward="gaussian", min_samples=10, random_state=4)
    for v in np.random.default_rng(3).normal(5, 1, 200):
        g.record(0, float(v))
    for v in np.random.default_rng(4).normal(6, 1, 200):
        g.record(1, float(v))
    assert g.weights(0)[1] > 0.99
    with pytest.raises(ValueError):
        BanditPolicy(["only"])


# --- assignment beyond the conformance file --------------------------------------------


def test_overrides_groups_and_url_targeting() -> None:
    exp = {"key": "exp", "variations": ["a", "b"]}
    attrs = {"id": "1"}
    base = assign(exp, attrs)
    assert base.in_experiment and base.reason == "assigned"
    assert not assign(exp, attrs, overrides={"exp": {"coverage": 0.0}}).in_experiment
    grouped = {**exp, "groups": ["beta"]}
    assert assign(grouped, attrs, groups={"beta": True}).in_experiment
    assert assign(grouped, attrs).reason == "not_in_group"
    # URL targeting cannot be evaluated server-side: fail closed
    assert assign({**exp, "urlPatterns": [{"pattern": "/x"}]}, attrs).reason == \
        "url_targeting_not_supported"
    assert assign({**exp, "parentConditions": [{"id": "f", "condition": {"value": True}}]},
                  attrs).reason == "prerequisite_unavailable"
    assert assign({**exp, "hashVersion": 3}, attrs).reason == "unknown_hash_version"


def test_sticky_bucketing_keeps_assignment_when_weights_change() -> None:
    store = InMemoryStickyBucketStore()
    exp = {"key": "sticky", "variations": ["a", "b"], "weights": [0.5, 0.5]}
    users = [f"u{i}" for i in range(300)]
    first = {u: assign(exp, {"id": u}, sticky_store=store).variation_id for u in users}
    # re-weighting moves unsticky users; sticky ones stay (no meta: keys are indexes)
    moved = {**exp, "weights": [0.1, 0.9]}
    without = {u: assign(moved, {"id": u}).variation_id for u in users}
    assert without != first
    with_store = {u: assign(moved, {"id": u}, sticky_store=store) for u in users}
    assert {u: r.variation_id for u, r in with_store.items()} == first
    assert all(r.sticky_bucket_used and r.reason == "sticky_bucket" for r in with_store.values())
    # fallback attribute: anonymous first, remembered after login via the fallback doc
    anon = assign({**exp, "fallbackAttribute": "anonId"}, {"anonId": "device-9"},
                  sticky_store=store)
    assert anon.hash_attribute == "anonId" and anon.in_experiment
    logged = assign({**exp, "fallbackAttribute": "anonId", "weights": [0.01, 0.99]},
                    {"id": "new-user", "anonId": "device-9"}, sticky_store=store)
    assert logged.variation_id == anon.variation_id and logged.sticky_bucket_used
    assert store.get("id", "new-user") == {"sticky__0": str(anon.variation_id)}
