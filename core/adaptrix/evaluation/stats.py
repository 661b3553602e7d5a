"""The statistics of a comparison: Wilson score intervals and the exact (binomial) McNemar test."""

from __future__ import annotations

import math

#: The two-sided 95% normal quantile.
Z95 = 1.959963984540054


def wilson(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of ``correct`` successes out of ``n`` (95% by default); ``(0, 1)`` for ``n == 0``."""
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= correct <= n:
        raise ValueError(f"correct must be between 0 and n={n}, got {correct}")
    p = correct / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if correct == 0 else max(0.0, center - half)
    hi = 1.0 if correct == n else min(1.0, center + half)
    return (lo, hi)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided p-value of the exact McNemar test for paired outcomes.

    ``only_a``: items A got right and B wrong; ``only_b``: the reverse. Under
    the null hypothesis each discordant item is a fair coin flip:
    ``p = min(1, 2 * P[Binomial(only_a + only_b, 1/2) <= min(only_a, only_b)])``; 1.0 without discordant items.
    """
    if only_a < 0 or only_b < 0:
        raise ValueError(f"discordant counts must be >= 0, got {only_a}, {only_b}")
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_counts(a: list[bool], b: list[bool]) -> tuple[int, int]:
    """``(only_a, only_b)``: items only ``a`` got right, items only ``b`` got right (same items, same order)."""
    if len(a) != len(b):
        raise ValueError(f"paired outcomes need the same items: {len(a)} != {len(b)}")
    return (sum(x and not y for x, y in zip(a, b)), sum(y and not x for x, y in zip(a, b)))
