"""Experiment analysis over sufficient statistics (no raw rows needed).

Each variation is reduced to sums that add across days or shards:

* :class:`SampleStats` ``(n, sum, sum_squares)`` for a per-user metric (a conversion is a
  0/1 metric: ``sum == sum_squares == conversions``);
* :class:`BivariateStats` ``(n, sum_x, sum_y, sum_x2, sum_y2, sum_xy)`` for a ratio metric
  (``y`` the numerator, ``x`` the denominator, both per user: revenue / orders) and for
  CUPED (``y`` the metric, ``x`` the same user's pre-exposure covariate).

Both reduce to a :class:`Summary` ``(n, mean, variance)`` whose mean has sampling variance
``variance / n`` (the delta method for a ratio, the CUPED-adjusted variance for CUPED).
:func:`compare` then gives, for a treatment against the control:

* absolute uplift ``mean_t - mean_c`` with a Welch t-test (Welch--Satterthwaite degrees of
  freedom) and its confidence interval;
* relative uplift ``mean_t / mean_c - 1`` with a delta-method standard error
  ``sqrt(v_t / m_c^2 + m_t^2 v_c / m_c^4)`` (``v`` = variance of a mean);
* Bayesian chance to beat control and expected loss from a normal posterior on the chosen
  difference (flat prior by default, or a conjugate normal :class:`NormalPrior`);
* optionally sequential testing: always-valid intervals from the asymptotic confidence
  sequences of Waudby-Smith et al., the normal-mixture boundary with mixing parameter
  ``rho`` tuned to be tightest at ``tuning`` total units (GrowthBook's approach, default
  5000), and the matching always-valid mixture-SPRT p-value;

plus :func:`srm_test` (chi-square sample ratio mismatch, flagged below p = 0.001),
:func:`holm` and :func:`benjamini_hochberg` adjusted p-values, :func:`analyze` for a whole
experiment and :func:`verdict` for one plain-language sentence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from scipy import special

__all__ = [
    "BivariateStats",
    "Comparison",
    "CupedAdjustment",
    "CupedStats",
    "Inference",
    "NormalPrior",
    "RatioStats",
    "SampleStats",
    "SequentialSettings",
    "SrmResult",
    "Summary",
    "adjust_p_values",
    "analyze",
    "benjamini_hochberg",
    "compare",
    "cuped_adjust",
    "expected_loss",
    "holm",
    "sequential_halfwidth",
    "sequential_p_value",
    "sequential_rho",
    "srm_test",
    "summarize",
    "summarize_ratio",
    "verdict",
    "welch_df",
]

DifferenceType = Literal["relative", "absolute"]
Correction = Literal["holm", "bh"]
_NAN = math.nan


def _var(sum_sq: float, total: float, n: int) -> float:
    """Sample variance (``n - 1`` denominator) from sums; NaN below two units."""
    if n < 2:
        return _NAN
    return max((sum_sq - total * total / n) / (n - 1), 0.0)


def _cov(sum_xy: float, sum_x: float, sum_y: float, n: int) -> float:
    if n < 2:
        return _NAN
    return (sum_xy - sum_x * sum_y / n) / (n - 1)


# --- sufficient statistics -------------------------------------------------------------


@dataclass(frozen=True)
class SampleStats:
    """Count, sum and sum of squares of a per-unit metric; adds with ``+``."""

    n: int
    sum: float
    sum_squares: float

    @classmethod
    def from_values(cls, values: Sequence[float]) -> SampleStats:
        return cls(len(values), float(sum(values)), float(sum(v * v for v in values)))

    @classmethod
    def from_binary(cls, n: int, conversions: int) -> SampleStats:
        """A 0/1 metric: ``conversions`` of ``n`` units converted."""
        return cls(n, float(conversions), float(conversions))

    def __add__(self, other: SampleStats) -> SampleStats:
        return SampleStats(
            self.n + other.n, self.sum + other.sum, self.sum_squares + other.sum_squares
        )

    @property
    def mean(self) -> float:
        return self.sum / self.n if self.n else _NAN

    @property
    def variance(self) -> float:
        """Sample variance (``n - 1`` denominator)."""
        return _var(self.sum_squares, self.sum, self.n)

    @property
    def std(self) -> float:
        return math.sqrt(self.variance)


@dataclass(frozen=True)
class BivariateStats:
    """Sums of two per-unit metrics ``x`` and ``y`` and their cross product; adds with ``+``.

    As a ratio metric (:data:`RatioStats`), the ratio is ``sum_y / sum_x``; for CUPED
    (:data:`CupedStats`), ``y`` is the metric and ``x`` its pre-exposure covariate.
    """

    n: int
    sum_x: float
    sum_y: float
    sum_x2: float
    sum_y2: float
    sum_xy: float

    @classmethod
    def from_values(cls, x: Sequence[float], y: Sequence[float]) -> BivariateStats:
        if len(x) != len(y):
            raise ValueError("x and y must have the same length")
        return cls(
            len(x),
            float(sum(x)),
            float(sum(y)),
            float(sum(a * a for a in x)),
            float(sum(b * b for b in y)),
            float(sum(a * b for a, b in zip(x, y, strict=True))),
        )

    def __add__(self, other: BivariateStats) -> BivariateStats:
        return BivariateStats(
            self.n + other.n,
            self.sum_x + other.sum_x,
            self.sum_y + other.sum_y,
            self.sum_x2 + other.sum_x2,
            self.sum_y2 + other.sum_y2,
            self.sum_xy + other.sum_xy,
        )

    @property
    def mean_x(self) -> float:
        return self.sum_x / self.n if self.n else _NAN

    @property
    def mean_y(self) -> float:
        return self.sum_y / self.n if self.n else _NAN

    @property
    def var_x(self) -> float:
        return _var(self.sum_x2, self.sum_x, self.n)

    @property
    def var_y(self) -> float:
        return _var(self.sum_y2, self.sum_y, self.n)

    @property
    def cov_xy(self) -> float:
        return _cov(self.sum_xy, self.sum_x, self.sum_y, self.n)

    @property
    def ratio(self) -> float:
        """``sum_y / sum_x`` (= ``mean_y / mean_x``)."""
        return self.sum_y / self.sum_x if self.sum_x else _NAN

    @property
    def ratio_unit_variance(self) -> float:
        """Per-unit variance of the ratio by the delta method: with ``r = my / mx``,
        ``(var_y - 2 r cov_xy + r^2 var_x) / mx^2``; the ratio's variance is this ``/ n``."""
        mx = self.mean_x
        if not mx or self.n < 2:
            return _NAN
        r = self.mean_y / mx
        v = self.var_y - 2 * r * self.cov_xy + r * r * self.var_x
        return max(v, 0.0) / (mx * mx)

    @property
    def ratio_variance(self) -> float:
        """Sampling variance of :attr:`ratio` (delta method)."""
        return self.ratio_unit_variance / self.n if self.n else _NAN


#: Ratio-metric statistics: ``y`` numerator, ``x`` denominator.
RatioStats = BivariateStats
#: CUPED statistics: ``y`` the metric, ``x`` the pre-exposure covariate.
CupedStats = BivariateStats


@dataclass(frozen=True)
class Summary:
    """What the tests need of a variation: ``n`` units, the metric's point estimate and
    per-unit variance, so the estimate's sampling variance is ``variance / n``."""

    n: int
    mean: float
    variance: float

    @property
    def var_mean(self) -> float:
        return self.variance / self.n if self.n else _NAN


def summarize(stats: SampleStats) -> Summary:
    return Summary(stats.n, stats.mean, stats.variance)


def summarize_ratio(stats: BivariateStats) -> Summary:
    return Summary(stats.n, stats.ratio, stats.ratio_unit_variance)


@dataclass(frozen=True)
class CupedAdjustment:
    """CUPED result: the pooled ``theta`` and one adjusted :class:`Summary` per variation."""

    theta: float
    summaries: tuple[Summary, ...]
    variance_reduction: tuple[float, ...]  # 1 - adjusted variance / raw variance


def cuped_adjust(stats: Sequence[BivariateStats]) -> CupedAdjustment:
    """CUPED with one pre-exposure covariate.

    ``theta = cov(y, x) / var(x)`` over all variations pooled; variation ``i``'s adjusted
    mean is ``mean_y_i - theta (mean_x_i - mean_x_pooled)`` and its per-unit variance
    ``var_y_i + theta^2 var_x_i - 2 theta cov_i(x, y)``. Pooling keeps ``theta`` independent
    of the treatment, so the adjusted difference stays unbiased.
    """
    if not stats:
        return CupedAdjustment(0.0, (), ())
    pooled = stats[0]
    for s in stats[1:]:
        pooled = pooled + s
    var_x = pooled.var_x
    theta = pooled.cov_xy / var_x if var_x and not math.isnan(var_x) else 0.0
    summaries: list[Summary] = []
    reductions: list[float] = []
    for s in stats:
        mean = s.mean_y - theta * (s.mean_x - pooled.mean_x)
        raw = s.var_y
        adjusted = max(raw + theta * theta * s.var_x - 2 * theta * s.cov_xy, 0.0)
        summaries.append(Summary(s.n, mean, adjusted))
        reductions.append(1 - adjusted / raw if raw else 0.0)
    return CupedAdjustment(theta, tuple(summaries), tuple(reductions))


# --- distributions (scipy.special: fast scalar calls) ----------------------------------


def _t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t (normal when ``df`` is infinite)."""
    if math.isinf(df):
        return float(special.ndtr(-t))
    return float(special.stdtr(df, -t))


def _t_ppf(q: float, df: float) -> float:
    if math.isinf(df):
        return float(special.ndtri(q))
    return float(special.stdtrit(df, q))


def _norm_cdf(z: float) -> float:
    return float(special.ndtr(z))


def _norm_pdf(z: float) -> float:
    return math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def welch_df(var_a: float, n_a: int, var_b: float, n_b: int) -> float:
    """Welch--Satterthwaite degrees of freedom,
    ``(va + vb)^2 / (va^2 / (n_a - 1) + vb^2 / (n_b - 1))`` with ``v = var / n``; infinite
    when both variances are zero."""
    va, vb = var_a / n_a, var_b / n_b
    denom = va * va / (n_a - 1) + vb * vb / (n_b - 1)
    if denom == 0:
        return math.inf
    return (va + vb) ** 2 / denom


# --- sequential testing ----------------------------------------------------------------


@dataclass(frozen=True)
class SequentialSettings:
    """Always-valid inference; ``tuning`` is the total sample size (both arms) at which
    the confidence sequence is tightest (GrowthBook's "tuning parameter", default 5000)."""

    tuning: float = 5000.0


def sequential_rho(alpha: float, tuning: float) -> float:
    """Mixing parameter of the normal-mixture boundary that minimises its width at
    ``tuning`` units: ``rho^2 = (-2 ln alpha + ln(1 - 2 ln alpha)) / tuning``."""
    two_log = -2 * math.log(alpha)
    return math.sqrt((two_log + math.log(two_log + 1)) / tuning)


def sequential_halfwidth(unit_variance: float, n: float, alpha: float, tuning: float) -> float:
    """Half-width of the (1 - alpha) asymptotic confidence sequence for a mean whose
    per-unit variance is ``unit_variance`` after ``n`` units:
    ``sigma * sqrt((n rho^2 + 1) / (n^2 rho^2) * ln((n rho^2 + 1) / alpha^2))``."""
    rho2 = sequential_rho(alpha, tuning) ** 2
    a = n * rho2 + 1
    return math.sqrt(unit_variance) * math.sqrt(a / (n * n * rho2) * math.log(a / (alpha * alpha)))


def sequential_p_value(z: float, n: float, alpha: float, tuning: float) -> float:
    """Always-valid p-value of the same mixture (the mixture SPRT): ``1 / Lambda`` with the
    mixture likelihood ratio ``Lambda = exp(z^2 / 2 * n rho^2 / (n rho^2 + 1)) /
    sqrt(n rho^2 + 1)`` for the z statistic ``z``; it is below ``alpha`` exactly when the
    ``1 - alpha`` sequence excludes zero (same ``rho``)."""
    rho2 = sequential_rho(alpha, tuning) ** 2
    a = n * rho2 + 1
    log_p = 0.5 * math.log(a) - 0.5 * z * z * (n * rho2) / a
    return min(1.0, math.exp(log_p))


# --- Bayesian --------------------------------------------------------------------------


@dataclass(frozen=True)
class NormalPrior:
    """Normal prior on the difference (relative or absolute, whichever is analysed)."""

    mean: float = 0.0
    variance: float = 0.3**2


def expected_loss(mean: float, sd: float) -> float:
    """``E[max(0, -D)]`` for ``D ~ N(mean, sd^2)``: what shipping the treatment costs, on
    average, over the posterior (``sd * phi(mean / sd) - mean * Phi(-mean / sd)``)."""
    if sd <= 0 or math.isnan(sd):
        return max(0.0, -mean) if not math.isnan(mean) else _NAN
    z = mean / sd
    return sd * _norm_pdf(z) - mean * _norm_cdf(-z)


# --- comparison ------------------------------------------------------------------------


@dataclass(frozen=True)
class Inference:
    """One difference (absolute or relative): estimate, standard error, interval, p-value."""

    estimate: float
    se: float
    lower: float
    upper: float
    p_value: float


@dataclass(frozen=True)
class Comparison:
    """A treatment against the control on one metric."""

    control: Summary
    treatment: Summary
    absolute: Inference
    relative: Inference
    df: float
    difference_type: DifferenceType
    alpha: float
    sequential: bool
    chance_to_win: float
    expected_loss: float  # risk of shipping the treatment
    expected_loss_control: float  # risk of keeping the control
    p_value_adjusted: float | None = None

    @property
    def chosen(self) -> Inference:
        return self.relative if self.difference_type == "relative" else self.absolute

    @property
    def p_value(self) -> float:
        """p-value of the analysed difference, multiplicity-adjusted when it was."""
        if self.p_value_adjusted is not None:
            return self.p_value_adjusted
        return self.chosen.p_value

    @property
    def significant(self) -> bool:
        return not math.isnan(self.p_value) and self.p_value < self.alpha


def _two_sided_p(estimate: float, se: float, df: float) -> float:
    if math.isnan(estimate) or math.isnan(se):
        return _NAN
    if se == 0:
        return 1.0 if estimate == 0 else 0.0
    return min(1.0, 2 * _t_sf(abs(estimate / se), df))


def _inference(
    estimate: float,
    se: float,
    df: float,
    alpha: float,
    sequential: SequentialSettings | None,
    n_total: int,
) -> Inference:
    if sequential is None:
        half = _t_ppf(1 - alpha / 2, df) * se
        p = _two_sided_p(estimate, se, df)
    else:
        half = sequential_halfwidth(se * se * n_total, n_total, alpha, sequential.tuning)
        if math.isnan(estimate) or math.isnan(se):
            p = _NAN
        elif se == 0:
            p = 1.0 if estimate == 0 else 0.0
        else:
            p = sequential_p_value(estimate / se, n_total, alpha, sequential.tuning)
    return Inference(estimate, se, estimate - half, estimate + half, p)


def compare(
    control: Summary,
    treatment: Summary,
    *,
    alpha: float = 0.05,
    difference_type: DifferenceType = "relative",
    sequential: SequentialSettings | None = None,
    prior: NormalPrior | None = None,
) -> Comparison:
    """Frequentist and Bayesian comparison of ``treatment`` with ``control``."""
    mc, mt = control.mean, treatment.mean
    vc, vt = control.var_mean, treatment.var_mean
    df = (
        welch_df(control.variance, control.n, treatment.variance, treatment.n)
        if control.n > 1 and treatment.n > 1
        else _NAN
    )
    n_total = control.n + treatment.n

    abs_est = mt - mc
    abs_se = math.sqrt(vc + vt) if vc + vt >= 0 else _NAN
    absolute = _inference(abs_est, abs_se, df, alpha, sequential, n_total)

    if mc and not math.isnan(mc):
        rel_est = mt / mc - 1
        rel_var = vt / (mc * mc) + mt * mt * vc / mc**4
        rel_se = math.sqrt(rel_var) if rel_var >= 0 else _NAN
    else:
        rel_est, rel_se = _NAN, _NAN
    relative = _inference(rel_est, rel_se, df, alpha, sequential, n_total)

    chosen = relative if difference_type == "relative" else absolute
    post_mean, post_sd = chosen.estimate, chosen.se
    if prior is not None and post_sd > 0:
        precision = 1 / post_sd**2 + 1 / prior.variance
        post_mean = (chosen.estimate / post_sd**2 + prior.mean / prior.variance) / precision
        post_sd = math.sqrt(1 / precision)
    if math.isnan(post_mean) or math.isnan(post_sd):
        ctw = _NAN
    elif post_sd == 0:
        ctw = 1.0 if post_mean > 0 else (0.5 if post_mean == 0 else 0.0)
    else:
        ctw = _norm_cdf(post_mean / post_sd)
    return Comparison(
        control=control,
        treatment=treatment,
        absolute=absolute,
        relative=relative,
        df=df,
        difference_type=difference_type,
        alpha=alpha,
        sequential=sequential is not None,
        chance_to_win=ctw,
        expected_loss=expected_loss(post_mean, post_sd),
        expected_loss_control=expected_loss(-post_mean, post_sd),
    )


# --- multiple comparisons --------------------------------------------------------------


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (family-wise error): sorted ascending, the ``i``-th
    (1-based) becomes ``max_{j <= i} min(1, (m - j + 1) p_(j))``."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def benjamini_hochberg(p_values: Sequence[float]) -> list[float]:
    """Benjamini--Hochberg adjusted p-values (false discovery rate): sorted ascending, the
    ``i``-th becomes ``min_{j >= i} min(1, m p_(j) / j)``."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 1.0
    for rank in range(m - 1, -1, -1):
        i = order[rank]
        running = min(running, min(1.0, m * p_values[i] / (rank + 1)))
        adjusted[i] = running
    return adjusted


def adjust_p_values(p_values: Sequence[float], method: Correction) -> list[float]:
    if method == "holm":
        return holm(p_values)
    if method == "bh":
        return benjamini_hochberg(p_values)
    raise ValueError(f"unknown correction {method!r}")


def analyze(
    summaries: Sequence[Summary],
    *,
    control_index: int = 0,
    alpha: float = 0.05,
    difference_type: DifferenceType = "relative",
    sequential: SequentialSettings | None = None,
    prior: NormalPrior | None = None,
    correction: Correction | None = None,
) -> list[Comparison]:
    """Every other variation against the control, with adjusted p-values when asked."""
    control = summaries[control_index]
    results = [
        compare(
            control,
            s,
            alpha=alpha,
            difference_type=difference_type,
            sequential=sequential,
            prior=prior,
        )
        for i, s in enumerate(summaries)
        if i != control_index
    ]
    if correction is not None and results:
        raw = [r.chosen.p_value for r in results]
        finite = [p if not math.isnan(p) else 1.0 for p in raw]
        adjusted = adjust_p_values(finite, correction)
        results = [replace(r, p_value_adjusted=a) for r, a in zip(results, adjusted, strict=True)]
    return results


# --- sample ratio mismatch -------------------------------------------------------------


@dataclass(frozen=True)
class SrmResult:
    chi2: float
    df: int
    p_value: float
    flagged: bool
    observed: tuple[int, ...]
    expected: tuple[float, ...]


def srm_test(
    counts: Sequence[int], weights: Sequence[float] | None = None, threshold: float = 0.001
) -> SrmResult:
    """Chi-square goodness of fit of the units per variation against the planned split
    (``weights``, normalised; equal by default); flagged when ``p < threshold``."""
    k = len(counts)
    w = list(weights) if weights is not None else [1.0] * k
    if len(w) != k:
        raise ValueError("weights and counts differ in length")
    total_w = sum(w)
    total = sum(counts)
    expected = tuple(total * wi / total_w for wi in w)
    chi2 = 0.0
    cells = 0
    for o, e in zip(counts, expected, strict=True):
        if e > 0:
            chi2 += (o - e) ** 2 / e
            cells += 1
        elif o > 0:  # units where none were planned
            chi2 = math.inf
    df = max(cells - 1, 1)
    if total == 0:
        p = 1.0
    elif math.isinf(chi2):
        p = 0.0
    else:
        p = float(special.chdtrc(df, chi2))
    return SrmResult(chi2, df, p, p < threshold, tuple(counts), expected)


# --- plain language --------------------------------------------------------------------


def _pct(x: float, signed: bool = False) -> str:
    text = f"{x * 100:+.1f}%" if signed else f"{x * 100:.1f}%"
    return "0.0%" if text in ("-0.0%", "+0.0%") else text


def _num(x: float, signed: bool = False) -> str:
    return f"{x:+.3g}" if signed else f"{x:.3g}"


def _chance(p: float) -> str:
    if p > 0.999:
        return ">99.9%"
    if p < 0.001:
        return "<0.1%"
    return f"{p * 100:.1f}%"


def verdict(
    comparison: Comparison,
    *,
    metric: str = "conversion",
    control_name: str = "A",
    treatment_name: str = "B",
    srm: SrmResult | None = None,
    min_units: int = 100,
) -> str:
    """One sentence a person can act on, e.g.
    ``"B beats A on conversion: +4.1% [1.2%, 7.0%], chance to win 99.6%"``.

    ``"sample ratio mismatch: results untrustworthy"`` when ``srm`` is flagged (checked
    first: no uplift is worth reading then), ``"not enough data yet"`` while either arm
    has fewer than ``min_units`` units or the difference cannot be estimated.
    """
    if srm is not None and srm.flagged:
        return "sample ratio mismatch: results untrustworthy"
    chosen = comparison.chosen
    if (
        min(comparison.control.n, comparison.treatment.n) < min_units
        or math.isnan(chosen.estimate)
        or math.isnan(chosen.se)
        or chosen.se == 0
    ):
        return "not enough data yet"
    fmt = _pct if comparison.difference_type == "relative" else _num
    figures = (
        f"{fmt(chosen.estimate, True)} [{fmt(chosen.lower)}, {fmt(chosen.upper)}], "
        f"chance to win {_chance(comparison.chance_to_win)}"
    )
    if comparison.significant and chosen.estimate > 0:
        return f"{treatment_name} beats {control_name} on {metric}: {figures}"
    if comparison.significant and chosen.estimate < 0:
        return f"{treatment_name} loses to {control_name} on {metric}: {figures}"
    return (
        f"no significant difference yet between {treatment_name} and {control_name} "
        f"on {metric}: {figures}"
    )
