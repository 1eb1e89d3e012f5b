"""lsdc.stats against hand-computed values and scipy."""
import math

import pytest
from scipy import stats as sps

from lsdc.stats import MAX_SEEDS, parse_paper, pooled_sd, power, seeds_needed, welch


def test_parse_paper():
    assert parse_paper("81.7±0.9") == (81.7, 0.9)
    assert parse_paper(" 42.2 ± 0.0 ") == (42.2, 0.0)
    assert parse_paper("59.45") == (59.45, None)
    with pytest.raises(ValueError, match="not 'mean'"):
        parse_paper("about 80")


def test_welch_matches_hand_computation_and_scipy():
    # a: 10 ± 2 (5), b: 8 ± 1 (10). se² = 4/5 + 1/10 = 0.9; t = 2 / sqrt(0.9) = 2.10819;
    # df = 0.9² / ((4/5)²/4 + (1/10)²/9) = 0.81 / 0.161111 = 5.02759
    t = welch(10, 2, 5, 8, 1, 10)
    assert t.diff == 2.0
    assert t.df == pytest.approx(5.027586, abs=1e-5)
    assert t.p == pytest.approx(2 * sps.t.sf(2 / math.sqrt(0.9), 5.027586), rel=1e-6)
    assert t.p == pytest.approx(sps.ttest_ind_from_stats(10, 2, 5, 8, 1, 10, equal_var=False).pvalue, rel=1e-12)
    assert t.p == pytest.approx(0.0885, abs=5e-4) and not t.significant
    half = sps.t.ppf(0.975, 5.027586) * math.sqrt(0.9)              # 2.5693 * 0.94868 = 2.4346
    assert t.ci == pytest.approx((2 - half, 2 + half), rel=1e-6)
    assert t.ci[0] == pytest.approx(-0.4346, abs=1e-3) and t.ci[1] == pytest.approx(4.4346, abs=1e-3)
    big = welch(90, 1, 10, 80, 1, 10)
    assert big.significant and big.p < 1e-10 and big.ci[0] > 0


def test_welch_says_when_it_cannot_test():
    one = welch(80, None, 1, 81.7, 0.9, 10, names=("ours", "the paper"))
    assert one.p is None and one.reason == "ours has 1 seed" and one.diff == pytest.approx(-1.7)
    paper1 = welch(80, 1.0, 3, 81.7, None, 1, names=("ours", "the paper"))
    assert paper1.p is None and paper1.reason == "the paper has 1 seed"
    nosd = welch(80, 1.0, 3, 81.7, None, 10, names=("ours", "the paper"))
    assert nosd.p is None and "no standard deviation" in nosd.reason
    flat = welch(80, 0.0, 3, 81, 0.0, 3)
    assert flat.p is None and flat.reason == "no spread on either side" and not flat.significant


@pytest.mark.parametrize("d, n", [(0.5, 64), (0.8, 26), (1.0, 17), (2.0, 6)])
def test_seeds_needed_matches_the_textbook_table(d, n):
    # two-sided two-sample t-test, alpha 0.05, power 0.8 (Cohen 1988; G*Power gives the same n)
    assert seeds_needed(d * 3.0, 3.0) == n
    assert power(n, d, 1.0) >= 0.8 > power(n - 1, d, 1.0)


def test_power_against_the_normal_approximation_and_edge_cases():
    # for large n the t-test's power tends to Phi(d sqrt(n/2) - z_0.975)
    assert power(400, 0.2, 1.0) == pytest.approx(sps.norm.cdf(0.2 * math.sqrt(200) - 1.959964), abs=5e-3)
    assert seeds_needed(10.0, 1.0) == 2 and seeds_needed(5.0, 1.0) == 3    # huge effects: the minimum n is 2
    assert seeds_needed(0.0, 1.0) is None and seeds_needed(1.0, 0.0) is None and seeds_needed(1.0, None) is None
    assert seeds_needed(1e-3, 10.0) is None                 # would need more than MAX_SEEDS
    assert MAX_SEEDS >= 10_000
    assert pooled_sd(3.0, 4.0) == pytest.approx(math.sqrt(12.5)) and pooled_sd(None, 1.0) is None
