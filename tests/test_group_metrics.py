"""Per-group classification metrics and their equity-scaled figures against hand computations."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxsynth.metrics import classification as cls


def _onehot_probs(preds, k):
  """Confident probabilities whose argmax is `preds`."""
  p = np.full((len(preds), k), 0.1 / (k - 1))
  p[np.arange(len(preds)), preds] = 0.9
  return p


def _three_groups():
  """3 classes, 3 groups of 4 samples with 4, 3 and 2 correct predictions."""
  labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
  preds = np.array([0, 1, 2, 0, 1, 2, 0, 0, 0, 1, 1, 2])
  groups = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
  return labels, _onehot_probs(preds, 3), groups


def test_accuracy_and_es_accuracy_by_hand():
  labels, probs, groups = _three_groups()
  out = cls.group_metrics(labels, probs, groups, 3)
  assert list(out["per_group"]) == ["0", "1", "2"]
  assert [r["n"] for r in out["per_group"].values()] == [4, 4, 4]
  assert [r["accuracy"] for r in out["per_group"].values()] == [1.0, 0.75, 0.5]
  overall = 9 / 12
  es = overall / (1 + abs(1.0 - overall) + abs(0.75 - overall) + abs(0.5 - overall))
  assert out["es_accuracy"] == pytest.approx(es)  # 0.75 / 1.5 = 0.5
  assert out["es_accuracy"] == pytest.approx(0.5)
  assert "sensitivity" not in out["per_group"]["0"] and "es_sensitivity" not in out


def test_group_names_and_only_present_groups():
  labels, probs, groups = _three_groups()
  groups = np.where(groups == 1, 3, groups)[:, None]  # ids 0, 2, 3 as an (N, 1) column
  out = cls.group_metrics(labels, probs, groups, 3, group_names=("a", "b", "c", "d"))
  assert list(out["per_group"]) == ["a", "c", "d"]
  assert out["per_group"]["d"]["accuracy"] == 0.75


def _binary_case():
  """2 groups; group 0: TP=2 FN=1 TN=2 FP=1, group 1: TP=1 FN=1 TN=3 FP=0."""
  labels = np.array([1, 1, 1, 0, 0, 0, 1, 1, 0, 0, 0])
  score = np.array([.9, .8, .2, .1, .3, .7, .6, .4, .2, .1, .3])
  groups = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
  return labels, np.stack([1 - score, score], axis=1), groups


def test_binary_sensitivity_specificity_and_es():
  labels, probs, groups = _binary_case()
  out = cls.group_metrics(labels, probs, groups, 2)
  g0, g1 = out["per_group"]["0"], out["per_group"]["1"]
  assert (g0["sensitivity"], g0["specificity"]) == pytest.approx((2 / 3, 2 / 3))
  assert (g1["sensitivity"], g1["specificity"]) == pytest.approx((1 / 2, 1.0))
  preds = cls.predict(probs)
  for g, row in ((0, g0), (1, g1)):
    m = groups == g
    assert row["sensitivity"] == cls.sensitivity(labels[m], preds[m])
    assert row["specificity"] == cls.specificity(labels[m], preds[m])
    assert row["auc"] == cls.auc(labels[m], probs[m])
  sens, spec = 3 / 5, 5 / 6  # overall TP=3 FN=2, TN=5 FP=1
  assert out["es_sensitivity"] == pytest.approx(sens / (1 + abs(2 / 3 - sens) + abs(.5 - sens)))
  assert out["es_specificity"] == pytest.approx(spec / (1 + abs(2 / 3 - spec) + abs(1 - spec)))
  acc = 8 / 11
  assert out["es_accuracy"] == pytest.approx(acc / (1 + abs(4 / 6 - acc) + abs(4 / 5 - acc)))
  a = cls.auc(labels, probs)
  assert out["es_auc"] == pytest.approx(a / (1 + abs(g0["auc"] - a) + abs(g1["auc"] - a)))


def test_single_class_group_gives_none_and_es_over_the_rest():
  labels, probs, groups = _binary_case()
  labels = np.r_[labels, 1, 1]
  probs = np.r_[probs, [[.2, .8], [.7, .3]]]
  groups = np.r_[groups, 2, 2]  # group 2 holds positives only
  out = cls.group_metrics(labels, probs, groups, 2)
  g2 = out["per_group"]["2"]
  assert g2["auc"] is None and g2["specificity"] is None and g2["sensitivity"] == 0.5
  a = cls.auc(labels, probs)
  aucs = [out["per_group"][k]["auc"] for k in ("0", "1")]
  assert out["es_auc"] == pytest.approx(a / (1 + sum(abs(x - a) for x in aucs)))


def test_threshold_changes_group_accuracy():
  labels, probs, groups = _binary_case()
  base = cls.group_metrics(labels, probs, groups, 2)
  tuned = cls.group_metrics(labels, probs, groups, 2, threshold=0.35)
  # Group 1's positive at p=0.4 becomes a true positive; group 0 has no score in [0.35, 0.5).
  assert base["per_group"]["1"]["accuracy"] == pytest.approx(4 / 5)
  assert tuned["per_group"]["1"]["accuracy"] == pytest.approx(1.0)
  assert tuned["per_group"]["0"]["accuracy"] == base["per_group"]["0"]["accuracy"]


def test_es_equals_overall_when_groups_agree():
  labels = np.array([0, 1, 0, 1, 0, 1, 0, 1])
  preds = np.array([0, 1, 1, 1, 0, 1, 1, 1])  # each group: 1 of 2 negatives wrong
  groups = np.array([0, 0, 0, 0, 1, 1, 1, 1])
  out = cls.group_metrics(labels, _onehot_probs(preds, 2), groups, 2)
  assert out["es_accuracy"] == pytest.approx(0.75)
  assert out["es_sensitivity"] == pytest.approx(1.0)
  assert out["es_specificity"] == pytest.approx(0.5)


@pytest.mark.parametrize("groups, match", [
    (np.array([0, 1, 0]), "differ in length"),
    (np.array([0., 1., 0., 1.]), "integer group ids"),
    (np.zeros((4, 2), dtype=int), "shape"),
    (np.array([0, -1, 0, 1]), ">= 0"),
])
def test_bad_groups_raise(groups, match):
  labels = np.array([0, 1, 0, 1])
  with pytest.raises(ValueError, match=match):
    cls.group_metrics(labels, _onehot_probs(labels, 2), groups, 2)


def test_too_few_group_names_raise():
  labels = np.array([0, 1, 0, 1])
  with pytest.raises(ValueError, match="group_names"):
    cls.group_metrics(labels, _onehot_probs(labels, 2), [0, 0, 1, 1], 2, group_names=("a",))


def test_json_round_trip():
  labels, probs, groups = _binary_case()
  out = cls.group_metrics(np.r_[labels, 1], np.r_[probs, [[.5, .5]]], np.r_[groups, 7], 2)
  assert json.loads(json.dumps(out, allow_nan=False)) == out
  assert out["per_group"]["7"]["auc"] is None
  assert type(out["per_group"]["7"]["n"]) is int


def test_classifier_metrics_json_gains_group_figures(tmp_path):
  """A train_classifier run on data with {split}_groups reports per-group and ES figures."""
  from jaxsynth.recipes import classifier as classifier_lib  # pylint: disable=import-outside-toplevel
  from tests.helpers import tiny_config  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  arrays = {}
  for split, n in (("train", 48), ("val", 16), ("test", 20)):
    labels = np.arange(n) % 2
    images = rng.integers(0, 60, (n, 8, 8, 1)).astype(np.uint8)
    images[labels == 1] += 120  # a learnable difference
    arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    arrays[f"{split}_groups"] = (np.arange(n) // 2) % 3
  path = str(tmp_path / "grouped.npz")
  np.savez(path, **arrays)
  config = tiny_config(steps=4)
  config.data.source, config.data.path = "npz", path
  config.data.imbalance_ratio = 0.0
  results = classifier_lib.train_single(config, str(tmp_path / "run"))
  stored = json.load(open(tmp_path / "run" / "metrics.json"))
  assert stored["test"]["groups"] == results["test"]["groups"]
  predictions = np.load(tmp_path / "run" / "predictions.npz")
  labels, probs = predictions["test_labels"], predictions["test_probs"]
  np.testing.assert_array_equal(labels, arrays["test_labels"])
  expected = cls.group_metrics(labels, probs, arrays["test_groups"], 2)
  assert stored["test"]["groups"]["es_accuracy"] == pytest.approx(expected["es_accuracy"])
  assert sorted(stored["test"]["groups"]["per_group"]) == ["0", "1", "2"]
  assert sum(g["n"] for g in stored["test"]["groups"]["per_group"].values()) == 20
