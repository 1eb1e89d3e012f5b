"""Statistics for the tables, from summary statistics (mean, standard deviation, n) only.

Pure functions, no I/O; scipy is imported inside them.

- :func:`welch`: the difference of two means with a two-sided Welch t-test (unequal variances)
  and its 95 % confidence interval (Welch-Satterthwaite degrees of freedom).
- :func:`seeds_needed`: how many seeds per column a two-sided two-sample t-test at alpha 0.05
  needs to detect a difference with 80 % power, assuming both columns have that many seeds and
  the given standard deviation (solved exactly with the noncentral t distribution).
- :func:`parse_paper`: "81.7±0.9" -> (81.7, 0.9); "14.3" -> (14.3, None).

No correction for multiple comparisons is applied anywhere: each p-value is that of one
comparison on its own.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

ALPHA = 0.05
POWER = 0.80
MAX_SEEDS = 100_000

_PAPER = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(?:(?:±|\+-|\+/-)\s*(\d+(?:\.\d+)?))?\s*$")


def parse_paper(text: str) -> tuple[float, float | None]:
    """The paper's cell as printed: ``"81.7±0.9"`` -> (81.7, 0.9), ``"14.3"`` -> (14.3, None)."""
    m = _PAPER.match(str(text))
    if not m:
        raise ValueError(f"paper value {text!r} is not 'mean' or 'mean±std'")
    return float(m.group(1)), (float(m.group(2)) if m.group(2) is not None else None)


@dataclass(frozen=True)
class Test:
    """The outcome of comparing column a with column b (diff = mean_a - mean_b).

    ``p`` is None when the test cannot be done; ``reason`` then says why."""
    diff: float
    p: float | None = None
    ci: tuple[float, float] | None = None
    df: float | None = None
    reason: str = ""

    @property
    def significant(self) -> bool:
        return self.p is not None and self.p < ALPHA


def welch(mean_a: float, sd_a: float | None, n_a: int, mean_b: float, sd_b: float | None, n_b: int,
          names: tuple[str, str] = ("first side", "second side")) -> Test:
    """Two-sided Welch t-test of mean_a - mean_b from summary statistics, with its 95 % CI.

    Standard deviations are sample standard deviations (ddof 1). A side with n < 2 or without a
    standard deviation cannot be tested; neither can two sides without any spread."""
    diff = float(mean_a) - float(mean_b)
    for who, sd, n in ((names[0], sd_a, n_a), (names[1], sd_b, n_b)):
        if n is None or n < 2:
            return Test(diff, reason=f"{who} has {n or 0} seed{'' if n == 1 else 's'}")
        if sd is None or not math.isfinite(sd):
            return Test(diff, reason=f"{who} gives no standard deviation")
    va, vb = sd_a ** 2 / n_a, sd_b ** 2 / n_b
    se2 = va + vb
    if se2 <= 0:
        return Test(diff, reason="no spread on either side")
    from scipy import stats
    t, p = stats.ttest_ind_from_stats(mean_a, sd_a, n_a, mean_b, sd_b, n_b, equal_var=False)
    df = se2 ** 2 / (va ** 2 / (n_a - 1) + vb ** 2 / (n_b - 1))
    half = float(stats.t.ppf(1 - ALPHA / 2, df)) * math.sqrt(se2)
    return Test(diff, p=float(p), ci=(diff - half, diff + half), df=float(df))


def power(n: int, diff: float, sd: float, alpha: float = ALPHA) -> float:
    """Power of a two-sided two-sample t-test (equal n per side, equal sd) for a true difference."""
    from scipy import stats
    df = 2 * n - 2
    ncp = abs(diff) / (sd * math.sqrt(2.0 / n))
    tc = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(tc, df, ncp) + stats.nct.cdf(-tc, df, ncp))


def seeds_needed(diff: float, sd: float | None, alpha: float = ALPHA, target: float = POWER) -> int | None:
    """The smallest n per column (>= 2) at which a two-sided two-sample t-test at ``alpha`` detects
    ``diff`` with power ``target``, given standard deviation ``sd``; None when it cannot be said
    (no or zero sd, zero difference) or is above MAX_SEEDS."""
    if sd is None or not math.isfinite(sd) or sd <= 0 or not math.isfinite(diff) or diff == 0:
        return None
    if power(2, diff, sd, alpha) >= target:
        return 2
    lo, hi = 2, 4
    while power(hi, diff, sd, alpha) < target:         # power grows with n
        lo, hi = hi, hi * 2
        if hi > MAX_SEEDS:
            return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if power(mid, diff, sd, alpha) >= target:
            hi = mid
        else:
            lo = mid
    return hi


def pooled_sd(sd_a: float | None, sd_b: float | None) -> float | None:
    """sqrt((sd_a² + sd_b²) / 2): the common sd used to size a comparison of two of our columns."""
    if sd_a is None or sd_b is None or not (math.isfinite(sd_a) and math.isfinite(sd_b)):
        return None
    return math.sqrt((sd_a ** 2 + sd_b ** 2) / 2)


EXPLANATIONS = (
    "**Δ paper, p**: our mean minus the paper's, with the p-value of a two-sided Welch t-test from the two "
    "columns' means, standard deviations and seed counts (`*`: p < 0.05); where the paper reports one seed or "
    "no standard deviation, no test can be done and the table says so.",
    "**Δ reference [95 % CI]**: each column's mean minus its study's reference column's mean (same dataset, "
    "setting and row), with the 95 % Welch confidence interval of that difference and its p-value.",
    "**seeds for 80 % power**: where a difference is not significant, the number of seeds per column a two-sided "
    "t-test at alpha 0.05 would need to detect a true difference of that size 80 % of the time, given our "
    "standard deviation (against the paper, our column's; between two of our columns, their pooled one).",
    "No correction for multiple comparisons is applied: each p-value concerns one comparison alone, so among "
    "many comparisons some p < 0.05 are expected by chance.",
)

__all__ = ["ALPHA", "EXPLANATIONS", "POWER", "Test", "parse_paper", "pooled_sd", "power", "seeds_needed", "welch"]
