"""Classification metrics against scikit-learn on random and edge cases."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from jaxsynth.metrics import classification as cls

SEEDS = (0, 1, 2, 3)
BASE_KEYS = {"accuracy", "balanced_accuracy", "macro_f1", "mcc", "auc", "per_class_accuracy",
             "confusion_matrix", "num_samples"}
BINARY_KEYS = {"sensitivity", "specificity", "harmonic_mean"}


def _random_case(seed: int, k: int, n: int = 200):
  """Imbalanced labels and noisy, tie-rich probabilities correlated with them."""
  rng = np.random.default_rng(seed)
  weights = rng.dirichlet(np.ones(k)) + 0.05
  labels = rng.choice(k, size=n, p=weights / weights.sum())
  logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[labels]
  probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
  probs = np.round(probs, 2)  # coarse values -> many ties, exercising tie handling
  probs /= probs.sum(axis=1, keepdims=True)
  return labels, probs


def _sk_auc(labels, probs, positive_class=1):
  """scikit-learn's ROC AUC under the module's conventions (macro OvR over present classes)."""
  k = probs.shape[1]
  if k == 2:
    return skm.roc_auc_score(labels == positive_class, probs[:, positive_class])
  present = np.unique(labels)
  if present.size == k:
    return skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro")
  return np.mean([skm.roc_auc_score(labels == c, probs[:, c]) for c in present])


def _check_against_sklearn(labels, preds, k):
  """Every label-based metric equals its scikit-learn counterpart."""
  lab = list(range(k))
  np.testing.assert_array_equal(cls.confusion_matrix(labels, preds, k),
                                skm.confusion_matrix(labels, preds, labels=lab))
  np.testing.assert_allclose(cls.per_class_accuracy(labels, preds, k),
                             skm.recall_score(labels, preds, labels=lab, average=None,
                                              zero_division=0))
  assert cls.accuracy(labels, preds) == pytest.approx(skm.accuracy_score(labels, preds))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # sklearn warns about classes absent from labels
    expected_bacc = skm.balanced_accuracy_score(labels, preds)
  assert cls.balanced_accuracy(labels, preds, k) == pytest.approx(expected_bacc)
  assert cls.macro_f1(labels, preds, k) == pytest.approx(
      skm.f1_score(labels, preds, labels=lab, average="macro", zero_division=0))
  assert cls.mcc(labels, preds, k) == pytest.approx(skm.matthews_corrcoef(labels, preds),
                                                    abs=1e-12)
  if k == 2:
    for pc in (0, 1):
      assert cls.sensitivity(labels, preds, pc) == pytest.approx(
          skm.recall_score(labels, preds, pos_label=pc, zero_division=0))
      assert cls.specificity(labels, preds, pc) == pytest.approx(
          skm.recall_score(labels, preds, pos_label=1 - pc, zero_division=0))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", [2, 5])
def test_random_cases_match_sklearn(seed, k):
  labels, probs = _random_case(seed, k)
  preds = probs.argmax(axis=1)
  _check_against_sklearn(labels, preds, k)
  for pc in ((0, 1) if k == 2 else (1,)):
    assert cls.auc(labels, probs, pc) == pytest.approx(_sk_auc(labels, probs, pc), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_threshold_predictions_match_sklearn(seed):
  labels, probs = _random_case(seed, 2)
  for pc in (0, 1):
    for t in (0.2, 0.5, 0.8):
      preds = cls.predict(probs, positive_class=pc, threshold=t)
      expected = np.where(probs[:, pc] >= t, pc, 1 - pc)
      np.testing.assert_array_equal(preds, expected)
      m = cls.classification_metrics(labels, probs, 2, positive_class=pc, threshold=t)
      assert m["sensitivity"] == pytest.approx(
          skm.recall_score(labels, expected, pos_label=pc, zero_division=0))
      assert m["specificity"] == pytest.approx(
          skm.recall_score(labels, expected, pos_label=1 - pc, zero_division=0))


def test_auc_ties_like_sklearn():
  labels = np.array([0, 0, 1, 1, 0, 1, 1, 0])
  p1 = np.array([0.5, 0.5, 0.5, 0.9, 0.1, 0.5, 0.1, 0.9])
  probs = np.stack([1 - p1, p1], axis=1)
  assert cls.auc(labels, probs) == pytest.approx(skm.roc_auc_score(labels, p1))
  # All scores equal: every pair is a tie, AUC = 0.5.
  assert cls.auc(labels, np.full((8, 2), 0.5)) == pytest.approx(0.5)


@pytest.mark.parametrize("k", [2, 5])
def test_class_absent_from_predictions(k):
  labels, probs = _random_case(7, k)
  preds = probs.argmax(axis=1)
  preds[preds == k - 1] = 0  # class k-1 is never predicted
  _check_against_sklearn(labels, preds, k)
  assert cls.per_class_accuracy(labels, preds, k)[k - 1] == 0.0


def test_class_absent_from_labels():
  rng = np.random.default_rng(3)
  k = 5
  labels = rng.choice([0, 1, 3, 4], size=100)  # class 2 absent
  probs = rng.dirichlet(np.ones(k), size=100)
  preds = probs.argmax(axis=1)  # class 2 is predicted sometimes
  assert np.any(preds == 2)
  _check_against_sklearn(labels, preds, k)
  assert cls.per_class_accuracy(labels, preds, k)[2] == 0.0
  assert cls.auc(labels, probs) == pytest.approx(_sk_auc(labels, probs), abs=1e-12)
  m = cls.classification_metrics(labels, probs, k)
  assert m["per_class_accuracy"][2] == 0.0
  assert not any(math.isnan(v) for v in m["per_class_accuracy"])


@pytest.mark.parametrize("k", [2, 5])
def test_perfect_classifier(k):
  labels = np.tile(np.arange(k), 10)
  probs = np.eye(k)[labels] * 0.9 + 0.1 / k
  m = cls.classification_metrics(labels, probs, k)
  for key in ("accuracy", "balanced_accuracy", "macro_f1", "mcc", "auc"):
    assert m[key] == pytest.approx(1.0), key
  assert m["per_class_accuracy"] == [1.0] * k
  assert m["confusion_matrix"] == (np.eye(k, dtype=int) * 10).tolist()
  if k == 2:
    assert m["sensitivity"] == m["specificity"] == m["harmonic_mean"] == 1.0
  _check_against_sklearn(labels, probs.argmax(1), k)


def test_inverted_binary_classifier():
  labels = np.array([0, 1] * 20)
  probs = np.eye(2)[1 - labels]
  m = cls.classification_metrics(labels, probs, 2)
  assert m["accuracy"] == 0.0 and m["balanced_accuracy"] == 0.0 and m["macro_f1"] == 0.0
  assert m["mcc"] == pytest.approx(-1.0)
  assert m["auc"] == pytest.approx(0.0)
  assert m["sensitivity"] == m["specificity"] == m["harmonic_mean"] == 0.0
  _check_against_sklearn(labels, 1 - labels, 2)


@pytest.mark.parametrize("k", [2, 5])
def test_constant_predictions(k):
  labels, probs = _random_case(11, k)
  preds = np.full_like(labels, 1)
  _check_against_sklearn(labels, preds, k)
  assert cls.mcc(labels, preds, k) == 0.0  # degenerate: sklearn returns 0
  const = np.zeros((labels.size, k))
  const[:, 1] = 1.0
  m = cls.classification_metrics(labels, const, k)
  assert m["mcc"] == 0.0
  assert m["auc"] == pytest.approx(0.5)  # constant scores: all pairs tied
  assert m["balanced_accuracy"] == pytest.approx(1.0 / k)


def test_auc_undefined_with_one_class():
  labels = np.zeros(10, dtype=int)
  probs = np.random.default_rng(0).dirichlet(np.ones(3), size=10)
  assert math.isnan(cls.auc(labels, probs))
  assert math.isnan(cls.auc(labels, probs[:, :2] / probs[:, :2].sum(1, keepdims=True)))
  m = cls.classification_metrics(labels, probs, 3)
  assert m["auc"] is None
  json.dumps(m, allow_nan=False)


@pytest.mark.parametrize("k", [2, 5])
def test_metrics_dict_keys_and_json(k):
  labels, probs = _random_case(5, k)
  m = cls.classification_metrics(labels, probs, k)
  assert set(m) == (BASE_KEYS | BINARY_KEYS if k == 2 else BASE_KEYS)
  back = json.loads(json.dumps(m, allow_nan=False))
  assert back == m
  for key in ("accuracy", "balanced_accuracy", "macro_f1", "auc") + (
      tuple(BINARY_KEYS) if k == 2 else ()):
    assert type(m[key]) is float and 0.0 <= m[key] <= 1.0, key
  assert type(m["mcc"]) is float and -1.0 <= m["mcc"] <= 1.0
  assert type(m["num_samples"]) is int and m["num_samples"] == labels.size
  assert len(m["per_class_accuracy"]) == k
  assert all(type(v) is float and 0.0 <= v <= 1.0 for v in m["per_class_accuracy"])
  assert all(type(c) is int for row in m["confusion_matrix"] for c in row)
  assert sum(map(sum, m["confusion_matrix"])) == labels.size
  assert m["accuracy"] == pytest.approx(skm.accuracy_score(labels, probs.argmax(1)))
  assert m["auc"] == pytest.approx(_sk_auc(labels, probs), abs=1e-12)


def test_column_labels_accepted():
  labels, probs = _random_case(2, 2)
  a = cls.classification_metrics(labels[:, None], probs, 2)
  b = cls.classification_metrics(labels, probs, 2)
  assert a == b


@pytest.mark.parametrize("labels, probs, k, match", [
    (np.array([0, 1, 2]), np.full((3, 2), 0.5), 2, r"labels must lie in \[0, 2\)"),
    (np.array([0, -1]), np.full((2, 2), 0.5), 2, r"labels must lie"),
    (np.array([0, 1]), np.full((3, 2), 0.5), 2, r"shape \(N, num_classes\)"),
    (np.array([0, 1]), np.full((2, 3), 0.5), 2, r"shape \(N, num_classes\)"),
    (np.array([0, 1]), np.array([[0.5, np.nan], [0.5, 0.5]]), 2, r"finite"),
    (np.array([0, 1]), np.array([[0.5, np.inf], [0.5, 0.5]]), 2, r"finite"),
    (np.array([0.5, 1.0]), np.full((2, 2), 0.5), 2, r"integer class ids"),
    (np.zeros((2, 2), dtype=int), np.full((2, 2), 0.5), 2, r"vector of class ids"),
    (np.array([], dtype=int), np.zeros((0, 2)), 2, r"empty"),
    (np.array([0, 0]), np.full((2, 1), 1.0), 1, r"num_classes must be an integer >= 2"),
])
def test_invalid_inputs(labels, probs, k, match):
  with pytest.raises(ValueError, match=match):
    cls.classification_metrics(labels, probs, k)


def test_invalid_threshold_and_positive_class():
  labels, probs = _random_case(0, 5)
  with pytest.raises(ValueError, match="two classes only"):
    cls.classification_metrics(labels, probs, 5, threshold=0.5)
  labels, probs = _random_case(0, 2)
  with pytest.raises(ValueError, match="positive_class"):
    cls.classification_metrics(labels, probs, 2, positive_class=2)
  with pytest.raises(ValueError, match="threshold must be finite"):
    cls.classification_metrics(labels, probs, 2, threshold=float("nan"))
  with pytest.raises(ValueError, match="differ in length"):
    cls.accuracy(labels, labels[:-1])
