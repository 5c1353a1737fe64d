"""``sartor.experiments.stats`` against independent references.

* Property tests (Hypothesis, derandomized): Welch p-value, degrees of freedom and interval
  against ``scipy.stats.ttest_ind``; the delta-method relative interval, the ratio-metric
  variance, Bayesian chance to win and expected loss, SRM and the Holm / BH corrections
  against computations written here with numpy / scipy, to 1e-6.
* Hand-worked examples (worked in the comments) for CUPED and sequential testing.
* Seeded simulations: A/A false-positive rate, A/B power against the analytic power, a
  10% traffic skew tripping SRM, and peeking with and without sequential testing.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import integrate
from scipy import stats as sps

from sartor.experiments.stats import (
    BivariateStats,
    SampleStats,
    SequentialSettings,
    Summary,
    analyze,
    benjamini_hochberg,
    compare,
    cuped_adjust,
    holm,
    sequential_halfwidth,
    sequential_p_value,
    sequential_rho,
    srm_test,
    summarize,
    summarize_ratio,
    verdict,
)

TOL = 1e-6
PROPERTY = settings(derandomize=True, max_examples=150, deadline=None, database=None)

values = st.lists(
    st.floats(-100, 100, allow_nan=False, allow_infinity=False), min_size=2, max_size=40
)


def close(x: float, ref: float, tol: float = TOL) -> bool:
    return math.isclose(x, ref, rel_tol=1e-9, abs_tol=tol)


def _summary(xs: list[float]) -> Summary:
    return summarize(SampleStats.from_values(xs))


# --- sufficient statistics -------------------------------------------------------------


@PROPERTY
@given(values, values)
def test_sample_stats_add_and_moments(a: list[float], b: list[float]) -> None:
    combined = SampleStats.from_values(a) + SampleStats.from_values(b)
    both = np.array(a + b)
    assert combined.n == len(both)
    assert close(combined.mean, float(both.mean()))
    assert close(combined.variance, float(both.var(ddof=1)), 1e-6 * max(1.0, both.var()))


@PROPERTY
@given(st.lists(st.tuples(st.floats(0.5, 20), st.floats(-50, 50)), min_size=3, max_size=40))
def test_ratio_variance_matches_delta_method_reference(pairs: list[tuple[float, float]]) -> None:
    x = np.array([p[0] for p in pairs])  # denominator per unit
    y = np.array([p[1] for p in pairs])  # numerator per unit
    s = BivariateStats.from_values(list(x), list(y))
    n = len(x)
    # reference: gradient of my/mx at the means, times the covariance of the means
    mx, my = x.mean(), y.mean()
    grad = np.array([1 / mx, -my / mx**2])
    cov_means = np.cov(np.vstack([y, x]), ddof=1) / n
    assert close(s.ratio, float(y.sum() / x.sum()))
    assert close(s.ratio_variance, float(grad @ cov_means @ grad), 1e-9)
    assert close(summarize_ratio(s).var_mean, s.ratio_variance, 1e-12)


# --- frequentist -----------------------------------------------------------------------


@PROPERTY
@given(values, values)
def test_welch_matches_scipy(a: list[float], b: list[float]) -> None:
    assume(np.var(a, ddof=1) > 1e-2 and np.var(b, ddof=1) > 1e-2)
    ref = sps.ttest_ind(a, b, equal_var=False)
    ci = ref.confidence_interval(0.95)
    # treatment a vs control b: absolute = mean(a) - mean(b), as scipy's statistic
    c = compare(_summary(b), _summary(a), difference_type="absolute")
    assert close(c.df, float(ref.df), 1e-6 * max(1.0, float(ref.df)))
    assert close(c.absolute.p_value, float(ref.pvalue))
    assert close(c.absolute.lower, float(ci.low))
    assert close(c.absolute.upper, float(ci.high))
    assert close(c.absolute.estimate, float(np.mean(a)) - float(np.mean(b)))


@PROPERTY
@given(values, values)
def test_relative_interval_matches_delta_method_reference(a: list[float],
                                                          b: list[float]) -> None:
    assume(np.var(a, ddof=1) > 1e-2 and np.var(b, ddof=1) > 1e-2)
    assume(abs(np.mean(b)) > 1.0)
    mc, mt = float(np.mean(b)), float(np.mean(a))
    vc, vt = float(np.var(b, ddof=1)) / len(b), float(np.var(a, ddof=1)) / len(a)
    rel = mt / mc - 1
    se = math.sqrt(vt / mc**2 + mt**2 * vc / mc**4)
    df = float(sps.ttest_ind(a, b, equal_var=False).df)
    t = sps.t.ppf(0.975, df)
    c = compare(_summary(b), _summary(a), difference_type="relative")
    assert close(c.relative.estimate, rel)
    assert close(c.relative.se, se)
    assert close(c.relative.lower, rel - t * se)
    assert close(c.relative.upper, rel + t * se)
    assert close(c.relative.p_value, float(2 * sps.t.sf(abs(rel / se), df)))


# --- Bayesian --------------------------------------------------------------------------


@PROPERTY
@given(values, values, st.sampled_from(["absolute", "relative"]))
def test_bayesian_matches_normal_posterior_reference(a: list[float], b: list[float],
                                                     kind: str) -> None:
    assume(np.var(a, ddof=1) > 1e-2 and np.var(b, ddof=1) > 1e-2)
    assume(abs(np.mean(b)) > 1.0)
    c = compare(_summary(b), _summary(a), difference_type=kind)  # type: ignore[arg-type]
    mc, mt = float(np.mean(b)), float(np.mean(a))
    vc, vt = float(np.var(b, ddof=1)) / len(b), float(np.var(a, ddof=1)) / len(a)
    if kind == "absolute":
        loc, scale = mt - mc, math.sqrt(vc + vt)
    else:
        loc, scale = mt / mc - 1, math.sqrt(vt / mc**2 + mt**2 * vc / mc**4)
    assert close(c.chance_to_win, float(sps.norm(loc=loc, scale=scale).sf(0.0)))

    def pdf(d: float) -> float:
        return math.exp(-0.5 * ((d - loc) / scale) ** 2) / (scale * math.sqrt(2 * math.pi))

    # expected loss of shipping B: integral of max(0, -d) over the posterior (and of
    # max(0, d) for keeping A), by quadrature over +-40 posterior sds
    lo, hi = loc - 40 * scale, loc + 40 * scale
    loss_b = integrate.quad(lambda d: -d * pdf(d), lo, 0.0, epsabs=1e-13, limit=200)[0] \
        if lo < 0 else 0.0
    loss_a = integrate.quad(lambda d: d * pdf(d), 0.0, hi, epsabs=1e-13, limit=200)[0] \
        if hi > 0 else 0.0
    assert close(c.expected_loss, loss_b)
    assert close(c.expected_loss_control, loss_a)


def test_bayesian_prior_shrinks_toward_prior_mean() -> None:
    from sartor.experiments.stats import NormalPrior

    # Posterior of a normal prior N(0, 0.01) and an estimate 0.2 with se 0.1 (variance 0.01):
    # precisions add (100 + 100 = 200), mean = (0.2 * 100 + 0 * 100) / 200 = 0.1,
    # sd = sqrt(1 / 200); chance to win = Phi(0.1 * sqrt(200)) = Phi(1.41421).
    control = Summary(n=100, mean=1.0, variance=0.5)
    treatment = Summary(n=100, mean=1.2, variance=0.5)  # se of diff = sqrt(0.01) = 0.1
    c = compare(control, treatment, difference_type="absolute",
                prior=NormalPrior(mean=0.0, variance=0.01))
    assert close(c.chance_to_win, float(sps.norm.cdf(0.1 * math.sqrt(200))), 1e-9)


# --- SRM -------------------------------------------------------------------------------


@PROPERTY
@given(
    st.lists(st.integers(0, 1_000_000), min_size=2, max_size=6),
    st.lists(st.floats(0.05, 1.0), min_size=6, max_size=6),
)
def test_srm_matches_scipy_chisquare(counts: list[int], raw_weights: list[float]) -> None:
    assume(sum(counts) > 0)
    weights = raw_weights[: len(counts)]
    expected = np.array(weights) / sum(weights) * sum(counts)
    ref = sps.chisquare(counts, f_exp=expected)
    res = srm_test(counts, weights)
    assert close(res.chi2, float(ref.statistic), 1e-6 * max(1.0, float(ref.statistic)))
    assert close(res.p_value, float(ref.pvalue))
    assert res.flagged is bool(ref.pvalue < 0.001)


# --- multiple comparisons --------------------------------------------------------------


def _holm_reference(p: np.ndarray) -> np.ndarray:
    m = len(p)
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.maximum.accumulate(scaled)
    return out


def _bh_reference(p: np.ndarray) -> np.ndarray:
    m = len(p)
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, m * p[order] / np.arange(1, m + 1))
    out = np.empty(m)
    out[order] = np.minimum.accumulate(scaled[::-1])[::-1]
    return out


@PROPERTY
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=20))
def test_holm_and_bh_match_reference(p: list[float]) -> None:
    arr = np.array(p)
    assert np.allclose(holm(p), _holm_reference(arr), rtol=0, atol=1e-12)
    assert np.allclose(benjamini_hochberg(p), _bh_reference(arr), rtol=0, atol=1e-12)


def test_holm_and_bh_small_example() -> None:
    # p = (0.01, 0.04, 0.03, 0.005), m = 4; sorted: 0.005, 0.01, 0.03, 0.04
    # Holm: 4*0.005=0.02, 3*0.01=0.03, 2*0.03=0.06, max(0.06, 1*0.04)=0.06
    # BH:   0.005*4/1=0.02, 0.01*4/2=0.02, 0.03*4/3=0.04, 0.04*4/4=0.04 (then running mins)
    p = [0.01, 0.04, 0.03, 0.005]
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert benjamini_hochberg(p) == pytest.approx([0.02, 0.04, 0.04, 0.02])


def test_analyze_applies_correction() -> None:
    control = Summary(2000, 0.10, 0.09)
    arms = [control, Summary(2000, 0.115, 0.1), Summary(2000, 0.101, 0.09),
            Summary(2000, 0.12, 0.105)]
    raw = analyze(arms)
    adjusted = analyze(arms, correction="holm")
    expected = holm([r.relative.p_value for r in raw])
    assert [r.p_value for r in adjusted] == pytest.approx(expected)
    assert all(a.p_value >= r.p_value for a, r in zip(adjusted, raw, strict=True))


# --- CUPED: hand-worked ----------------------------------------------------------------


def test_cuped_hand_worked_example() -> None:
    # (x = pre-period metric, y = in-experiment metric) per user
    # control:   (1, 2), (2, 3), (3, 5)        treatment: (2, 4), (3, 5), (4, 7)
    #
    # Pooled: mean x = 15/6 = 2.5, mean y = 26/6 = 13/3.
    #   x - 2.5  : -1.5 -0.5  0.5 | -0.5  0.5  1.5
    #   y - 13/3 : -7/3 -4/3  2/3 | -1/3  2/3  8/3
    #   sum of products = 3.5 + 2/3 + 1/3 + 1/6 + 1/3 + 4 = 9
    #   sum of squares of x deviations = 2.25 + .25 + .25 + .25 + .25 + 2.25 = 5.5
    #   theta = cov/var = (9/5) / (5.5/5) = 9 / 5.5 = 18/11
    # Control: mean y = 10/3, mean x = 2 -> adjusted 10/3 - 18/11 * (2 - 2.5) = 137/33
    #   var y = ((4/3)^2 + (1/3)^2 + (5/3)^2) / 2 = 7/3, var x = 1, cov = (4/3 + 5/3)/2 = 3/2
    #   adjusted variance = 7/3 + (18/11)^2 * 1 - 2 * 18/11 * 3/2
    #                     = 7/3 + 324/121 - 594/121 = 7/3 - 270/121 = 37/363
    # Treatment: mean y = 16/3, mean x = 3 -> adjusted 16/3 - 18/11 * 0.5 = 149/33,
    #   same spreads (var y = 7/3, var x = 1, cov = 3/2) -> adjusted variance 37/363.
    # Difference of adjusted means = 12/33 = 4/11 (raw difference: 2, inflated by the
    # treatment group's higher pre-period values); variance reduction 1 - (37/363)/(7/3).
    control = BivariateStats.from_values([1, 2, 3], [2, 3, 5])
    treatment = BivariateStats.from_values([2, 3, 4], [4, 5, 7])
    adj = cuped_adjust([control, treatment])
    assert adj.theta == pytest.approx(18 / 11)
    c_sum, t_sum = adj.summaries
    assert c_sum.mean == pytest.approx(137 / 33)
    assert t_sum.mean == pytest.approx(149 / 33)
    assert c_sum.variance == pytest.approx(37 / 363)
    assert t_sum.variance == pytest.approx(37 / 363)
    assert adj.variance_reduction[0] == pytest.approx(1 - (37 / 363) / (7 / 3))
    comp = compare(c_sum, t_sum, difference_type="absolute")
    assert comp.absolute.estimate == pytest.approx(4 / 11)
    assert comp.absolute.se == pytest.approx(math.sqrt(2 * (37 / 363) / 3))


def test_cuped_reduces_variance_on_correlated_data() -> None:
    rng = np.random.default_rng(7)
    stats = []
    for lift in (0.0, 0.3):
        x = rng.normal(10, 2, 4000)
        y = 0.8 * x + rng.normal(lift, 1, 4000)
        stats.append(BivariateStats.from_values(list(x), list(y)))
    adj = cuped_adjust(stats)
    raw = compare(Summary(stats[0].n, stats[0].mean_y, stats[0].var_y),
                  Summary(stats[1].n, stats[1].mean_y, stats[1].var_y), difference_type="absolute")
    cup = compare(*adj.summaries, difference_type="absolute")
    # corr(x, y)^2 = 0.64*4 / (0.64*4 + 1) ~ 0.72 of the variance is explained
    assert cup.absolute.se < 0.6 * raw.absolute.se
    assert abs(cup.absolute.estimate - 0.3) < 4 * cup.absolute.se


# --- sequential: hand-worked -----------------------------------------------------------


def test_sequential_hand_worked_example() -> None:
    # alpha = 0.05, tuning N* = 5000; two arms of 2500 units with variance 1, means 0 and 0.1.
    # rho^2 = (-2 ln 0.05 + ln(1 - 2 ln 0.05)) / 5000
    #       = (5.991465 + ln 6.991465) / 5000 = (5.991465 + 1.944690) / 5000 = 0.00158723
    # se^2 of the difference = 1/2500 + 1/2500 = 8e-4; N = 5000 units in total;
    # per-unit variance sigma^2 = se^2 * N = 4, sigma = 2.
    # N rho^2 + 1 = 8.936155
    # (N rho^2 + 1) / (N^2 rho^2) = 8.936155 / (25e6 * 0.00158723) = 2.252011e-4
    # ln((N rho^2 + 1) / alpha^2) = ln(8.936155 / 0.0025) = ln(3574.462) = 8.181570
    # half-width = 2 * sqrt(2.252011e-4 * 8.181570) = 2 * sqrt(1.842499e-3) = 0.0858487
    # -> always-valid interval 0.1 +- 0.0858487 = [0.0141513, 0.1858487]
    #    (the fixed-horizon one is 0.1 +- 1.96 * 0.0282843 = 0.1 +- 0.0554)
    # p-value: z = 0.1 / 0.0282843 = 3.535534;
    #   ln p = 0.5 ln 8.936155 - 0.5 z^2 * 7.936155 / 8.936155
    #        = 1.095053 - 6.25 * 0.888095 = 1.095053 - 5.550594 = -4.455541 -> p = 0.011614
    assert sequential_rho(0.05, 5000) ** 2 == pytest.approx(0.00158723, rel=1e-5)
    assert sequential_halfwidth(4.0, 5000, 0.05, 5000) == pytest.approx(0.0858487, rel=1e-5)
    control = Summary(2500, 0.0, 1.0)
    treatment = Summary(2500, 0.1, 1.0)
    c = compare(control, treatment, difference_type="absolute", sequential=SequentialSettings())
    assert c.absolute.lower == pytest.approx(0.0141513, rel=1e-4)
    assert c.absolute.upper == pytest.approx(0.1858487, rel=1e-5)
    assert c.absolute.p_value == pytest.approx(0.011614, rel=1e-4)
    assert c.significant
    fixed = compare(control, treatment, difference_type="absolute")
    assert fixed.absolute.upper - fixed.absolute.lower < c.absolute.upper - c.absolute.lower


@PROPERTY
@given(st.floats(0.0, 8.0), st.integers(10, 100_000), st.sampled_from([0.01, 0.05, 0.1]))
def test_sequential_p_value_agrees_with_interval(z: float, n: int, alpha: float) -> None:
    # p < alpha exactly when the (1 - alpha) sequence excludes zero (same rho)
    se = 1.0 / math.sqrt(n)
    half = sequential_halfwidth(se * se * n, n, alpha, 5000)
    p = sequential_p_value(z, n, alpha, 5000)
    assume(abs(z * se - half) > 1e-9)
    assert (p < alpha) == (z * se > half)


# --- simulations -----------------------------------------------------------------------

RUNS = 1000
N_PER_ARM = 200


def _sim_summaries(data: np.ndarray) -> list[tuple[Summary, Summary]]:
    """data: (runs, 2, n) -> per-run (control, treatment) summaries from sufficient stats."""
    n = data.shape[2]
    sums = data.sum(axis=2)
    sq = (data * data).sum(axis=2)
    return [
        (summarize(SampleStats(n, float(sums[r, 0]), float(sq[r, 0]))),
         summarize(SampleStats(n, float(sums[r, 1]), float(sq[r, 1]))))
        for r in range(data.shape[0])
    ]


def test_aa_false_positive_rate_is_alpha() -> None:
    rng = np.random.default_rng(20240601)
    data = rng.normal(0.0, 1.0, size=(RUNS, 2, N_PER_ARM))
    hits = sum(compare(c, t, difference_type="absolute").significant
               for c, t in _sim_summaries(data))
    lo, hi = sps.binom.interval(0.999, RUNS, 0.05)
    assert lo <= hits <= hi, hits


def test_ab_power_matches_analytic_power() -> None:
    effect, sigma = 0.25, 1.0
    # Analytic power of the two-sided Welch test with equal n and variances: the statistic
    # is noncentral t with df = 2n - 2 and noncentrality effect / (sigma sqrt(2/n)) = 2.5.
    df = 2 * N_PER_ARM - 2
    ncp = effect / (sigma * math.sqrt(2 / N_PER_ARM))
    crit = sps.t.ppf(0.975, df)
    power = float(sps.nct.sf(crit, df, ncp) + sps.nct.cdf(-crit, df, ncp))  # ~0.70
    rng = np.random.default_rng(4242)
    data = rng.normal(0.0, sigma, size=(RUNS, 2, N_PER_ARM))
    data[:, 1, :] += effect
    comparisons = [compare(c, t, difference_type="absolute") for c, t in _sim_summaries(data)]
    hits = sum(c.significant and c.absolute.estimate > 0 for c in comparisons)
    lo, hi = sps.binom.interval(0.999, RUNS, power)
    assert lo <= hits <= hi, (hits, power)


def test_injected_traffic_skew_trips_srm() -> None:
    rng = np.random.default_rng(99)
    users = 20_000
    in_b = rng.random(users) < 0.5
    clean = [int((~in_b).sum()), int(in_b.sum())]
    assert not srm_test(clean).flagged
    # 10% of B's exposures are lost (a redirect that drops some users, a broken beacon...)
    kept_b = in_b & (rng.random(users) >= 0.10)
    skewed = [int((~in_b).sum()), int(kept_b.sum())]
    srm = srm_test(skewed)
    assert srm.flagged and srm.p_value < 1e-10
    c = compare(summarize(SampleStats.from_binary(skewed[0], skewed[0] // 10)),
                summarize(SampleStats.from_binary(skewed[1], skewed[1] // 8)))
    assert verdict(c, srm=srm) == "sample ratio mismatch: results untrustworthy"


def test_peeking_inflates_fixed_tests_but_not_sequential() -> None:
    runs, looks, step = 300, 10, 100
    rng = np.random.default_rng(11)
    data = rng.normal(0.0, 1.0, size=(runs, 2, looks * step))
    naive = seq = 0
    settings_seq = SequentialSettings(tuning=2 * looks * step)
    for r in range(runs):
        naive_hit = seq_hit = False
        for k in range(1, looks + 1):
            part = data[r, :, : k * step]
            c_s = summarize(SampleStats.from_values(list(part[0])))
            t_s = summarize(SampleStats.from_values(list(part[1])))
            naive_hit |= compare(c_s, t_s, difference_type="absolute").significant
            seq_hit |= compare(c_s, t_s, difference_type="absolute",
                               sequential=settings_seq).significant
        naive += naive_hit
        seq += seq_hit
    _, hi = sps.binom.interval(0.999, runs, 0.05)
    assert naive > 0.10 * runs  # about 0.19 with 10 looks
    assert seq <= hi


# --- verdicts --------------------------------------------------------------------------


def test_verdict_sentences() -> None:
    a = summarize(SampleStats.from_binary(20_000, 2_000))
    b = summarize(SampleStats.from_binary(20_000, 2_250))
    c = compare(a, b)
    text = verdict(c)
    m = re.fullmatch(r"B beats A on conversion: \+(\d+\.\d)% \[(\d+\.\d)%, (\d+\.\d)%\], "
                     r"chance to win (>?\d+\.\d)%", text)
    assert m, text
    assert float(m.group(1)) == pytest.approx(c.relative.estimate * 100, abs=0.05)
    assert float(m.group(2)) == pytest.approx(c.relative.lower * 100, abs=0.05)
    assert float(m.group(3)) == pytest.approx(c.relative.upper * 100, abs=0.05)

    worse = verdict(compare(a, summarize(SampleStats.from_binary(20_000, 1_750))),
                    metric="signup", control_name="old", treatment_name="new")
    assert worse.startswith("new loses to old on signup: -12.5% [")

    flat = verdict(compare(a, summarize(SampleStats.from_binary(20_000, 2_010))))
    assert flat.startswith("no significant difference yet between B and A on conversion: +0.5%")

    small = compare(summarize(SampleStats.from_binary(40, 4)),
                    summarize(SampleStats.from_binary(40, 9)))
    assert verdict(small) == "not enough data yet"
    zero = compare(summarize(SampleStats.from_binary(5000, 0)),
                   summarize(SampleStats.from_binary(5000, 0)))
    assert verdict(zero) == "not enough data yet"

    srm = srm_test([10_000, 9_000])
    assert verdict(c, srm=srm) == "sample ratio mismatch: results untrustworthy"
