"""Evaluation statistics (§10): pass@k, confidence intervals, rankings from pairwise comparisons, annotator agreement.

Plain functions on python / numpy values:

  pass_at_k            - unbiased pass@k from n samples with c correct (Chen et al. 2021)
  wilson_interval      - confidence interval for a rate (good at small n and near 0 or 1)
  bootstrap_interval   - percentile bootstrap interval for any statistic (default: the mean)
  sign_test            - two-sided exact sign test for paired wins and losses
  mean_with_interval,
  rate_with_interval   - the same, packed as dicts for reports
  bradley_terry        - log-strengths from pairwise outcomes, P(i beats j) = sigmoid(s_i - s_j)
  elo_ratings          - sequential Elo ratings (order-dependent, unlike Bradley-Terry)
  cohen_kappa          - chance-corrected agreement between two annotators
"""
import math
from collections import Counter

import numpy as np


def _check_int(name, x):
    # bool is an int subclass, reject it explicitly; numpy integers are fine
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {x!r}")
    return int(x)


def pass_at_k(n, c, k):
    """
    Unbiased estimate of pass@k from n samples of which c are correct (Chen et al. 2021):

        pass@k = 1 - C(n-c, k) / C(n, k)

    i.e. the probability that a random k-subset of the n samples holds at least one correct one.
    Computed as a product, without huge binomials:

        pass@k = 1                                   if n - c < k
               = 1 - prod_{i=n-c+1}^{n} (1 - k/i)    otherwise
    """
    n, c, k = _check_int("n", n), _check_int("c", c), _check_int("k", k)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0 <= c <= n:
        raise ValueError(f"c must be in [0, n={n}], got {c}")
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, n={n}], got {k}")
    if n - c < k:
        return 1.0  # every k-subset contains a correct sample
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def wilson_interval(successes, n, z=1.96):
    """
    Wilson score interval for a rate p from `successes` out of n (z = 1.96: 95%). With
    p^ = successes / n, it solves (p^ - p)^2 = z^2 p (1 - p) / n for p:

        centre     = (p^ + z^2 / 2n) / (1 + z^2 / n)
        half-width = z * sqrt(p^ (1 - p^) / n + z^2 / 4n^2) / (1 + z^2 / n)

    clamped to [0, 1]. Unlike p^ +- z sqrt(p^(1-p^)/n) it never has zero width at p^ = 0 or 1.
    n == 0 carries no information: (0.0, 1.0).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n={n}], got {successes}")
    if not z > 0:
        raise ValueError(f"z must be > 0, got {z}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact at the edges, no round-off
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def bootstrap_interval(values, statistic=None, n_resamples=2000, confidence=0.95, seed=0):
    """
    Percentile bootstrap interval for statistic(values) (default: the mean). Draw n_resamples
    datasets of size n with replacement, compute the statistic on each, and return the
    (1 - confidence)/2 and (1 + confidence)/2 quantiles of those replicates:

        theta*_b = statistic(values[idx_b]),   idx_b ~ Uniform{0..n-1}^n,   b = 1..B
        interval = (quantile(theta*, alpha/2), quantile(theta*, 1 - alpha/2)),  alpha = 1 - confidence

    Deterministic given seed (numpy.random.default_rng). A single value gives (v, v).
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("bootstrap_interval needs at least one value")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    stat = np.mean if statistic is None else statistic
    if values.size == 1:
        v = float(stat(values))
        return v, v
    rng = np.random.default_rng(seed)
    samples = values[rng.integers(0, values.size, (n_resamples, values.size))]  # (B, n)
    if statistic is None:
        reps = samples.mean(axis=1)  # vectorised fast path
    else:
        reps = np.array([statistic(s) for s in samples], dtype=np.float64)
    alpha = 1 - confidence
    low, high = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def sign_test(wins, losses):
    """Two-sided exact sign test: the chance that a fair coin splits wins + losses tosses at least
    this unevenly, p = min(1, 2 * sum_{i <= min(w, l)} C(n, i) / 2^n). Ties are left out before."""
    n, k = wins + losses, min(wins, losses)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0


def mean_with_interval(values, **kw):
    """{mean, low, high, n}: the mean of values and its bootstrap interval (kw -> bootstrap_interval)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    low, high = bootstrap_interval(values, **kw)
    return dict(mean=float(values.mean()), low=low, high=high, n=int(values.size))


def rate_with_interval(successes, n, z=1.96):
    """{rate, low, high, n}: rate = successes / n (0.0 when n == 0) and its Wilson interval."""
    low, high = wilson_interval(successes, n, z)
    return dict(rate=successes / n if n else 0.0, low=low, high=high, n=n)


def _check_comparison(a, b, outcome):
    if a == b:
        raise ValueError(f"a comparison needs two different players, got {a!r} twice")
    outcome = float(outcome)
    if not 0.0 <= outcome <= 1.0:  # also rejects NaN
        raise ValueError(f"outcome must be in [0, 1] (1: a won, 0: b won, 0.5: tie), got {outcome}")
    return outcome


def _best_scale(p):
    """p * e^t with t maximising the virtual ties' log-likelihood sum_i [0.5 ln p_i e^t - ln(p_i e^t + 1)]:
    the root of sum_i sigmoid(ln p_i + t) = m / 2, by a few Newton steps (clipped to 1 for safety)."""
    s, t = np.log(p), 0.0
    for _ in range(50):
        q = 1 / (1 + np.exp(-(s + t)))
        step = float(np.clip((q.sum() - len(p) / 2) / (q * (1 - q)).sum(), -1.0, 1.0))
        t -= step
        if abs(step) < 1e-14:
            break
    return p * math.exp(t)


def bradley_terry(comparisons, iterations=1000, tol=1e-10):
    """
    Bradley-Terry strengths from pairwise comparisons (a, b, outcome), outcome = 1 if a won,
    0 if b won, 0.5 for a tie (half a win each). The model: P(i beats j) = p_i / (p_i + p_j).
    MM algorithm (Hunter 2004), with W_i the wins of i and n_ij the games between i and j:

        p_i <- W_i / sum_{j != i} n_ij / (p_i + p_j)

    Regularisation: a player with no wins (or no losses) has an infinite MLE, so every player
    also plays one virtual tie (0.5 win, 0.5 loss) against a virtual opponent of fixed strength 1
    (W_i += 0.5, and a term 1 / (p_i + 1) in the sum). This is a weak prior pulling strengths
    towards 1. It also fixes the overall scale, so instead of normalising to geometric mean 1
    (which would move the fixed point off the regularised maximum) each iteration rescales
    p <- p e^t to the best scale for the prior (_best_scale): the real games do not depend on
    the scale, and the weak prior alone would find it only very slowly.

    Returns {player: s_i} with s_i = ln p_i - mean_j ln p_j (mean 0), so
    P(i beats j) = sigmoid(s_i - s_j).
    """
    index, rows = {}, []
    for a, b, outcome in comparisons:
        outcome = _check_comparison(a, b, outcome)
        rows.append((index.setdefault(a, len(index)), index.setdefault(b, len(index)), outcome))
    if not index:
        return {}
    m = len(index)
    games = np.zeros((m, m))  # games[i, j] = n_ij, symmetric
    wins = np.full(m, 0.5)    # W_i, starting with the virtual tie's half win
    for i, j, outcome in rows:
        games[i, j] += 1
        games[j, i] += 1
        wins[i] += outcome
        wins[j] += 1 - outcome
    p = np.ones(m)
    for _ in range(iterations):
        denom = (games / (p[:, None] + p[None, :])).sum(axis=1) + 1 / (p + 1)  # + virtual game
        new = _best_scale(wins / denom)
        done = np.max(np.abs(np.log(new) - np.log(p))) < tol
        p = new
        if done:
            break
    s = np.log(p)
    s -= s.mean()
    return {name: float(s[i]) for name, i in index.items()}


def elo_ratings(comparisons, k=16.0, initial=1000.0):
    """
    Sequential Elo ratings over comparisons (a, b, outcome) in the given order (outcome as in
    bradley_terry). Players start at `initial`; after each game

        E_a  = 1 / (1 + 10^((R_b - R_a) / 400))      expected score of a
        R_a += k (outcome - E_a),   R_b -= k (outcome - E_a)

    so the total rating is conserved (zero-sum). Returns {player: rating}.
    """
    ratings = {}
    for a, b, outcome in comparisons:
        outcome = _check_comparison(a, b, outcome)
        ra, rb = ratings.setdefault(a, float(initial)), ratings.setdefault(b, float(initial))
        delta = k * (outcome - 1 / (1 + 10 ** ((rb - ra) / 400)))
        ratings[a], ratings[b] = ra + delta, rb - delta
    return ratings


def cohen_kappa(labels_a, labels_b):
    """
    Cohen's kappa: agreement of two annotators corrected for chance, over any hashable labels:

        p_o   = fraction of items where a and b agree
        p_e   = sum_l P_a(l) P_b(l)       (agreement expected if they labelled independently)
        kappa = (p_o - p_e) / (1 - p_e)

    1 is perfect agreement, 0 is chance level. When both annotators always give the same single
    label, p_e = 1 and kappa is 0/0; that is perfect agreement, so 1.0.
    """
    labels_a, labels_b = list(labels_a), list(labels_b)
    if len(labels_a) != len(labels_b):
        raise ValueError(f"label lists differ in length: {len(labels_a)} != {len(labels_b)}")
    if not labels_a:
        raise ValueError("cohen_kappa needs at least one item")
    n = len(labels_a)
    if len(set(labels_a) | set(labels_b)) == 1:
        return 1.0  # p_e == 1
    p_o = sum(x == y for x, y in zip(labels_a, labels_b)) / n
    count_a, count_b = Counter(labels_a), Counter(labels_b)
    p_e = sum(count_a[l] * count_b[l] for l in count_a) / (n * n)
    return (p_o - p_e) / (1 - p_e)
