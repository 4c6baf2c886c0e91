"""Evaluation statistics: pass@k against brute-force subset enumeration, Wilson intervals against
known values and an independent quadratic solution, bootstrap coverage on synthetic data,
Bradley-Terry recovering simulated strengths, Elo invariants, and a hand-worked Cohen's kappa."""
import itertools
import math

import numpy as np
import pytest

from nanopost.evals import (bootstrap_interval, bradley_terry, cohen_kappa, elo_ratings,
                            mean_with_interval, pass_at_k, rate_with_interval, wilson_interval)


# ---------------------------------------------------------------- pass@k

def brute_pass_at_k(n, c, k):
    """Fraction of all k-subsets of n samples (the first c correct) holding a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_matches_enumeration():
    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_special_cases():
    for n in (1, 5, 20, 200):
        for k in (1, n // 2 or 1, n):
            assert pass_at_k(n, 0, k) == 0.0
            assert pass_at_k(n, n, k) == 1.0
        for c in range(0, n + 1, max(1, n // 7)):
            assert pass_at_k(n, c, 1) == pytest.approx(c / n, abs=1e-12)
    assert pass_at_k(np.int64(10), np.int32(3), np.int64(2)) == pytest.approx(1 - 21 / 45)
    assert 0 < pass_at_k(1000, 1, 500) < 1  # no overflow from huge binomials


@pytest.mark.parametrize("n, c, k", [
    (5, 6, 1),      # c > n
    (5, -1, 1),     # c < 0
    (5, 2, 0),      # k = 0
    (5, 2, 6),      # k > n
    (0, 0, 1),      # n = 0
    (5.0, 2, 1),    # float
    (5, 2.0, 1),
    (5, 2, True),   # bool
    (True, 1, 1),
])
def test_pass_at_k_rejects_invalid(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


# ---------------------------------------------------------------- Wilson interval

def wilson_by_quadratic(successes, n, z=1.96):
    """Roots of (p^ - p)^2 = z^2 p (1 - p) / n, i.e. a p^2 + b p + c = 0 with
    a = 1 + z^2/n, b = -(2 p^ + z^2/n), c = p^^2."""
    ph = successes / n
    a, b, c = 1 + z * z / n, -(2 * ph + z * z / n), ph * ph
    disc = math.sqrt(b * b - 4 * a * c)
    return (-b - disc) / (2 * a), (-b + disc) / (2 * a)


def test_wilson_known_values():
    lo, hi = wilson_interval(8, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(1 - 0.2775, abs=1e-4)
    lo, hi = wilson_interval(50, 100)
    assert (round(lo, 4), round(hi, 4)) == (0.4038, 0.5962)
    assert (lo + hi) / 2 == pytest.approx(0.5, abs=1e-12)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_wilson_matches_quadratic():
    for n in (1, 2, 7, 30, 1000):
        for s in sorted({0, 1, n // 3, n // 2, n - 1, n}):
            for z in (1.0, 1.96, 2.576):
                lo, hi = wilson_interval(s, n, z)
                qlo, qhi = wilson_by_quadratic(s, n, z)
                assert lo == pytest.approx(max(qlo, 0.0), abs=1e-12)
                assert hi == pytest.approx(min(qhi, 1.0), abs=1e-12)
                assert 0.0 <= lo <= s / n <= hi <= 1.0


@pytest.mark.parametrize("s, n, z", [(11, 10, 1.96), (-1, 10, 1.96), (5, 10, 0.0), (5, 10, -1.0)])
def test_wilson_rejects_invalid(s, n, z):
    with pytest.raises(ValueError):
        wilson_interval(s, n, z)


def test_rate_with_interval():
    r = rate_with_interval(8, 10)
    assert r["rate"] == 0.8 and r["n"] == 10 and (r["low"], r["high"]) == wilson_interval(8, 10)
    assert rate_with_interval(0, 0) == dict(rate=0.0, low=0.0, high=1.0, n=0)


# ---------------------------------------------------------------- bootstrap

def test_bootstrap_coverage():
    """95% intervals for the mean of 50 exponential(1) draws cover the true mean 1.0 at about
    the nominal rate (the percentile bootstrap runs a little low on skewed data)."""
    covered = 0
    for seed in range(200):
        x = np.random.default_rng(1000 + seed).exponential(1.0, 50)
        lo, hi = bootstrap_interval(x, n_resamples=400, seed=seed)
        assert lo <= x.mean() <= hi
        covered += lo <= 1.0 <= hi
    assert 0.85 <= covered / 200 <= 0.99


def test_bootstrap_edge_cases_and_statistic():
    with pytest.raises(ValueError):
        bootstrap_interval([])
    assert bootstrap_interval([3.5]) == (3.5, 3.5)
    x = np.random.default_rng(0).normal(0, 1, 40)
    assert bootstrap_interval(x, seed=7) == bootstrap_interval(x, seed=7)  # deterministic
    lo, hi = bootstrap_interval(x, statistic=np.median, n_resamples=300)
    assert lo <= np.median(x) <= hi
    m = mean_with_interval(x, n_resamples=300)
    assert m["n"] == 40 and m["mean"] == pytest.approx(x.mean()) and m["low"] < m["mean"] < m["high"]


# ---------------------------------------------------------------- Bradley-Terry and Elo

def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_bradley_terry_recovers_strengths():
    truth = np.array([-1.0, 0.0, 0.5, 1.5])
    truth -= truth.mean()
    names = ["a", "b", "c", "d"]
    rng = np.random.default_rng(0)
    comparisons = []
    for _ in range(3000):
        i, j = rng.choice(4, size=2, replace=False)
        won = rng.random() < sigmoid(truth[i] - truth[j])
        comparisons.append((names[i], names[j], 1.0 if won else 0.0))
    s = bradley_terry(comparisons)
    got = np.array([s[x] for x in names])
    assert abs(got.mean()) < 1e-9
    assert np.max(np.abs(got - truth)) < 0.15
    assert list(np.argsort(got)) == list(np.argsort(truth))
    longer = bradley_terry(comparisons, iterations=20000, tol=0.0)  # converged: more changes nothing
    assert all(longer[x] == pytest.approx(s[x], abs=1e-8) for x in names)


def test_bradley_terry_ties_and_unbeaten():
    s = bradley_terry([("a", "b", 0.5)] * 10)
    assert s["a"] == pytest.approx(s["b"], abs=1e-9)
    # a beats everyone every time: finite (regularised) and the largest
    comparisons = [("a", "b", 1.0), ("c", "a", 0.0), ("b", "c", 1.0), ("c", "b", 0.5)] * 5
    s = bradley_terry(comparisons)
    assert all(math.isfinite(v) for v in s.values())
    assert s["a"] == max(s.values()) and s["a"] > s["b"] > s["c"]
    assert bradley_terry([]) == {}
    for bad in [("a", "a", 1.0), ("a", "b", 1.5), ("a", "b", -0.1)]:
        with pytest.raises(ValueError):
            bradley_terry([bad])


def test_elo_winner_highest_and_zero_sum():
    rng = np.random.default_rng(1)
    comparisons = []
    for _ in range(200):
        x, y = rng.choice(["b", "c", "d"], size=2, replace=False)
        comparisons.append((x, y, float(rng.choice([0.0, 0.5, 1.0]))))
        other = str(rng.choice(["b", "c", "d"]))
        comparisons.append(("a", other, 1.0) if rng.random() < 0.5 else (other, "a", 0.0))
    r = elo_ratings(comparisons, k=16.0, initial=1000.0)
    assert r["a"] == max(r.values()) and r["a"] > 1000.0
    assert sum(r.values()) == pytest.approx(1000.0 * len(r), abs=1e-9)
    # a single game by hand: equal ratings, expected score 0.5, winner gains k/2
    assert elo_ratings([("x", "y", 1.0)], k=32.0) == {"x": 1016.0, "y": 984.0}
    with pytest.raises(ValueError):
        elo_ratings([("x", "x", 1.0)])


# ---------------------------------------------------------------- Cohen's kappa

def test_cohen_kappa_hand_worked():
    # 50 items: both yes 20, a yes / b no 5, a no / b yes 10, both no 15
    pairs = [("y", "y")] * 20 + [("y", "n")] * 5 + [("n", "y")] * 10 + [("n", "n")] * 15
    a, b = zip(*pairs)
    # p_o = 35/50 = 0.7; P_a(y) = 0.5, P_b(y) = 0.6 -> p_e = 0.5*0.6 + 0.5*0.4 = 0.5
    assert cohen_kappa(a, b) == pytest.approx((0.7 - 0.5) / (1 - 0.5))
    assert cohen_kappa(a, b) == pytest.approx(0.4)


def test_cohen_kappa_perfect_and_errors():
    labels = [1, 2, 3, 1, 2, "x", None]
    assert cohen_kappa(labels, labels) == 1.0
    assert cohen_kappa(["yes"] * 5, ["yes"] * 5) == 1.0  # p_e == 1
    assert cohen_kappa([0, 1, 0, 1], [1, 0, 1, 0]) == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        cohen_kappa([1, 2], [1])
    with pytest.raises(ValueError):
        cohen_kappa([], [])
