"""Tests of the class-count tools: long-tail profiles and subsets, holdouts, reports."""

from __future__ import annotations

import numpy as np
import pytest

from jaxsynth.data import imbalance
from jaxsynth.errors import DataError


def test_imbalance_ratio():
  assert imbalance.imbalance_ratio([10, 40, 20]) == 4.0
  assert imbalance.imbalance_ratio([10, 0]) == float("inf")


def test_long_tail_counts_follow_the_exponential_profile():
  counts = imbalance.long_tail_counts([100] * 5, 10.0)
  expected = np.floor(100 * 10.0 ** -(np.arange(5) / 4) + 1e-6)
  np.testing.assert_array_equal(counts, expected)
  assert counts[0] == 100 and counts[-1] == 10
  assert imbalance.imbalance_ratio(counts) == 10.0
  assert np.all(np.diff(counts) <= 0)


@pytest.mark.parametrize("ratio", [2.0, 10.0, 50.0, 100.0])
def test_long_tail_counts_hit_the_ratio_exactly(ratio):
  counts = imbalance.long_tail_counts([500] * 10, ratio)
  assert imbalance.imbalance_ratio(counts) == pytest.approx(ratio, rel=1e-9)


def test_long_tail_counts_cap_at_what_a_class_has():
  counts = imbalance.long_tail_counts([50, 100, 100], 4.0)
  np.testing.assert_array_equal(counts, [50, 50, 25])
  np.testing.assert_array_equal(imbalance.long_tail_counts([7], 10.0), [7])


def test_long_tail_indices_give_exact_counts_and_depend_on_seed():
  labels = np.repeat(np.arange(4), 30)
  np.random.default_rng(0).shuffle(labels)
  targets = [30, 12, 5, 1]
  picked = imbalance.long_tail_indices(labels, targets, seed=1)
  np.testing.assert_array_equal(np.bincount(labels[picked], minlength=4), targets)
  assert len(np.unique(picked)) == picked.size and np.all(np.diff(picked) > 0)
  np.testing.assert_array_equal(picked, imbalance.long_tail_indices(labels, targets, seed=1))
  assert not np.array_equal(picked, imbalance.long_tail_indices(labels, targets, seed=2))


def test_long_tail_indices_reject_too_many():
  with pytest.raises(DataError, match="class 1 has 2 samples but 3"):
    imbalance.long_tail_indices([0, 0, 1, 1], [1, 3], seed=0)


def test_stratified_holdout_is_disjoint_stratified_and_deterministic():
  labels = np.concatenate([np.full(100, 0), np.full(40, 1), np.full(3, 2)])
  rest, val, test = imbalance.stratified_holdout(labels, [0.1, 0.2], seed=0)
  together = np.concatenate([rest, val, test])
  np.testing.assert_array_equal(np.sort(together), np.arange(labels.size))
  np.testing.assert_array_equal(np.bincount(labels[val]), [10, 4, 1])
  np.testing.assert_array_equal(np.bincount(labels[test]), [20, 8, 1])
  np.testing.assert_array_equal(np.bincount(labels[rest]), [70, 28, 1])
  again = imbalance.stratified_holdout(labels, [0.1, 0.2], seed=0)
  for a, b in zip((rest, val, test), again):
    np.testing.assert_array_equal(a, b)


def test_stratified_holdout_keeps_one_sample_in_the_rest():
  labels = np.asarray([0, 1, 1, 2, 2, 2])
  rest, held = imbalance.stratified_holdout(labels, [0.9], seed=0)
  np.testing.assert_array_equal(np.bincount(labels[rest]), [1, 1, 1])
  np.testing.assert_array_equal(np.bincount(labels[held], minlength=3), [0, 1, 2])


def test_class_count_report():
  report = imbalance.class_count_report([0, 0, 0, 1], 3, ("normal", "pneumonia", "other"))
  assert "normal" in report and "pneumonia" in report
  assert "0.750" in report and "0.250" in report
  assert "total 4 samples in 3 classes" in report and "max/min ratio inf" in report
  assert "max/min ratio 3" in imbalance.class_count_report([0, 0, 0, 1], 2)
