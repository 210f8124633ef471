import numpy as np
import pytest

from varireal_ray.report import stats


def result(seed, correct, ids=None):
    ids = ids or [f"t{k}" for k in range(len(correct))]
    return {"seed": seed, "test_ids": ids, "test_correct_selected": list(correct)}


def test_mean_interval_covers_and_single_seed_has_none():
    iv = stats.mean_interval([0.5, 0.6, 0.7], 0.95)
    assert iv.low < 0.6 < iv.high and iv.mean == pytest.approx(0.6)
    single = stats.mean_interval([0.4], 0.95)
    assert single.low is None and single.n == 1


def test_paired_comparison_detects_a_real_difference():
    rng = np.random.default_rng(0)
    better = (rng.random(400) < 0.8).astype(int)
    worse = np.where(rng.random(400) < 0.3, 0, better)  # flips ~30% of correct answers to wrong
    c = stats.compare("color", True, [result(0, better)], [result(0, worse)], 2000, 0.95)
    assert c.diff > 0.15 and c.low > 0 and c.mcnemar_p < 1e-6
    same = stats.compare("color", True, [result(0, better)], [result(0, better)], 500, 0.95)
    assert same.diff == 0 and same.low == 0 == same.high and same.mcnemar_p == 1.0


def test_pairs_align_on_test_ids_not_positions():
    f = result(0, [1, 0, 1], ["a", "b", "c"])
    i = result(0, [1, 0, 1], ["c", "b", "a"])  # same answers, different order
    a, b = stats.paired_correctness([f], [i])
    assert a.tolist() == [[1, 0, 1]] and b.tolist() == [[1, 0, 1]]


def test_mcnemar_matches_known_value():
    # 10 discordant pairs split 9/1: two-sided exact p = 2 * P(X<=1 | n=10, 0.5) = 0.02148
    a = np.array([1] * 9 + [0] + [1] * 5)
    b = np.array([0] * 9 + [1] + [1] * 5)
    assert stats.mcnemar_exact(a, b) == pytest.approx(0.021484375)
