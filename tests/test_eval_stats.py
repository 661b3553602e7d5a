"""Wilson intervals and the exact McNemar test against published / hand-derived values."""

from __future__ import annotations

import math

import pytest

from adaptrix.evaluation.stats import mcnemar_exact, paired_counts, wilson


@pytest.mark.parametrize("k, n, lo, hi", [
    # Newcombe (1998), Statistics in Medicine 17:857, Table I, method 3 (Wilson score, no continuity correction)
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
    # Wikipedia's worked value: 8 of 10
    (8, 10, 0.4902, 0.9433),
])
def test_wilson_matches_published_intervals(k, n, lo, hi):
    got = wilson(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-4)


def test_wilson_edges():
    assert wilson(0, 0) == (0.0, 1.0)
    assert wilson(10, 10)[1] == 1.0 and wilson(10, 10)[0] == pytest.approx(0.7225, abs=1e-4)
    with pytest.raises(ValueError):
        wilson(11, 10)


@pytest.mark.parametrize("b, c, p", [
    (0, 0, 1.0),
    (0, 5, 2 / 32),                     # 2 * (1/2)^5
    (2, 8, 2 * (1 + 10 + 45) / 1024),  # 2 * P[Bin(10, 1/2) <= 2] = 0.109375
    (5, 5, 1.0),
    (1, 6, 2 * (1 + 7) / 128),          # 0.125
    (11, 2, 2 * (1 + 13 + 78) / 8192),  # 0.02246...
])
def test_mcnemar_exact_is_the_two_sided_binomial_test(b, c, p):
    assert mcnemar_exact(b, c) == pytest.approx(p, rel=1e-12)
    assert mcnemar_exact(c, b) == pytest.approx(p, rel=1e-12)


def test_mcnemar_exact_agrees_with_a_direct_binomial_sum():
    # an independent computation: sum the probabilities of every outcome at most as likely as the observed one
    for b in range(0, 15):
        for c in range(0, 15):
            n = b + c
            if n == 0:
                continue
            probs = [math.comb(n, i) / 2**n for i in range(n + 1)]
            direct = sum(q for q in probs if q <= probs[b] * (1 + 1e-12))
            assert mcnemar_exact(b, c) == pytest.approx(min(1.0, direct), rel=1e-9)


def test_paired_counts():
    assert paired_counts([True, True, False, False], [True, False, True, True]) == (1, 2)
    with pytest.raises(ValueError):
        paired_counts([True], [True, False])
