"""How sure a measured difference is: Student-t intervals of a mean over seeds (and of a paired difference between
two methods run with the same seeds), and percentile intervals of a bootstrap. Plain Python, exact for the small
numbers of seeds a comparison runs."""

from __future__ import annotations

import math
from dataclasses import dataclass

CONFIDENCE = 0.95


def _t_two_sided_mass(t: float, df: int) -> float:
    """P(|T| ≤ t) for Student's t with integer `df` degrees of freedom (closed form: the finite series in
    cos²θ, θ = atan(t / √df))."""
    theta = math.atan(t / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2:  # odd: (2/π)(θ + sinθ cosθ Σ_{k=1}^{(df−3)/2} (2·4⋯2k)/(3·5⋯(2k+1)) cos^{2k}θ)
        total, term = 1.0, 1.0
        for k in range(1, (df - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        return (2 / math.pi) * (theta + (s * math.cos(theta) * total if df > 1 else 0.0))
    total, term = 1.0, 1.0  # even: sinθ (1 + Σ_{k=1}^{(df−2)/2} (1·3⋯(2k−1))/(2·4⋯2k) cos^{2k}θ)
    for k in range(1, df // 2):
        term *= c2 * (2 * k - 1) / (2 * k)
        total += term
    return s * total


def t_quantile(df: int, confidence: float = CONFIDENCE) -> float:
    """The t with P(|T| ≤ t) = `confidence` for Student's t with `df` ≥ 1 degrees of freedom (bisection)."""
    if df < 1 or not 0 < confidence < 1:
        raise ValueError(f"Need df ≥ 1 and 0 < confidence < 1, got df={df}, confidence={confidence}.")
    low, high = 0.0, 1.0
    while _t_two_sided_mass(high, df) < confidence:
        high *= 2
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if _t_two_sided_mass(middle, df) < confidence else (low, middle)
    return (low + high) / 2


@dataclass(frozen=True)
class Interval:
    """A mean over `n` values and its interval (None with a single value: nothing to say how sure it is)."""

    mean: float
    low: float | None
    high: float | None
    n: int

    def as_dict(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n}

    def verdict(self) -> str:
        """How a difference (a − b) reads: "lower" or "higher" when the interval excludes 0, else "level"; "one
        seed" when there is no interval."""
        if self.low is None:
            return "one seed"
        if self.high < 0:
            return "lower"
        if self.low > 0:
            return "higher"
        return "level"


def mean_interval(values: list[float], confidence: float = CONFIDENCE) -> Interval:
    """The mean of `values` and its Student-t interval: mean ± t_{n−1} · s / √n."""
    n = len(values)
    if n == 0:
        raise ValueError("No values to average.")
    mean = sum(values) / n
    if n == 1:
        return Interval(mean, None, None, 1)
    spread = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(n - 1, confidence) * spread / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def paired_difference(a: dict, b: dict, confidence: float = CONFIDENCE) -> Interval | None:
    """The mean of a[s] − b[s] over the seeds `s` both have, with its t interval; None when they share none."""
    shared = [seed for seed in a if seed in b]
    if not shared:
        return None
    return mean_interval([a[seed] - b[seed] for seed in shared], confidence)


def percentile_interval(samples: list[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The central `confidence` range of bootstrap `samples` (linear interpolation between order statistics)."""
    ordered = sorted(samples)
    if not ordered:
        raise ValueError("No bootstrap samples.")

    def at(q: float) -> float:
        position = q * (len(ordered) - 1)
        below = math.floor(position)
        above = min(below + 1, len(ordered) - 1)
        return ordered[below] + (position - below) * (ordered[above] - ordered[below])

    tail = (1 - confidence) / 2
    return at(tail), at(1 - tail)
