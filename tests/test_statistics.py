"""The intervals every result is read with: the bootstrap against a hand-computed one and against enumeration, gap
closed's unbounded interval, per-token means, and Student's t against scipy."""

import itertools
import math

import numpy as np
import pytest

from trl_irl.statistics import bootstrap_means, compare_arms, interval, over_seeds, t_975


def test_the_bootstrap_is_the_hand_computed_one_on_a_fixed_seed():
    """Three draws worked by hand: the same generator, the prompts drawn with replacement, the same draw for each
    arm."""
    bc, irl = np.array([0.0, 1.0, 1.0, 0.0]), np.array([1.0, 1.0, 0.0, 1.0])
    rng = np.random.default_rng(7)
    draws = [rng.integers(4, size=4) for _ in range(3)]  # e.g. [1 0 3 3]: prompts 1, 0, 3 and 3
    expected_bc = [sum(bc[i] for i in d) / 4 for d in draws]
    expected_irl = [sum(irl[i] for i in d) / 4 for d in draws]
    got = bootstrap_means({"bc": bc, "irl": irl}, draws=3, seed=7)
    assert got["bc"].tolist() == expected_bc and got["irl"].tolist() == expected_irl


def test_seeds_then_prompts_are_resampled():
    table = np.arange(6, dtype=float).reshape(2, 3)  # 2 seeds x 3 prompts
    rng = np.random.default_rng(1)
    rows, cols = rng.integers(2, size=2), rng.integers(3, size=3)
    assert bootstrap_means({"a": table}, draws=1, seed=1)["a"][0] == pytest.approx(table[np.ix_(rows, cols)].mean())


def test_the_bootstrap_converges_to_the_enumerated_distribution():
    """Three prompts: the 27 equally likely resamples give the exact distribution of the resampled mean."""
    values = np.array([0.0, 1.0, 3.0])
    means = np.array([values[list(idx)].mean() for idx in itertools.product(range(3), repeat=3)])
    support, counts = np.unique(means, return_counts=True)
    cdf = np.cumsum(counts) / 27
    exact = [support[np.argmax(cdf >= 0.025)], support[np.argmax(cdf >= 0.975)]]  # 0 and 3: each has 1/27 > 2.5%
    draws = bootstrap_means({"x": values}, draws=40_000, seed=0)["x"]
    assert interval(draws) == exact == [0.0, 3.0]
    assert draws.mean() == pytest.approx(means.mean(), abs=0.02) and draws.var() == pytest.approx(means.var(), rel=0.03)


def test_differences_are_paired():
    """An arm that is BC plus one success on the same prompts differs by exactly 1/n in every draw."""
    bc = np.array([0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    irl = bc.copy()
    irl[0] = 1.0
    result = compare_arms({"bc": bc, "irl": irl}, draws=500)
    assert result["minus_bc"]["irl"]["value"] == pytest.approx(1 / 8)
    low, high = result["minus_bc"]["irl"]["ci95"]
    assert 0.0 == low < high  # never below 0: the prompts drawn are the same for both arms


def test_gap_closed_is_unbounded_where_the_oracle_may_not_beat_bc():
    """One success in 30 between BC and the oracle: the gap is 1.0 but its interval spans everything."""
    bc = np.zeros(30)
    bc[:9] = 1
    oracle, arm = bc.copy(), bc.copy()
    oracle[9] = arm[9] = 1
    result = compare_arms({"bc": bc, "grpo": arm, "oracle": oracle}, draws=2000)
    assert result["gap_closed"]["grpo"] == {"value": pytest.approx(1.0), "ci95": None}
    far = np.zeros(30)
    far[:25] = 1  # an oracle far above BC: the interval is bounded, and holds the point value
    half = bc.copy()
    half[9:17] = 1
    gap = compare_arms({"bc": bc, "grpo": half, "oracle": far}, draws=2000)["gap_closed"]["grpo"]
    assert gap["value"] == pytest.approx(0.5) and gap["ci95"][0] < 0.5 < gap["ci95"][1]
    assert compare_arms({"bc": far, "grpo": half, "oracle": bc})["gap_closed"]["grpo"]["value"] is None  # no gap


def test_a_per_token_mean_is_a_ratio_of_sums():
    nll, tokens = (
        {"bc": np.array([2.0, 9.0]), "irl": np.array([1.0, 3.0])},
        {"bc": np.array([1, 3]), "irl": np.array([1, 3])},
    )
    result = compare_arms(nll, tokens, draws=200)
    assert result["value"] == {"bc": pytest.approx(11 / 4), "irl": pytest.approx(1.0)}
    assert result["minus_bc"]["irl"]["value"] == pytest.approx(1.0 - 11 / 4)


def test_degenerate_inputs():
    assert compare_arms({"bc": np.ones(5), "oracle": np.ones(5)}, draws=50)["ci95"] == {
        "bc": [1.0, 1.0],
        "oracle": [1.0, 1.0],
    }
    one = compare_arms({"bc": np.array([1.0]), "x": np.array([0.0])}, draws=20)  # a single prompt
    assert one["minus_bc"]["x"] == {"value": -1.0, "ci95": [-1.0, -1.0]}
    assert interval(np.array([np.nan] * 10)) is None


def test_students_t_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 5, 29, 30, 31, 50, 200):
        assert t_975(df) == pytest.approx(stats.t.ppf(0.975, df), rel=2e-4), df


def test_over_seeds_against_a_hand_worked_example():
    result = over_seeds([0.5, 0.6, 0.7])
    assert result["mean"] == pytest.approx(0.6) and result["std"] == pytest.approx(0.1)
    half = 4.3027 * 0.1 / math.sqrt(3)
    assert result["ci95"] == [pytest.approx(0.6 - half), pytest.approx(0.6 + half)]
    assert over_seeds([0.4]) == {"n": 1, "mean": 0.4, "std": None, "ci95": None}
    assert over_seeds([0.3, 0.3])["ci95"] == [pytest.approx(0.3), pytest.approx(0.3)]  # a tie: no spread
