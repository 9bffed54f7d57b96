"""How sure a result is: bootstrap intervals over held-out prompts (and seeds), and Student's t over seeds.

Every arm is evaluated on the same held-out prompts, so an arm's per-prompt scores form a (seeds, prompts) table and
differences between arms are paired: each bootstrap draw resamples seeds, then prompts, with replacement, and applies
the same draw to every arm. A 95% interval is the 2.5th to 97.5th percentile of a statistic over the draws; where the
statistic is undefined in more than 2.5% of them (``gap_closed`` when the oracle does not beat BC) the interval is
unbounded, written None (``-`` in tables): the data cannot rule out that there is no gap at all.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

DRAWS = 10_000


def resample_indices(shape: tuple[int, ...], draws: int, seed: int = 0) -> Iterator[tuple[np.ndarray, ...]]:
    """For each of ``draws`` bootstrap draws, an index array per axis of ``shape`` (seeds, then prompts), each drawn
    with replacement from ``numpy.random.default_rng(seed)``, axis after axis."""
    rng = np.random.default_rng(seed)
    for _ in range(draws):
        yield tuple(rng.integers(n, size=n) for n in shape)


def bootstrap_means(table: dict[str, np.ndarray], draws: int = DRAWS, seed: int = 0) -> dict[str, np.ndarray]:
    """Per key, the mean of ``table[key]`` (a (seeds, prompts) or (prompts,) array) in each of ``draws`` resamples;
    every key gets the same resamples (paired)."""
    shape = next(iter(table.values())).shape
    out = {key: np.empty(draws) for key in table}
    for d, index in enumerate(resample_indices(shape, draws, seed)):
        cells = np.ix_(*index)
        for key, values in table.items():
            out[key][d] = values[cells].mean()
    return out


def interval(samples: np.ndarray, level: float = 0.95) -> list[float] | None:
    """The ``level`` percentile interval of ``samples``; None where more than (1 - level) / 2 of them are NaN (the
    statistic is undefined there, so the interval is unbounded)."""
    tail = (1 - level) / 2
    finite = samples[np.isfinite(samples)]
    if finite.size == 0 or np.isnan(samples).mean() > tail:
        return None
    low, high = np.percentile(finite, [100 * tail, 100 * (1 - tail)])
    return [float(low), float(high)]


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, NaN where the denominator is not positive."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)


def compare_arms(
    scores: dict[str, np.ndarray],
    tokens: dict[str, np.ndarray] | None = None,
    reference: str = "bc",
    ceiling: str = "oracle",
    draws: int = DRAWS,
    seed: int = 0,
) -> dict:
    """Each arm's mean, its difference from ``reference`` and its ``gap_closed`` (``(arm - reference) / (ceiling -
    reference)``), each with its paired 95% bootstrap interval.

    Args:
        scores: per arm, per-prompt values, (prompts,) or (seeds, prompts), the same prompts in the same order for
            every arm (a success, or a sum over a prompt's tokens when ``tokens`` is given).
        tokens: per arm, the count each value of ``scores`` sums over: the statistic is then a per-token mean, sum of
            values / sum of counts (a demonstration's NLL per token).

    Returns:
        ``{"value": {arm: mean}, "ci95": {arm: [low, high]}, "minus_<reference>": {arm: {"value", "ci95"}},
        "gap_closed": {arm: {"value", "ci95"}}}``: the differences for every arm but the reference, ``gap_closed``
        for every arm but both; a value None where it is undefined, an interval None where it is unbounded.
    """
    arms = list(scores)
    tables = {arm: np.asarray(scores[arm], dtype=float) for arm in arms}
    if tokens is None:
        point = {arm: float(tables[arm].mean()) for arm in arms}
        boot = bootstrap_means(tables, draws, seed)
    else:
        counts = {f"{arm}\0tokens": np.asarray(tokens[arm], dtype=float) for arm in arms}
        point = {arm: float(tables[arm].sum() / counts[f"{arm}\0tokens"].sum()) for arm in arms}
        means = bootstrap_means({**tables, **counts}, draws, seed)
        boot = {arm: ratio(means[arm], means[f"{arm}\0tokens"]) for arm in arms}
    out = {"value": point, "ci95": {arm: interval(boot[arm]) for arm in arms}}
    if reference in arms:
        out[f"minus_{reference}"] = {
            arm: {"value": point[arm] - point[reference], "ci95": interval(boot[arm] - boot[reference])}
            for arm in arms
            if arm != reference
        }
    if {reference, ceiling} <= set(arms):
        gap = point[ceiling] - point[reference]
        boot_gap = boot[ceiling] - boot[reference]
        out["gap_closed"] = {
            arm: {
                "value": (point[arm] - point[reference]) / gap if gap > 0 else None,
                "ci95": interval(ratio(boot[arm] - boot[reference], boot_gap)),
            }
            for arm in arms
            if arm not in (reference, ceiling)
        }
    return out


# Student's t: the 97.5th percentile for 1..30 degrees of freedom (beyond, a Cornish-Fisher expansion)
T_975 = [
    12.7062,
    4.3027,
    3.1824,
    2.7764,
    2.5706,
    2.4469,
    2.3646,
    2.3060,
    2.2622,
    2.2281,
    2.2010,
    2.1788,
    2.1604,
    2.1448,
    2.1314,
    2.1199,
    2.1098,
    2.1009,
    2.0930,
    2.0860,
    2.0796,
    2.0739,
    2.0687,
    2.0639,
    2.0595,
    2.0555,
    2.0518,
    2.0484,
    2.0452,
    2.0423,
]


def t_975(df: int) -> float:
    """The 97.5th percentile of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"t needs at least one degree of freedom, got {df}")
    if df <= len(T_975):
        return T_975[df - 1]
    z = 1.959963984540054
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def over_seeds(values: list[float]) -> dict:
    """Mean, standard deviation (n - 1) and the 95% t interval of the mean of ``values`` (one per seed); the spread
    and the interval are None for a single value."""
    values = [float(v) for v in values]
    n, mean = len(values), float(np.mean(values))
    if n < 2:
        return {"n": n, "mean": mean, "std": None, "ci95": None}
    std = float(np.std(values, ddof=1))
    half = t_975(n - 1) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci95": [mean - half, mean + half]}
