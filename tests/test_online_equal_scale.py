"""IOIS budgets (eq. 5) and pools, and FairDiff equal-scale group balancing."""

import numpy as np
import pytest

from jaxsynth.errors import ConfigError, DataError
from jaxsynth.recipes import equal_scale, online


def test_aas_budgets_sum_to_k_and_favour_low_accuracy_classes():
  acc = np.array([0.95, 0.40, 0.70, 0.10])
  k = online.aas_budgets(acc, 101)
  assert k.sum() == 101 and k.dtype.kind == "i"
  assert list(np.argsort(-k)) == [3, 1, 2, 0]  # lower accuracy, larger budget
  softmax = np.exp(1 - acc) / np.exp(1 - acc).sum()
  assert np.all(np.abs(k - softmax * 101) < 1)  # eq. 5 up to integer rounding
  assert online.aas_budgets(acc, 100, adaptive=False).tolist() == [25, 25, 25, 25]


def test_budget_below_the_class_count_is_refused():
  with pytest.raises(ConfigError, match="'recipe.budget'.*less than the 4 classes"):
    online.aas_budgets([0.1, 0.2, 0.3, 0.4], 3)


def test_budgets_come_from_training_predictions_only():
  """Two different val/test label sets cannot change the budgets: they are not an input."""
  train_labels = np.array([0, 0, 1, 1, 2, 2])
  probs = np.eye(3)[[0, 0, 1, 0, 0, 0]]  # class 0 right, class 1 half, class 2 wrong
  k, acc = online.budgets_from_training(train_labels, probs, 3, 30)
  assert acc.tolist() == [1.0, 0.5, 0.0]
  assert k.sum() == 30 and k[2] > k[1] > k[0]
  flipped = np.eye(3)[[2, 2, 1, 1, 2, 2]]  # what a test split's labels would have given
  assert not np.array_equal(online.budgets_from_training(train_labels, flipped, 3, 30)[0], k)


def test_replace_and_accumulate_pool_sizes():
  budgets = [[3, 2], [1, 4], [5, 0]]
  assert online.pool_sizes(budgets, "replace") == [5, 5, 5]
  assert online.pool_sizes(budgets, "accumulate") == [5, 10, 15]
  assert online.pool(["a", "b", "c"], "replace") == ["c"]
  assert online.pool(["a", "b", "c"], "accumulate") == ["a", "b", "c"]
  with pytest.raises(ConfigError, match="recipe.pool"):
    online.pool_sizes(budgets, "merge")


def test_equal_scale_gives_equal_groups_and_subsamples_deterministically():
  rng = np.random.default_rng(0)
  groups = np.repeat([0, 1, 2], [50, 20, 7])
  labels = rng.integers(0, 3, groups.size)
  plan = equal_scale.equal_scale_plan(labels, groups, 3, seed=4, target=30)
  kept = np.bincount(groups[plan["keep"]], minlength=3)
  totals = kept + plan["synthetic"].sum(axis=1)
  assert totals.tolist() == [30, 30, 30]
  assert kept.tolist() == [30, 20, 7] and plan["synthetic"][0].sum() == 0
  again = equal_scale.equal_scale_plan(labels, groups, 3, seed=4, target=30)
  assert np.array_equal(again["keep"], plan["keep"])
  other = equal_scale.equal_scale_plan(labels, groups, 3, seed=5, target=30)
  assert not np.array_equal(other["keep"], plan["keep"])
  # synthetic samples follow the group's own class counts
  g2 = np.bincount(labels[groups == 2], minlength=3)
  assert np.all(np.abs(plan["synthetic"][2] - 23 * g2 / g2.sum()) < 1)
  default = equal_scale.equal_scale_plan(labels, groups, 3, seed=4)
  assert default["target"] == 50 and default["keep"].size == groups.size


def test_equal_scale_on_data_without_groups_is_refused():
  class NoGroups:
    groups, name = None, "data.npz"

    def __len__(self):
      return 3

  with pytest.raises(DataError, match="equal_scale needs groups.*data.npz"):
    equal_scale.group_ids(NoGroups())
